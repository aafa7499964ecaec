"""Coordinate-wise rules vs direct NumPy implementations."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext.aggregators import _testing as t


class CoordinatewiseTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)

  def sample(self, n):
    return self.rng.normal(size=(n, 7)) * self.rng.uniform(0.5, 2, (n, 1))

  @parameterized.parameters(7, 8)
  def test_coordinate_median(self, n):
    x = self.sample(n)
    out, _ = t.run(aggregators.coordinate_median(), x)
    np.testing.assert_allclose(out, t.np_median(x), rtol=1e-5, atol=1e-6)

  @parameterized.parameters(0, 1, 3)
  def test_trimmed_mean(self, b):
    x = self.sample(9)
    out, _ = t.run(aggregators.trimmed_mean(b), x)
    np.testing.assert_allclose(out, t.np_trimmed_mean(x, b), rtol=1e-5,
                               atol=1e-6)

  def test_absent_clients_are_ignored(self):
    x = self.sample(9)
    weights = jnp.array([1., 0., 1., 1., 0., 1., 1., 1., 1.])
    keep = np.asarray(weights) > 0
    out, _ = t.run(aggregators.trimmed_mean(2), x, weights)
    np.testing.assert_allclose(out, t.np_trimmed_mean(x[keep], 2),
                               rtol=1e-5, atol=1e-6)

  def test_num_byzantine_too_large_for_the_cohort(self):
    x = self.sample(6)
    t.run(aggregators.trimmed_mean(2), x)  # 2b = 4 < 6: fine.
    with self.assertRaisesRegex(ValueError,
                                r'trimmed_mean: num_byzantine=3 .* 6 '):
      t.run(aggregators.trimmed_mean(3), x)
    with self.assertRaisesRegex(ValueError, 'num_byzantine'):
      aggregators.trimmed_mean(-1)

  def test_accepts_and_ignores_round_extra_args(self):
    x = self.sample(5)
    tree = t.as_tree(x)
    for agg in (aggregators.mean(), aggregators.mean(reject_non_finite=True),
                aggregators.coordinate_median(),
                aggregators.trimmed_mean(1)):
      plain, _ = agg.update(tree, (), weights=jnp.ones(5))
      extra, _ = agg.update(tree, (), None, weights=jnp.ones(5),
                            key=jax.random.key(3), server_state=object(),
                            client_info={'num_examples': jnp.ones(5)})
      np.testing.assert_array_equal(t.from_tree(plain), t.from_tree(extra))


if __name__ == '__main__':
  absltest.main()
