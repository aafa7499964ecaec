"""Tests of the state helpers: reseeding, sampler read/write and mean."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import zo
from fedjax_ext._src import test_utils
from fedjax_ext.zo import _testing


class StatesTest(absltest.TestCase):

  def test_reseed_and_sampler_round_trip(self):
    params, _ = _testing.small_problem()
    tx = optax.chain(zo.curvzo(), optax.sgd(0.1))
    state = tx.init(params)
    reseeded = zo.reseed(state, jax.random.key(5))
    (found,) = zo.zo_states(reseeded)
    np.testing.assert_array_equal(
        jax.random.key_data(found.key),
        jax.random.key_data(jax.random.fold_in(jax.random.key(5), 0)))
    sampler = zo.sampler_state(state)._replace(
        count=jnp.int32(3), scores=jnp.arange(1., 5.))
    test_utils.assert_trees_all_equal(
        zo.sampler_state(zo.with_sampler_state(state, sampler)), sampler)
    # None (mezo's sampler) leaves any state unchanged.
    test_utils.assert_trees_all_equal(zo.with_sampler_state(state, None),
                                      state)
    mezo = optax.chain(zo.mezo(), optax.sgd(0.1))
    self.assertIsNone(zo.sampler_state(mezo.init(params)))
    with self.assertRaisesRegex(ValueError, 'sparse_zo'):
      zo.with_sampler_state(mezo.init(params), sampler)
    with self.assertRaisesRegex(ValueError, 'exactly one'):
      zo.projected_grads(optax.sgd(0.1).init(params))
    self.assertEqual(zo.num_blocks(params), 4)
    self.assertEqual(zo.num_parameters(params), 12 + 3 + 6 + 2)

  def test_mean_sampler_state(self):
    samplers = zo.SamplerState(
        count=jnp.array([4, 7, 2], jnp.int32),
        scores=jnp.array([[1., 3.], [3., 1.], [100., 100.]]),
        feedback_scale=jnp.array([1., 2., 50.]),
        budget=jnp.array([0.2, 0.4, 0.8]))
    mean = zo.mean_sampler_state(samplers, jnp.array([1., 3., 0.]))
    test_utils.assert_trees_all_close(
        mean, zo.SamplerState(count=jnp.int32(7), scores=jnp.array([2.5, 1.5]),
                              feedback_scale=jnp.float32(1.75),
                              budget=jnp.float32(0.35)))
    # No client saw data: client 0's (the broadcast) state.
    none = zo.mean_sampler_state(samplers, jnp.zeros(3))
    test_utils.assert_trees_all_equal(
        none, jax.tree.map(lambda x: x[0], samplers))


if __name__ == '__main__':
  absltest.main()
