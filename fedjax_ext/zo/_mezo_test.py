"""Tests of the dense estimator: unbiasedness, composition, errors."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import optax

from fedjax_ext import zo
from fedjax_ext._src import test_utils
from fedjax_ext.zo import _testing


class MeZOTest(parameterized.TestCase):

  @parameterized.named_parameters(('rademacher_q2', 'rademacher', 2))
  def test_dense_mezo_unbiased(self, distribution, q):
    params, obj_fn = _testing.small_problem()
    truth = jax.grad(obj_fn)(params)
    tx = zo.mezo(epsilon=1e-3, distribution=distribution, num_directions=q)
    mean, _ = _testing.mean_estimate(tx, params, obj_fn, 20000 // q)
    self.assertLess(_testing.rel_error(mean, truth), 0.06)

  def test_chain_with_weight_decay_and_momentum(self):
    params, obj_fn = _testing.small_problem()
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
    self.assertIsNone(zo.sampler_state(state))

  def test_errors(self):
    params, obj_fn = _testing.small_problem()
    tx = zo.mezo()
    with self.assertRaisesRegex(ValueError, 'obj_fn'):
      tx.update(None, tx.init(params), params)
    with self.assertRaisesRegex(ValueError, 'params'):
      tx.update(None, tx.init(params), None, obj_fn=obj_fn)
    with self.assertRaisesRegex(ValueError, 'valid choices: gaussian'):
      zo.mezo(distribution='uniform')
    with self.assertRaisesRegex(ValueError, 'num_directions'):
      zo.mezo(num_directions=0)
    with self.assertRaisesRegex(ValueError, 'epsilon'):
      zo.mezo(epsilon=0.)


if __name__ == '__main__':
  absltest.main()
