"""Distance-based rules vs direct NumPy implementations."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext.aggregators import _testing as t


class DistanceTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)

  def sample(self, n):
    return self.rng.normal(size=(n, 7)) * self.rng.uniform(0.5, 2, (n, 1))

  @parameterized.parameters((1, 1), (2, 1), (2, 4), (2, None))
  def test_multi_krum(self, b, m):
    x = self.sample(10)
    out, _ = t.run(aggregators.multi_krum(b, m), x)
    scores = jax.jit(aggregators.krum_scores, static_argnums=2)(
        aggregators.pairwise_sq_distances(t.as_tree(x), jnp.ones(10, bool)),
        jnp.ones(10, bool), b)
    np.testing.assert_allclose(scores, t.np_krum_scores(x, b), rtol=1e-4)
    np.testing.assert_allclose(out, t.np_multi_krum(x, b, m or 10 - b),
                               rtol=1e-5, atol=1e-6)

  def test_geometric_median(self):
    x = self.sample(9)
    x[0] += 50.  # An outlier the median must resist.
    out, _ = t.run(aggregators.geometric_median(max_iterations=500,
                                                tolerance=1e-7), x)
    # A float64 Weiszfeld run to convergence: the iterate-change stopping
    # rule lands within 1e-6 (relative) of it; the old objective-decrease
    # rule stopped after ~4 steps, 2.9e-4 away.
    ref = t.np_geometric_median(x.astype(np.float64), iters=20000)
    self.assertLess(np.linalg.norm(out - ref), 1e-6 * np.linalg.norm(ref))
    objective = lambda z: np.linalg.norm(x - z, axis=1).sum()
    self.assertLess(objective(out), objective(x.mean(0)))

  def test_geometric_median_default_tolerance_is_reachable(self):
    x = self.sample(9)
    out, _ = t.run(aggregators.geometric_median(), x)
    ref = t.np_geometric_median(x.astype(np.float64), iters=20000)
    self.assertLess(np.linalg.norm(out - ref), 1e-5 * np.linalg.norm(ref))

  def test_centered_clipping_two_rounds(self):
    x1, x2 = self.sample(8), self.sample(8) + 1.
    agg = aggregators.centered_clipping(0.7, num_iterations=3)
    out1, state = t.run(agg, x1)
    out2, _ = t.run(agg, x2, state=state)
    ref1 = t.np_centered_clipping(x1, np.zeros(7), 0.7, 3)
    np.testing.assert_allclose(out1, ref1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out2, t.np_centered_clipping(x2, ref1, 0.7, 3), rtol=1e-5,
        atol=1e-6)

  @parameterized.parameters((11, 2), (9, 2), (15, 3), (7, 1), (5, 2))
  def test_bulyan(self, n, b):
    x = self.sample(n)
    x[:b] += 4.  # Attack-like outliers, so Krum's picks are not ties.
    out, _ = t.run(aggregators.bulyan(b), x)
    np.testing.assert_allclose(out, t.np_bulyan(x, b), rtol=1e-5, atol=1e-6)

  def test_absent_clients_are_ignored(self):
    x = self.sample(9)
    weights = jnp.array([1., 0., 1., 1., 0., 1., 1., 1., 1.])
    keep = np.asarray(weights) > 0
    out, _ = t.run(aggregators.krum(1), x, weights)
    np.testing.assert_allclose(out, t.np_multi_krum(x[keep], 1, 1),
                               rtol=1e-5, atol=1e-6)
    out, _ = t.run(aggregators.bulyan(1), x, weights)
    np.testing.assert_allclose(out, t.np_bulyan(x[keep], 1), rtol=1e-5,
                               atol=1e-6)

  @parameterized.named_parameters(
      ('krum', aggregators.krum, 'krum'),
      ('multi_krum', aggregators.multi_krum, 'multi_krum'),
      ('bulyan', aggregators.bulyan, 'bulyan'))
  def test_num_byzantine_too_large_for_the_cohort(self, factory, rule):
    x = self.sample(7)
    t.run(factory(3), x)  # 2b = 6 < 7: fine.
    with self.assertRaisesRegex(
        ValueError, rf'{rule}: num_byzantine=4 .* 7 clients'):
      t.run(factory(4), x)
    with self.assertRaisesRegex(ValueError, 'num_byzantine'):
      factory(-1)

  def test_bad_constants_are_rejected_when_built(self):
    nan = float('nan')
    cases = [
        ('radius', lambda: aggregators.centered_clipping(nan)),
        ('radius', lambda: aggregators.centered_clipping(0.)),
        ('num_iterations',
         lambda: aggregators.centered_clipping(1., num_iterations=0)),
        ('smoothing', lambda: aggregators.geometric_median(smoothing=nan)),
        ('smoothing',
         lambda: aggregators.geometric_median(smoothing=float('inf'))),
        ('smoothing', lambda: aggregators.geometric_median(smoothing=-1.)),
        ('tolerance', lambda: aggregators.geometric_median(tolerance=nan)),
        ('max_iterations',
         lambda: aggregators.geometric_median(max_iterations=0)),
        ('num_selected', lambda: aggregators.multi_krum(1, 0)),
    ]
    for name, build in cases:
      with self.subTest(name), self.assertRaisesRegex(ValueError, name):
        build()

  def test_accepts_and_ignores_round_extra_args(self):
    x = self.sample(7)
    tree = t.as_tree(x)
    for agg in (aggregators.krum(1), aggregators.multi_krum(1),
                aggregators.bulyan(1), aggregators.geometric_median(),
                aggregators.centered_clipping(0.5)):
      state = agg.init(jax.tree.map(lambda leaf: leaf[0], tree))
      plain, s1 = agg.update(tree, state, weights=jnp.ones(7))
      extra, s2 = agg.update(tree, state, None, weights=jnp.ones(7),
                             key=jax.random.key(3), server_state=object(),
                             client_info={'num_examples': jnp.ones(7)})
      np.testing.assert_array_equal(t.from_tree(plain), t.from_tree(extra))
      jax.tree.map(np.testing.assert_array_equal, s1, s2)


if __name__ == '__main__':
  absltest.main()
