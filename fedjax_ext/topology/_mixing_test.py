"""Gossip mixing: sparse == dense, consensus contraction, spectral facts."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import topology
from fedjax_ext._src import test_utils

KEY = jax.random.key(0)


def random_rows(num_nodes, seed=0):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=(num_nodes, 3, 2)).astype(np.float32),
          'b': rng.normal(size=(num_nodes,)).astype(np.float32)}


def consensus_distance(rows):
  """sum_i ||x_i - xbar||^2 over every leaf (float64)."""
  total = 0.0
  for leaf in jax.tree.leaves(rows):
    x = np.asarray(leaf, np.float64).reshape(leaf.shape[0], -1)
    total += float(np.sum((x - x.mean(0)) ** 2))
  return total


CASES = {
    'ring': topology.ring(9),
    'torus_uniform': topology.torus(3, 4, mixing='uniform_degree'),
    'star': topology.star(7),
    'exponential': topology.exponential(16),
    'erdos_renyi_wide': topology.erdos_renyi(20, 0.3),  # D = 19: fori_loop.
    'matching': topology.random_matching(9),
    'links_dropout': topology.with_node_dropout(
        topology.with_link_failures(topology.torus(4, 4), 0.3), 0.25),
}


class MixTest(parameterized.TestCase):

  @parameterized.parameters('ring', 'torus_uniform', 'star',
                            'erdos_renyi_wide', 'links_dropout')
  def test_sparse_equals_dense(self, name):
    top = CASES[name]
    rows = random_rows(top.num_nodes)
    for seed in range(2):
      graph = jax.jit(top.sample)(jax.random.key(seed))
      sparse = jax.jit(topology.mix)(graph, rows)
      dense = jax.jit(topology.mix_dense)(topology.dense_matrix(graph), rows)
      test_utils.assert_trees_all_close(sparse, dense, atol=1e-6)
      # Average preserved (W doubly stochastic).
      test_utils.assert_trees_all_close(
          jax.tree.map(lambda x: x.mean(0), sparse),
          jax.tree.map(lambda x: x.mean(0), rows), atol=1e-6)

  def test_dtypes(self):
    graph = topology.ring(5).sample(KEY)
    rows = {'half': jnp.ones((5, 3), jnp.bfloat16) * 2,
            'f32': jnp.arange(5.0)}
    out = topology.mix(graph, rows)
    self.assertEqual(out['half'].dtype, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(out['half'], np.float32), 2.0)
    with self.assertRaisesRegex(TypeError, 'floating leaves only'):
      topology.mix(graph, {'count': jnp.zeros((5,), jnp.int32)})
    with self.assertRaisesRegex(ValueError, r'\[N=5, \.\.\.\]'):
      topology.mix(graph, jnp.zeros((4, 2)))
    with self.assertRaisesRegex(ValueError, 'matrix must be square'):
      topology.mix_dense(jnp.ones((5, 4)), rows)

  def test_complete_uniform_averages_in_one_step(self):
    graph = topology.complete(6, mixing='uniform_degree').sample(KEY)
    rows = random_rows(6)
    out = topology.mix(graph, rows)
    test_utils.assert_trees_all_close(
        out, jax.tree.map(lambda x: jnp.broadcast_to(x.mean(0), x.shape),
                          rows), atol=1e-6)
    self.assertAlmostEqual(topology.spectral_gap(topology.dense_matrix(graph)),
                           1.0, places=6)

  @parameterized.parameters('ring', 'torus_uniform', 'star', 'exponential')
  def test_deterministic_contraction_per_step(self, name):
    top = CASES[name]
    graph = top.sample(KEY)
    lam2 = 1.0 - topology.spectral_gap(topology.dense_matrix(graph))
    rho = topology.contraction(top, KEY)
    self.assertAlmostEqual(rho, lam2 ** 2, places=5)
    rows = random_rows(top.num_nodes, seed=1)
    mix = jax.jit(topology.mix)
    for _ in range(10):  # Pure mixing (zero learning rate).
      before = consensus_distance(rows)
      rows = mix(graph, rows)
      self.assertLessEqual(consensus_distance(rows),
                           rho * before * (1 + 1e-5) + 1e-10)

  @parameterized.parameters('erdos_renyi_wide', 'matching')
  def test_random_contraction_in_expectation(self, name):
    top = CASES[name]
    num = 64
    rho = topology.contraction(top, KEY, num_samples=num)
    self.assertGreater(rho, 0.0)
    self.assertLess(rho, 1.0)
    gram = topology.expected_gram(top, KEY, num)
    _, vectors = np.linalg.eigh(gram - 1.0 / top.num_nodes)
    rng = np.random.default_rng(2)
    x = np.stack([vectors[:, -1], rng.normal(size=top.num_nodes),
                  rng.normal(size=top.num_nodes)], 1)
    x = (x - x.mean(0)).astype(np.float32)  # [N, 3]: three directions.
    step = jax.jit(lambda k, x: topology.mix(top.sample(k), x))

    def ratios(keys):  # Mean of ||W x - xbar||^2 / ||x - xbar||^2 per column.
      mixed = np.stack([np.asarray(step(k, x), np.float64) for k in keys])
      mixed -= mixed.mean(1, keepdims=True)
      return np.mean(np.sum(mixed ** 2, 1), 0) / np.sum(
          x.astype(np.float64) ** 2, 0)

    # On the very draws rho was estimated from, the bound is exact; the
    # worst direction (top eigenvector) attains it.
    same = ratios(jax.random.split(KEY, num))
    self.assertTrue(np.all(same <= rho * (1 + 1e-4) + 1e-6), (same, rho))
    self.assertAlmostEqual(same[0], rho, delta=1e-4)
    # On fresh draws it holds up to Monte-Carlo error.
    fresh = ratios(jax.random.split(jax.random.key(7), num))
    self.assertTrue(np.all(fresh <= rho + 0.05), (fresh, rho))
    if name == 'matching':
      # W = (I + P) / 2 for a matching P, so W^T W = W, and by symmetry
      # E[W] = (5/9) I + (1/18)(11^T - I) on N = 9 nodes: every direction
      # orthogonal to 1 contracts by exactly 1/2 in expectation. (The
      # Monte-Carlo rho, a largest eigenvalue, is biased upwards.)
      np.testing.assert_allclose(fresh, 0.5, atol=0.08)
      self.assertGreaterEqual(rho, 0.5)

  def test_disconnected_reaches_consensus_per_component(self):
    # Two rings, {0..4} and {5..9}: gap 0, rho 1; each converges to its mean.
    edges = [(i, (i + 1) % 5) for i in range(5)]
    edges += [(5 + i, 5 + (i + 1) % 5) for i in range(5)]
    top = topology.from_edges(10, edges)
    graph = top.sample(KEY)
    w = topology.dense_matrix(graph)
    self.assertAlmostEqual(topology.spectral_gap(w), 0.0, places=6)
    self.assertAlmostEqual(topology.contraction(top, KEY), 1.0, places=6)
    steps = jax.jit(lambda g, x: jax.lax.fori_loop(
        0, 80, lambda _, x: topology.mix(g, x), x))
    x = steps(graph, jnp.arange(10.0) ** 2)
    np.testing.assert_allclose(x[:5], np.mean(np.arange(5.0) ** 2), rtol=1e-5)
    np.testing.assert_allclose(x[5:], np.mean(np.arange(5.0, 10.0) ** 2),
                               rtol=1e-5)

  def test_dropped_nodes_rows_unchanged(self):
    top = CASES['links_dropout']  # Torus 4x4, links fail, nodes drop.
    tested = 0
    for seed in range(6):
      graph = jax.jit(top.sample)(jax.random.key(seed))
      off = ~np.asarray(graph.active)
      if not off.any():
        continue
      tested += 1
      rows = random_rows(16, seed=seed)
      rows['w'][np.flatnonzero(off)[0]] = np.nan  # Must not leak.
      out = topology.mix(graph, rows)
      for name in rows:
        np.testing.assert_array_equal(np.asarray(out[name])[off],
                                      rows[name][off])
        self.assertTrue(np.all(np.isfinite(np.asarray(out[name])[~off])))
    self.assertGreaterEqual(tested, 3)

  def test_ring_spectral_gap_closed_form(self):
    gaps = []
    for n in (5, 8, 16, 32, 64):
      gap = topology.spectral_gap(topology.dense_matrix(
          topology.ring(n).sample(KEY)))
      self.assertAlmostEqual(gap, 2 / 3 * (1 - math.cos(2 * math.pi / n)),
                             places=6)
      gaps.append(gap)
    self.assertEqual(gaps, sorted(gaps, reverse=True))

  def test_summary_and_interval(self):
    info = topology.summary(topology.ring(8), KEY)
    self.assertEqual(info['max_degree'], 2)
    self.assertAlmostEqual(info['contraction'],
                           (1 - info['spectral_gap']) ** 2, places=5)
    self.assertEqual(info['tad_lora_interval'],
                     topology.tad_lora_interval(info['contraction']))
    self.assertEqual(topology.tad_lora_interval(0.0), 1)
    self.assertEqual(topology.tad_lora_interval(0.99), 10)
    self.assertEqual(topology.tad_lora_interval(0.96, c=2.0), 10)
    # Sparser ER graphs want longer phases.
    rhos = [topology.contraction(CASES['erdos_renyi_wide'], KEY, 64),
            topology.contraction(topology.erdos_renyi(20, 0.05), KEY, 64)]
    self.assertEqual(rhos, sorted(rhos))
    self.assertLess(topology.tad_lora_interval(rhos[0], 3.0),
                    topology.tad_lora_interval(rhos[1], 3.0))


BAD_CALLS = (
    ('row_sum', lambda: topology.check_doubly_stochastic(
        np.array([[0.5, 0.4], [0.5, 0.5]])), 'row 0 sums to 0.9'),
    ('column_sum', lambda: topology.check_doubly_stochastic(
        np.array([[0.5, 0.5], [0.7, 0.3]])), 'column 0 sums to 1.2'),
    ('negative', lambda: topology.check_doubly_stochastic(
        np.array([[1.5, -0.5], [-0.5, 1.5]])), 'negative entry W[0, 1]'),
    ('not_square', lambda: topology.check_doubly_stochastic(np.ones((2, 3))),
     'must be square'),
    ('nan', lambda: topology.check_doubly_stochastic(
        np.array([[np.nan, 0], [0, 1]])), 'non-finite'),
    ('gap_asymmetric', lambda: topology.spectral_gap(
        np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])),
     'spectral_gap needs a symmetric matrix'),
    ('rho_one', lambda: topology.tad_lora_interval(1.0),
     'rho must be in [0, 1)'),
    ('rho_negative', lambda: topology.tad_lora_interval(-0.1),
     'rho must be in [0, 1)'),
    ('c_zero', lambda: topology.tad_lora_interval(0.5, 0.0),
     'c must be a finite number > 0'),
    ('num_samples', lambda: topology.contraction(topology.erdos_renyi(4, 0.5),
                                                 KEY, 0),
     'num_samples must be an int >= 1'),
    ('contraction_topology', lambda: topology.contraction('ring', KEY),
     'topology must be a topology.Topology'),
)

ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
