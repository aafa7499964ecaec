"""Tests of sparse ZO and CurvZO: unbiasedness, variance, budget, errors."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import zo
from fedjax_ext.zo import _testing


class SparseZOTest(absltest.TestCase):

  def test_sparse_ht_unbiased_and_biased_without(self):
    params, obj_fn = _testing.small_problem()
    truth = jax.grad(obj_fn)(params)
    corrected = zo.sparse_zo(budget=0.5, epsilon=1e-3)
    mean, _ = _testing.mean_estimate(corrected, params, obj_fn, 40000)
    self.assertLess(_testing.rel_error(mean, truth), 0.06)
    # Without 1/pi the mean is pi * g = 0.5 g: relative error 0.5.
    plain = zo.sparse_zo(budget=0.5, epsilon=1e-3, horvitz_thompson=False)
    mean, _ = _testing.mean_estimate(plain, params, obj_fn, 40000)
    self.assertGreater(_testing.rel_error(mean, truth), 0.4)
    scaled = jax.tree.map(lambda m: 2. * m, mean)
    self.assertLess(_testing.rel_error(scaled, truth), 0.08)

  def test_curvature_sampling_unbiased_with_unequal_probs(self):
    params, obj_fn = _testing.small_problem()
    truth = jax.grad(obj_fn)(params)
    tx = zo.curvzo(budget=0.5, adaptive_budget=False)

    def unequal(state):  # Leaves in pytree order: b, c, v, w.
      return state._replace(scores=jnp.array([1., 0.2, 4., 0.5]))

    mean, _ = _testing.mean_estimate(tx, params, obj_fn, 40000, unequal)
    self.assertLess(_testing.rel_error(mean, truth), 0.08)
    # The sampler really used unequal probabilities (K = 2 of 4 blocks).
    probs = zo.poisson_pps_probs(jnp.array([1., 0.2, 4., 0.5]), 2.)
    self.assertGreater(float(jnp.max(probs) - jnp.min(probs)), 0.3)

  def test_curvature_sampler_lowers_variance(self):
    # One large high-curvature block and nine small flat ones.
    rng = np.random.default_rng(1)
    sizes = [200] + [5] * 9
    curv = jnp.array([10.] + [0.1] * 9)
    params = {f'b{i}': jnp.asarray(rng.normal(size=(d,)), jnp.float32)
              for i, d in enumerate(sizes)}
    names = sorted(params)

    def obj_fn(p):
      return 0.5 * sum(curv[names.index(k)] * jnp.sum(p[k] ** 2) for k in p)

    truth = jax.grad(obj_fn)(params)
    curvature = zo.curvzo(budget=0.4, adaptive_budget=False, epsilon=1e-3)
    uniform = zo.sparse_zo(budget=0.4, epsilon=1e-3)
    # Learn the scores online from scalar feedback (params held fixed).
    learn = lambda s, _: (curvature.update(None, s, params,
                                           obj_fn=obj_fn)[1], None)
    state, _ = jax.jit(lambda s: jax.lax.scan(learn, s, None, length=300))(
        curvature.init(params))
    learnt = state.scores
    big = names.index('b0')
    self.assertEqual(int(jnp.argmax(learnt)), big)

    def mse(tx, state_fn=None):
      _, estimates = _testing.mean_estimate(tx, params, obj_fn, 4000,
                                            state_fn)
      sq = jax.tree.map(lambda e, g: jnp.sum((e - g) ** 2) / e.shape[0],
                        estimates, truth)
      return float(sum(jax.tree.leaves(sq)))

    var_curv = mse(curvature, lambda s: s._replace(scores=learnt))
    var_unif = mse(uniform)
    # Same expected budget K = 4 blocks for both.
    probs = zo.poisson_pps_probs(learnt, 4.)
    self.assertAlmostEqual(float(jnp.sum(probs)), 4., places=4)
    self.assertLess(var_curv, 0.8 * var_unif)

  def test_adaptive_budget_stays_in_bounds(self):
    params, obj_fn = _testing.small_problem()
    tx = optax.chain(zo.curvzo(budget=0.4, adapt_every=1), optax.sgd(1e-2))

    def step(carry, _):
      p, s = carry
      u, s = tx.update(None, s, p, obj_fn=obj_fn)
      return (optax.apply_updates(p, u), s), s[0].budget

    (_, state), budgets = jax.jit(lambda c: jax.lax.scan(
        step, c, None, length=300))((params, tx.init(params)))
    budgets = np.asarray(budgets)
    self.assertTrue(np.all(budgets >= 0.1 - 1e-7))
    self.assertTrue(np.all(budgets <= 0.8 + 1e-7))
    self.assertGreater(np.ptp(budgets), 1e-3)  # It does adapt.
    self.assertEqual(int(state[0].count), 300)

  def test_errors(self):
    params, _ = _testing.small_problem()
    tx = zo.sparse_zo()
    with self.assertRaisesRegex(ValueError, 'obj_fn'):
      tx.update(None, tx.init(params), params)
    with self.assertRaisesRegex(ValueError, 'valid choices: uniform'):
      zo.sparse_zo(sampling='fisher')
    with self.assertRaisesRegex(ValueError, 'valid choices: port'):
      zo.curvzo(score_rule='fisher')
    with self.assertRaisesRegex(ValueError, 'valid choices: gaussian'):
      zo.curvzo(distribution='uniform')
    with self.assertRaisesRegex(ValueError, 'min_budget'):
      zo.curvzo(budget=0.9)
    with self.assertRaisesRegex(ValueError, 'uniform_mix'):
      zo.sparse_zo(uniform_mix=2.)


if __name__ == '__main__':
  absltest.main()
