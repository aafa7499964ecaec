"""Graph generators and failure models: structure and doubly stochastic W."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from fedjax_ext import topology
from fedjax_ext._src import test_utils

KEY = jax.random.key(0)
RULES = topology.MIXING_RULES


NUM_DRAWS = 64


def generators(mixing):
  """Every generator (static ones in several shapes), small N."""
  t = topology
  kw = {'mixing': mixing}
  return {
      'ring': t.ring(7, **kw),
      'ring2': t.ring(2, **kw),
      'torus': t.torus(3, 4, **kw),
      'torus_thin': t.torus(2, 5, **kw),
      'complete': t.complete(6, **kw),
      'star': t.star(6, **kw),
      'exponential': t.exponential(12, **kw),
      'exponential_4hops': t.exponential(20, 4, **kw),
  }


# Random topologies, built once so their compiled draws are shared by tests.
RANDOM = {
    'erdos_renyi': topology.erdos_renyi(9, 0.3),
    'random_matching': topology.random_matching(9),
    'links': topology.with_link_failures(topology.torus(3, 3), 0.4),
    'dropout': topology.with_node_dropout(topology.exponential(16), 0.3),
    'dropout_links': topology.with_node_dropout(
        topology.with_link_failures(topology.ring(10), 0.3), 0.3),
    'uniform_erdos_renyi': topology.erdos_renyi(
        8, 0.5, mixing='uniform_degree'),
    'uniform_dropout_links': topology.with_node_dropout(
        topology.with_link_failures(topology.exponential(
            12, mixing='uniform_degree'), 0.3), 0.3),
}
_DRAWS = {}


def draws_np(top):
  """NUM_DRAWS graphs and their dense W (numpy), stacked."""
  if top.name not in _DRAWS:
    def draw(key):
      graph = top.sample(key)
      return graph, topology.dense_matrix(graph)
    if top.deterministic:  # Fixed graphs: W on the host, nothing compiled.
      graph = jax.tree.map(np.asarray, top.sample(KEY))
      _DRAWS[top.name] = jax.tree.map(lambda x: x[None],
                                      (graph, np_dense(graph)))
      return _DRAWS[top.name]
    # One compiled draw called per key: vmap or lax.map would double the
    # compile time of the threefry hashes, which dominates these tests.
    keys = jax.random.split(KEY, NUM_DRAWS)
    draw = jax.jit(draw)
    draws = [jax.tree.map(np.asarray, draw(key)) for key in keys]
    _DRAWS[top.name] = jax.tree.map(lambda *x: np.stack(x), *draws)
  return _DRAWS[top.name]


def np_dense(graph):
  n, d = graph.neighbors.shape
  w = np.diag(graph.self_weights.astype(np.float64))
  np.add.at(w, (np.repeat(np.arange(n), d), graph.neighbors.ravel()),
            graph.weights.ravel())
  return w


def sample_np(top):
  return jax.tree.map(lambda x: x[0], draws_np(top)[0])


def np_weights(num_nodes, edge_list, mixing):
  """W from an undirected edge list, straight from the definitions."""
  adj = np.zeros((num_nodes, num_nodes), bool)
  for i, j in edge_list:
    if i != j:
      adj[i, j] = adj[j, i] = True
  deg = adj.sum(1)
  if mixing == 'metropolis_hastings':
    w = adj / (1.0 + np.maximum(deg[:, None], deg[None, :]))
  else:
    w = adj / (1.0 + deg.max(initial=0))
  return w + np.diag(1.0 - w.sum(1))


def degrees(neighbors):
  return (neighbors != np.arange(neighbors.shape[-2])[:, None]).sum(-1)


class GraphTest(parameterized.TestCase):

  def check_draws(self, top, rule):
    """Every draw: doubly stochastic, symmetric, padding and activity."""
    self.assertEqual(top.mixing, rule)
    graphs, matrices = draws_np(top)
    for draw in range(min(4, len(matrices))):
      graph = jax.tree.map(lambda x, d=draw: x[d], graphs)
      w = matrices[draw]
      n, d = graph.neighbors.shape
      self.assertEqual((n, d), (top.num_nodes, top.max_degree))
      self.assertEqual(graph.neighbors.dtype, np.int32)
      self.assertEqual(graph.weights.dtype, np.float32)
      self.assertEqual(graph.active.dtype, bool)
      topology.check_doubly_stochastic(w)
      np.testing.assert_allclose(w, w.T, atol=1e-7)
      self.assertGreaterEqual(w.min(), 0.0)
      # Padding slots hold the node itself, with weight 0; edges have > 0.
      pad = graph.neighbors == np.arange(n)[:, None]
      np.testing.assert_array_equal(graph.weights[pad], 0.0)
      self.assertTrue(np.all(graph.weights[~pad] > 0))
      for i in range(n):  # No duplicate neighbours in a row.
        real = graph.neighbors[i][~pad[i]]
        self.assertLen(set(real.tolist()), len(real))
      # Inactive nodes: no edges, self weight 1, nobody mixes with them.
      off = ~graph.active
      np.testing.assert_array_equal(pad[off].all(axis=1), True)
      np.testing.assert_array_equal(graph.self_weights[off], 1.0)
      self.assertFalse(np.isin(graph.neighbors[~pad], np.flatnonzero(off))
                       .any())
      # W is the rule applied to the drawn edges.
      edges = [(i, j) for i in range(n) for j in graph.neighbors[i]]
      np.testing.assert_allclose(w, np_weights(n, edges, rule), atol=1e-6)
    # All draws: rows and columns sum to 1, symmetric.
    np.testing.assert_allclose(matrices.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(matrices.sum(-2), 1.0, atol=1e-6)
    np.testing.assert_allclose(matrices, np.swapaxes(matrices, -1, -2),
                               atol=1e-7)

  @parameterized.product(rule=RULES, name=sorted(generators(RULES[0])))
  def test_static_doubly_stochastic_and_symmetric(self, rule, name):
    self.check_draws(generators(rule)[name], rule)

  @parameterized.named_parameters(*RANDOM.items())
  def test_random_doubly_stochastic_and_symmetric(self, top):
    self.check_draws(top, top.mixing)
    graphs, matrices = draws_np(top)
    # Different keys give different graphs.
    self.assertFalse(all(np.array_equal(matrices[0], m) for m in matrices))
    del graphs

  @parameterized.parameters(*RULES)
  def test_static_shapes_and_degrees(self, rule):
    degree = lambda top: degrees(sample_np(top).neighbors)
    np.testing.assert_array_equal(degree(topology.ring(9, mixing=rule)), 2)
    np.testing.assert_array_equal(degree(topology.torus(4, 5, mixing=rule)),
                                  4)
    np.testing.assert_array_equal(
        degree(topology.complete(5, mixing=rule)), 4)
    np.testing.assert_array_equal(degree(topology.star(5, mixing=rule)),
                                  [4, 1, 1, 1, 1])
    np.testing.assert_array_equal(
        degree(topology.exponential(64, mixing=rule)), 11)  # +-1..32
    np.testing.assert_array_equal(
        degree(topology.exponential(64, 4, mixing=rule)), 8)
    self.assertEqual(topology.ring(1).max_degree, 1)  # Padded, no edges.
    self.assertTrue(topology.ring(9).deterministic)
    self.assertFalse(topology.erdos_renyi(9, 0.5).deterministic)

  def test_metropolis_hastings_values(self):
    # A star 0-1, 1-2, 1-3 around node 1: deg = (1, 3, 1, 1).
    edges = [[0, 1], [1, 2], [1, 3]]
    w = topology.dense_matrix(topology.from_edges(4, edges).sample(KEY))
    np.testing.assert_allclose(w[0], [3 / 4, 1 / 4, 0, 0], atol=1e-7)
    np.testing.assert_allclose(w[1], [1 / 4, 1 / 4, 1 / 4, 1 / 4], atol=1e-7)
    u = topology.dense_matrix(topology.from_edges(
        4, edges, mixing='uniform_degree').sample(KEY))
    np.testing.assert_allclose(u, w, atol=1e-7)  # d_max = 3 on every edge.
    # A path 0-1-2 with uniform weights: d_max = 2, W_01 = W_12 = 1/3.
    u = topology.dense_matrix(topology.from_edges(
        3, [[0, 1], [2, 1]], mixing='uniform_degree').sample(KEY))
    np.testing.assert_allclose(u, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3],
                                   [0, 1 / 3, 2 / 3]], atol=1e-7)
    np.testing.assert_allclose(
        topology.dense_matrix(topology.ring(5).sample(KEY)),
        np_weights(5, [(i, (i + 1) % 5) for i in range(5)],
                   'metropolis_hastings'), atol=1e-7)

  def test_random_matching_pairs_everyone_but_one(self):
    graphs, _ = draws_np(RANDOM['random_matching'])  # N = 9.
    partner = graphs.neighbors[..., 0]
    np.testing.assert_array_equal(
        np.take_along_axis(partner, partner, axis=1),
        np.broadcast_to(np.arange(9), partner.shape))
    np.testing.assert_array_equal(np.sum(partner == np.arange(9), 1), 1)
    np.testing.assert_allclose(graphs.weights[partner != np.arange(9)], 0.5)

  def test_edge_and_node_probabilities(self):
    er = draws_np(RANDOM['erdos_renyi'])[0]  # Edge on w.p. 0.3.
    self.assertAlmostEqual(degrees(er.neighbors).mean() / 8, 0.3, delta=0.03)
    links = draws_np(RANDOM['links'])[0]  # Torus 3x3, edge fails w.p. 0.4.
    self.assertAlmostEqual(degrees(links.neighbors).mean() / 4, 0.6,
                           delta=0.05)
    drop = draws_np(RANDOM['dropout'])[0]  # Node drops w.p. 0.3.
    self.assertAlmostEqual(float(np.mean(drop.active)), 0.7, delta=0.05)

  def test_extremes(self):
    n = 6
    extremes = (topology.with_link_failures(topology.complete(n), 1.0),
                topology.with_node_dropout(topology.ring(n), 1.0),
                topology.erdos_renyi(n, 1.0))
    matrices = jax.jit(lambda key: [topology.dense_matrix(top.sample(key))
                                    for top in extremes])(KEY)
    np.testing.assert_array_equal(matrices[0], np.eye(n))  # W = I:
    np.testing.assert_array_equal(matrices[1], np.eye(n))  # nothing moves.
    np.testing.assert_allclose(
        matrices[2], topology.dense_matrix(topology.complete(n).sample(KEY)))

  def test_sample_does_not_retrace(self):
    traces = []
    top = RANDOM['dropout_links']

    def sample(key):
      traces.append(1)
      return top.sample(key)

    jitted = jax.jit(sample)
    draws = [jitted(jax.random.key(seed)) for seed in range(5)]
    self.assertLen(traces, 1)
    self.assertFalse(all(np.array_equal(draws[0].weights, d.weights)
                         for d in draws[1:]))

  def test_edge_uniforms_symmetric(self):
    table = np.asarray(topology.complete(6).sample(KEY).neighbors)
    u = np.asarray(jax.jit(topology.edge_uniforms)(KEY, table))
    for i in range(6):
      for d, j in enumerate(table[i]):
        self.assertEqual(u[i, d], u[j, list(table[j]).index(i)])
    self.assertLen(np.unique(u), 15)  # One draw per undirected edge.


BAD_CALLS = (
    ('ring_zero', lambda: topology.ring(0), 'num_nodes must be an int >= 1'),
    ('ring_float', lambda: topology.ring(4.0),
     'num_nodes must be an int >= 1'),
    ('ring_bool', lambda: topology.ring(True),
     'num_nodes must be an int >= 1'),
    ('complete_negative', lambda: topology.complete(-2), 'num_nodes'),
    ('star_zero', lambda: topology.star(0), 'num_nodes'),
    ('matching_zero', lambda: topology.random_matching(0), 'num_nodes'),
    ('torus_rows', lambda: topology.torus(0, 3), 'rows must be an int >= 1'),
    ('torus_cols', lambda: topology.torus(3, 0), 'cols must be an int >= 1'),
    ('exponential_hops', lambda: topology.exponential(8, 0),
     'num_hops must be an int >= 1'),
    ('er_p_high', lambda: topology.erdos_renyi(5, 1.5),
     'p must be a probability in [0, 1]'),
    ('er_p_nan', lambda: topology.erdos_renyi(5, math.nan),
     'p must be a probability in [0, 1]'),
    ('er_nodes', lambda: topology.erdos_renyi(0, 0.5), 'num_nodes'),
    ('links_q', lambda: topology.with_link_failures(topology.ring(4), -0.1),
     'q must be a probability in [0, 1]'),
    ('dropout_q', lambda: topology.with_node_dropout(topology.ring(4), 2),
     'q must be a probability in [0, 1]'),
    ('links_not_topology', lambda: topology.with_link_failures('ring', 0.1),
     'topology must be a topology.Topology'),
    ('mixing_ring', lambda: topology.ring(4, mixing='max'),
     "valid values are 'metropolis_hastings', 'uniform_degree'"),
    ('mixing_er', lambda: topology.erdos_renyi(4, 0.5, mixing='mh'),
     'Unknown mixing'),
    ('mixing_dropout', lambda: topology.with_node_dropout(
        topology.ring(4), 0.1, mixing='uniform'), 'Unknown mixing'),
    ('edges_range', lambda: topology.from_edges(3, [[0, 3]]),
     'edges must hold node indices in [0, 3)'),
    ('edges_shape', lambda: topology.from_edges(3, [[0, 1, 2]]),
     'edges must be an int array [E, 2]'),
)

ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
