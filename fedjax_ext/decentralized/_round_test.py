"""The decentralized round: dropout, components, contraction, no retrace."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext import decentralized
from fedjax_ext import topology
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)


def random_store(num_nodes, seed=0):
  """Distinct linear models per node, leaves [N, ...]."""
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(num_nodes, 3)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=(num_nodes,)), jnp.float32)}


def fixed(graph, name='fixed'):
  """A `topology.Topology` that always draws `graph`."""
  n, d = graph.neighbors.shape
  return topology.Topology(name, n, d, lambda key: graph)


def pure_gossip(top, mixing='auto'):
  """DFedAvg with a zero step: the round is the mixing alone."""
  return decentralized.dfedavg(_testing.linear_loss, optax.sgd(0.), top,
                               mixing=mixing)


class RoundTest(parameterized.TestCase):

  @parameterized.parameters('sparse', 'dense')
  def test_zero_lr_contracts_by_at_most_rho(self, mixing):
    n = 6
    ring = topology.ring(n)
    algorithm = pure_gossip(ring, mixing)
    store = random_store(n)
    cohort = _testing.random_cohort(n, 2, 3)
    state = algorithm.init(_testing.linear_params())
    _, new_store, metrics = jax.jit(algorithm.apply)(state, store, cohort,
                                                     KEY)
    matrix = topology.dense_matrix(ring.sample(KEY))
    expected = topology.mix_dense(matrix, store)
    test_utils.assert_trees_all_close(new_store, expected, atol=1e-6)
    before = decentralized.consensus_distance(store)
    after = decentralized.consensus_distance(expected)
    np.testing.assert_allclose(metrics['consensus_before_mix'], before,
                               rtol=1e-5)
    np.testing.assert_allclose(metrics['consensus_after_mix'], after,
                               rtol=1e-5)
    rho = topology.contraction(ring, KEY)
    self.assertLess(rho, 1.)
    self.assertLessEqual(float(after), rho * float(before) + 1e-6)
    self.assertEqual(float(metrics['gossip_bytes_per_node']), 16.)
    self.assertEqual(float(metrics['mean_degree']), 2.)

  def test_node_dropout_leaves_dropped_rows_unchanged(self):
    n = 6
    top = topology.with_node_dropout(topology.complete(n), 0.5)
    algorithm = decentralized.dfedavg(_testing.linear_loss, optax.sgd(0.1),
                                      top)
    cohort = _testing.random_cohort(n, 2, 3, seed=1)
    state = algorithm.init(_testing.linear_params())
    store = random_store(n, seed=1)
    apply = jax.jit(algorithm.apply)
    sample = jax.jit(lambda r: top.sample(core.stage_key(KEY, r, 0)))
    dropped_some = trained_some = False
    for _ in range(4):
      graph = sample(state.round)
      state, new_store, metrics = apply(state, store, cohort, KEY)
      active = np.asarray(graph.active)
      self.assertEqual(float(metrics['active_nodes']), active.sum())
      for i in range(n):
        same = all(np.array_equal(new[i], old[i]) for new, old in zip(
            jax.tree.leaves(new_store), jax.tree.leaves(store)))
        self.assertEqual(same, not active[i])
      dropped_some |= not active.all()
      trained_some |= active.any()
      store = new_store
    self.assertTrue(dropped_some and trained_some)

  def test_hand_built_dropout_graph(self):
    # Node 2 of K_4 inactive: it keeps its row; the others average.
    n = 4
    neighbors = np.array([[j for j in range(n) if j != i] for i in range(n)])
    graph = topology.mixing_weights(neighbors, np.ones((n, n - 1), bool),
                                    np.arange(n) != 2, 'uniform_degree')
    algorithm = pure_gossip(fixed(graph))
    store = random_store(n, seed=2)
    _, new_store, _ = jax.jit(algorithm.apply)(
        algorithm.init(_testing.linear_params()), store,
        _testing.random_cohort(n, 1, 2), KEY)
    for leaf, old in zip(jax.tree.leaves(new_store), jax.tree.leaves(store)):
      np.testing.assert_array_equal(leaf[2], old[2])
      mean = np.mean(np.asarray(old)[[0, 1, 3]], axis=0)
      for i in (0, 1, 3):
        np.testing.assert_allclose(leaf[i], mean, rtol=1e-5, atol=1e-6)

  def test_disconnected_graph_reaches_consensus_per_component_only(self):
    # A path 0-1-2-3 and an edge 4-5: each converges to its own mean.
    n = 6
    top = topology.from_edges(n, [(0, 1), (1, 2), (2, 3), (4, 5)])
    algorithm = pure_gossip(top, 'sparse')
    store = random_store(n, seed=3)
    initial = store
    state = algorithm.init(_testing.linear_params())
    cohort = _testing.random_cohort(n, 1, 2)
    apply = jax.jit(algorithm.apply)
    for _ in range(80):
      state, store, metrics = apply(state, store, cohort, KEY)
    for leaf, old in zip(jax.tree.leaves(store), jax.tree.leaves(initial)):
      old = np.asarray(old)
      for part in ([0, 1, 2, 3], [4, 5]):
        for i in part:
          np.testing.assert_allclose(leaf[i], old[part].mean(axis=0),
                                     atol=1e-4)
    # The components disagree: no global consensus.
    self.assertGreater(float(metrics['consensus_after_mix']), 1e-2)
    np.testing.assert_allclose(
        metrics['consensus_after_mix'], decentralized.consensus_distance(
            {'w': np.repeat(np.stack([initial['w'][:4].mean(0),
                                      initial['w'][4:].mean(0)]),
                            [4, 2], axis=0),
             'b': np.repeat([initial['b'][:4].mean(), initial['b'][4:].mean()],
                            [4, 2])}), rtol=1e-3)

  def test_time_varying_graph_does_not_retrace(self):
    n = 5
    top = topology.erdos_renyi(n, 0.5)
    algorithm = decentralized.dfedavg(_testing.linear_loss, optax.sgd(0.1),
                                      top)
    traces = []

    def apply(*args):
      traces.append(1)
      return algorithm.apply(*args)

    apply = jax.jit(apply, donate_argnums=(0, 1))
    state = algorithm.init(_testing.linear_params())
    store = core.tree_broadcast(
        algorithm.init_client_state(_testing.linear_params()), n)
    store = jax.tree.map(jnp.array, store)
    cohort = _testing.random_cohort(n, 2, 3)
    degrees = set()
    for _ in range(4):
      state, store, metrics = apply(state, store, cohort, KEY)
      degrees.add(float(metrics['mean_degree']))
    self.assertLen(traces, 1)
    self.assertGreater(len(degrees), 1)  # The graph did change.
    self.assertEqual(int(state.round), 4)

  def test_model_params_is_the_node_average(self):
    algorithm = pure_gossip(topology.ring(4))
    store = random_store(4, seed=5)
    mean = algorithm.model_params(algorithm.init(_testing.linear_params()),
                                  store)
    test_utils.assert_trees_all_close(
        mean, jax.tree.map(lambda v: np.mean(v, axis=0), store), atol=1e-6)

  def test_mix_fields_keeps_the_other_fields(self):
    graph = topology.ring(4).sample(KEY)
    rows = {'x': jnp.arange(4.), 'g': jnp.arange(4.) * 10}
    mixed, sent = decentralized.mix_fields(('x',))(
        decentralized.mix_function(graph, 'sparse', 4), rows, None)
    np.testing.assert_array_equal(mixed['g'], rows['g'])
    np.testing.assert_allclose(
        mixed['x'], topology.mix(graph, rows['x']), rtol=1e-6)
    self.assertEqual(float(sent), 4.)


BAD_CALLS = (
    ('mixing', lambda: pure_gossip(topology.ring(3), 'fast'), 'mixing'),
    ('topology', lambda: pure_gossip('ring'), 'topology'),
    ('cohort_size', lambda: pure_gossip(topology.ring(3)).apply(
        decentralized.DecentralizedState(jnp.zeros((), jnp.int32)),
        random_store(3), _testing.random_cohort(2, 1, 2), KEY),
     'arange(3)'),
    ('store_size', lambda: pure_gossip(topology.ring(3)).apply(
        decentralized.DecentralizedState(jnp.zeros((), jnp.int32)),
        random_store(4), _testing.random_cohort(3, 1, 2), KEY),
     'one row per node'),
    ('mix_fields', lambda: decentralized.mix_fields(('z',))(
        lambda r: r, {'x': jnp.zeros(2)}, None), "no field ['z']"),
)

BadCallsTest = test_utils.bad_calls_test_case(BAD_CALLS)

if __name__ == '__main__':
  absltest.main()
