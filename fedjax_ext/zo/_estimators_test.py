"""Tests of the ZO estimators: unbiasedness, variance, budget, composition."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import zo
from fedjax_ext._src import test_utils


def small_problem():
  """A smooth non-quadratic objective over 4 blocks, and its params."""
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(3,)), jnp.float32),
            'v': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'c': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)

  def obj_fn(p):
    h = jnp.tanh(x @ p['w'] + p['b'])
    out = h @ p['v'] + p['c']
    return jnp.mean(jnp.square(out - 1.)) + 0.1 * jnp.sum(p['w'] ** 2)

  return params, obj_fn


def mean_estimate(tx, params, obj_fn, num_keys, state_fn=None):
  """Mean over `num_keys` independent keys of one estimate from `tx`."""
  state0 = tx.init(params)
  if state_fn is not None:
    state0 = state_fn(state0)

  def one(key):
    state = zo.reseed(state0, key)
    estimate, _ = tx.update(None, state, params, obj_fn=obj_fn)
    return estimate

  keys = jax.random.split(jax.random.key(42), num_keys)
  estimates = jax.jit(lambda k: jax.lax.map(one, k))(keys)
  return jax.tree.map(lambda e: jnp.mean(e, 0), estimates), estimates


def rel_error(estimate, truth):
  diff = optax.tree.norm(optax.tree.sub(estimate, truth))
  return float(diff / optax.tree.norm(truth))


class EstimatorTest(parameterized.TestCase):

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

  @parameterized.named_parameters(('rademacher_q2', 'rademacher', 2))
  def test_dense_mezo_unbiased(self, distribution, q):
    params, obj_fn = small_problem()
    truth = jax.grad(obj_fn)(params)
    tx = zo.mezo(epsilon=1e-3, distribution=distribution, num_directions=q)
    mean, _ = mean_estimate(tx, params, obj_fn, 20000 // q)
    self.assertLess(rel_error(mean, truth), 0.06)

  def test_sparse_ht_unbiased_and_biased_without(self):
    params, obj_fn = small_problem()
    truth = jax.grad(obj_fn)(params)
    corrected = zo.sparse_zo(budget=0.5, epsilon=1e-3)
    mean, _ = mean_estimate(corrected, params, obj_fn, 40000)
    self.assertLess(rel_error(mean, truth), 0.06)
    # Without 1/pi the mean is pi * g = 0.5 g: relative error 0.5.
    plain = zo.sparse_zo(budget=0.5, epsilon=1e-3, horvitz_thompson=False)
    mean, _ = mean_estimate(plain, params, obj_fn, 40000)
    self.assertGreater(rel_error(mean, truth), 0.4)
    scaled = jax.tree.map(lambda m: 2. * m, mean)
    self.assertLess(rel_error(scaled, truth), 0.08)

  def test_curvature_sampling_unbiased_with_unequal_probs(self):
    params, obj_fn = small_problem()
    truth = jax.grad(obj_fn)(params)
    tx = zo.curvzo(budget=0.5, adaptive_budget=False)

    def unequal(state):  # Leaves in pytree order: b, c, v, w.
      return state._replace(scores=jnp.array([1., 0.2, 4., 0.5]))

    mean, _ = mean_estimate(tx, params, obj_fn, 40000, unequal)
    self.assertLess(rel_error(mean, truth), 0.08)
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
      _, estimates = mean_estimate(tx, params, obj_fn, 4000, state_fn)
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
    params, obj_fn = small_problem()
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

  def test_chain_with_weight_decay_and_momentum(self):
    params, obj_fn = small_problem()
    lr, wd = 0.1, 0.01
    tx = optax.chain(zo.mezo(key=3), optax.add_decayed_weights(wd),
                     optax.sgd(lr, momentum=0.9))
    updates, state = jax.jit(lambda s, p: tx.update(None, s, p,
                                                    obj_fn=obj_fn))(
                                                        tx.init(params),
                                                        params)
    alone = zo.mezo(key=3)
    estimate, _ = jax.jit(lambda s, p: alone.update(None, s, p,
                                                    obj_fn=obj_fn))(
                                                        alone.init(params),
                                                        params)
    expected = jax.tree.map(lambda g, p: -lr * (g + wd * p), estimate,
                            params)
    test_utils.assert_trees_all_close(updates, expected, rtol=1e-3,
                                      atol=1e-5)
    self.assertEqual(zo.projected_grads(state).shape, (1,))

  def test_replay_from_scalars_is_exact(self):
    params, obj_fn = small_problem()
    tx = optax.chain(zo.curvzo(num_directions=2), optax.sgd(0.05))
    state = tx.init(params)
    live, live_state, pg, _ = jax.jit(lambda p, s: zo.zo_step(
        p, s, optimizer=tx, obj_fn=obj_fn))(params, state)
    replayed, replay_state = jax.jit(lambda p, s, g: zo.replay_step(
        p, s, g, optimizer=tx))(params, state, pg)
    test_utils.assert_trees_all_equal(live, replayed)
    test_utils.assert_trees_all_equal(live_state, replay_state)
    self.assertGreater(rel_error(optax.tree.sub(live, params), params), 0.)

  def test_errors(self):
    params, obj_fn = small_problem()
    tx = zo.mezo()
    with self.assertRaisesRegex(ValueError, 'obj_fn'):
      tx.update(None, tx.init(params), params)
    with self.assertRaisesRegex(ValueError, 'params'):
      tx.update(None, tx.init(params), None, obj_fn=obj_fn)
    with self.assertRaisesRegex(ValueError, 'valid choices: gaussian'):
      zo.mezo(distribution='uniform')
    with self.assertRaisesRegex(ValueError, 'valid choices: uniform'):
      zo.sparse_zo(sampling='fisher')
    with self.assertRaisesRegex(ValueError, 'min_budget'):
      zo.curvzo(budget=0.9)


if __name__ == '__main__':
  absltest.main()
