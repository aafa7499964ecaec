"""Tests of the block sampler: PPS probabilities and the adaptive budget."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import zo
from fedjax_ext._src import test_utils


class SamplingTest(absltest.TestCase):

  def test_pps_probabilities_hand_checked(self):
    probs = zo.poisson_pps_probs(jnp.array([8., 1., 1.]), 2.)
    test_utils.assert_trees_all_close(probs, jnp.array([1., .5, .5]))
    w = jnp.array([5., 3., 1., 1., 0.5, 0.1])
    probs = jax.jit(zo.poisson_pps_probs)(w, 3.)
    self.assertAlmostEqual(float(jnp.sum(probs)), 3., places=5)
    # Proportional to the weights below the cap.
    uncapped = probs < 1.
    ratios = probs[uncapped] / w[uncapped]
    test_utils.assert_trees_all_close(ratios, jnp.full_like(ratios,
                                                            ratios[0]))
    test_utils.assert_trees_all_close(zo.poisson_pps_probs(w, 6.),
                                      jnp.ones(6))

  def test_adapt_budget_hand_checked(self):
    # Equal scores: d_eff = n, entropy 1: raw = 0.1 + 0.7 * 0.7 = 0.59,
    # new = 0.9 * 0.4 + 0.1 * 0.59 = 0.419.
    new = zo.adapt_budget(jnp.ones(10), 0.4)
    self.assertAlmostEqual(float(new), 0.419, places=5)
    # One dominant score: d_eff ~ 1, entropy ~ 0 -> raw ~ 0.1 + 0.7 *
    # (0.07 + 0.3) and f moves towards it, never out of bounds.
    scores = jnp.array([1e6] + [1e-6] * 9)
    d_eff, entropy = zo.effective_support(scores)
    self.assertLess(float(d_eff), 1.01)
    self.assertLess(float(entropy), 0.01)
    step = lambda f, _: (zo.adapt_budget(scores, f),) * 2
    f, path = jax.jit(lambda f: jax.lax.scan(step, f, None, length=200))(
        jnp.float32(0.8))
    self.assertTrue(np.all((np.asarray(path) >= 0.1)
                           & (np.asarray(path) <= 0.8)))
    self.assertAlmostEqual(float(f), 0.1 + 0.7 * (0.07 + 0.3), places=2)


if __name__ == '__main__':
  absltest.main()
