"""Distance-based rules vs direct NumPy implementations."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext.aggregators import _distance
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

  def test_gram_and_exact_distances_agree(self):
    # Typical updates: a shared drift plus client noise of similar size,
    # leaves of several shapes, one client absent.
    x = self.sample(12) + 3. * self.rng.normal(size=(1, 7))
    present = jnp.array([True] * 11 + [False])
    gram = aggregators.pairwise_sq_distances(t.as_tree(x), present)
    exact = jax.jit(lambda u, p: aggregators.pairwise_sq_distances(
        u, p, method='exact', block_rows=5))(t.as_tree(x), present)
    sq = (x**2).sum(1)
    scale = sq[:, None] + sq[None, :]
    ref = t.np_sq_dists(x)
    both = np.outer(present, present)
    absent = ~both & ~np.eye(12, dtype=bool)
    for d in (gram, exact):
      self.assertTrue(np.all(np.isinf(np.asarray(d)[absent])))
      np.testing.assert_array_equal(np.diag(d), 0.)
    # The documented bound: |D_gram - D| <= 1e-5 (|x_i|^2 + |x_j|^2).
    err = np.abs(np.asarray(gram) - ref)[both]
    self.assertTrue(np.all(err <= 1e-5 * scale[both]), err.max())
    np.testing.assert_allclose(np.asarray(exact)[both], ref[both],
                               rtol=1e-5)

  def test_gram_cancellation_is_what_the_docs_say(self):
    # Near-identical updates: ratio |x|^2 / D ~ 1e8 > 1 / eps; the Gram
    # path loses every digit, the exact path keeps them.
    x = np.ones((4, 7)) * 100. + self.rng.normal(size=(4, 7)) * 1e-3
    ref = t.np_sq_dists(x.astype(np.float32).astype(np.float64))
    present = jnp.ones(4, bool)
    exact = aggregators.pairwise_sq_distances(t.as_tree(x), present,
                                              method='exact')
    np.testing.assert_allclose(exact, ref, rtol=1e-4, atol=1e-9)
    gram = aggregators.pairwise_sq_distances(t.as_tree(x), present)
    off = ~np.eye(4, dtype=bool)
    self.assertGreater(np.abs(np.asarray(gram) - ref)[off].max(),
                       np.abs(ref[off]).max() * 0.1)

  @parameterized.parameters(('krum', 2), ('multi_krum', 2), ('bulyan', 2))
  def test_exact_distances_option_gives_the_same_rule(self, rule, b):
    x = self.sample(11)
    x[:b] += 4.
    factory = {'krum': aggregators.krum,
               'multi_krum': aggregators.multi_krum,
               'bulyan': aggregators.bulyan}[rule]
    weights = jnp.ones(11).at[3].set(0.)
    out, _ = t.run(factory(b), x, weights)
    if rule == 'krum':
      exact = aggregators.multi_krum(b, 1, distances='exact')
    else:
      exact = factory(b, distances='exact')
    out_exact, _ = t.run(exact, x, weights)
    np.testing.assert_allclose(out, out_exact, rtol=1e-5, atol=1e-6)

  def test_krum_takes_the_best_row_and_zeros_when_nobody_is_present(self):
    x = self.sample(9)
    out, _ = t.run(aggregators.krum(2), x)
    best = np.argmin(t.np_krum_scores(x, 2))
    np.testing.assert_array_equal(out, x.astype(np.float32)[best])
    out, _ = t.run(aggregators.krum(2), x, jnp.zeros(9))
    np.testing.assert_array_equal(out, np.zeros(7))
    x[4, 2] = np.nan  # Rejected, even though the Gram row is NaN.
    out, _ = t.run(aggregators.krum(2), x)
    keep = np.arange(9) != 4
    np.testing.assert_allclose(out, t.np_multi_krum(x[keep], 2, 1),
                               rtol=1e-6)

  def test_mixed_gram_is_the_gram_of_the_mixed_rows(self):
    x = self.sample(8)
    x[2] = np.inf  # Its column of the mixing is 0, its Gram row inf/NaN.
    gram = _distance.gram_matrix(t.as_tree(x))
    mixing = self.rng.uniform(size=(8, 8))
    mixing[:, 2] = 0.
    y = mixing @ np.where(np.isfinite(x), x, 0.)
    np.testing.assert_allclose(
        _distance.mixed_gram(jnp.asarray(mixing, jnp.float32), gram),
        y @ y.T, rtol=1e-5)

  def test_a_given_gram_is_used(self):
    x = self.sample(9)
    tree = t.as_tree(x)
    gram = _distance.gram_matrix(tree)
    for agg in (aggregators.krum(2), aggregators.multi_krum(2),
                aggregators.bulyan(2)):
      plain, _ = agg.update(tree, (), weights=jnp.ones(9))
      given, _ = agg.update(tree, (), weights=jnp.ones(9), gram=gram)
      np.testing.assert_array_equal(t.from_tree(plain), t.from_tree(given))
    # A wrong Gram matrix changes Krum's pick: it really is used.
    swapped = gram[::-1, ::-1]
    krum, _ = aggregators.krum(2).update(tree, (), weights=jnp.ones(9),
                                         gram=swapped)
    plain, _ = aggregators.krum(2).update(tree, (), weights=jnp.ones(9))
    self.assertFalse(np.array_equal(t.from_tree(krum), t.from_tree(plain)))

  def test_unknown_distances_method_is_rejected(self):
    for build in (lambda: aggregators.multi_krum(1, distances='cosine'),
                  lambda: aggregators.bulyan(1, distances='cosine'),
                  lambda: aggregators.nnm(1, distances='cosine'),
                  lambda: aggregators.pairwise_sq_distances(
                      t.as_tree(self.sample(3)), jnp.ones(3, bool),
                      method='cosine')):
      with self.assertRaisesRegex(ValueError, "distances 'cosine'.*gram"):
        build()

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
