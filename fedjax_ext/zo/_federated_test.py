"""Tests of federated ZO: exact server-side seed replay and upload bytes."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext import zo
from fedjax_ext._src import test_utils

C, S, B, D, K = 3, 4, 5, 6, 3


def loss_fn(params, batch, key):
  del key
  logits = batch['x'] @ params['w'] + params['b']
  losses = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           batch['y'])
  mask = batch['mask']
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.), {}


def tiny_cohort(seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((C, S, B), np.float32)
  mask[2, -1] = 0.  # Client 2's last step is padding only.
  batches = {'x': jnp.asarray(rng.normal(size=(C, S, B, D)), jnp.float32),
             'y': jnp.asarray(rng.integers(0, K, size=(C, S, B)), jnp.int32),
             'mask': jnp.asarray(mask)}
  return core.Cohort(client_ids=jnp.arange(C, dtype=jnp.int32),
                     batches=batches,
                     num_examples=jnp.full((C,), S * B, jnp.float32))


def tiny_params():
  rng = np.random.default_rng(1)
  return {'w': jnp.asarray(rng.normal(size=(D, K)), jnp.float32),
          'b': jnp.zeros((K,), jnp.float32)}


def optimizer():
  return optax.chain(zo.curvzo(budget=0.5, adapt_every=2),
                     optax.add_decayed_weights(1e-3),
                     optax.sgd(0.05, momentum=0.9))


class FederatedZOTest(absltest.TestCase):

  def test_server_replay_reproduces_client_params_exactly(self):
    params, cohort, tx = tiny_params(), tiny_cohort(), optimizer()
    batches = jax.tree.map(lambda x: x[2], cohort.batches)
    key = jax.random.key(7)
    # A warm sampler state, as a carrying server would broadcast it.
    sampler = zo.sampler_state(tx.init(params))._replace(
        count=jnp.int32(5), scores=jnp.array([0.3, 0.02]),
        feedback_scale=jnp.float32(1.5))
    for start in (None, sampler):
      result = jax.jit(lambda p, b, k, s: zo.zo_train_locally(
          p, b, k, loss_fn=loss_fn, optimizer=tx, sampler=s))(
              params, batches, key, start)
      upload = zo.SeedUpload(seed=jax.random.key_data(key),
                             projected_grads=result.projected_grads,
                             active=result.active)
      replayed, final = jax.jit(lambda p, u, s: zo.replay(
          p, u, optimizer=tx, sampler=s))(params, upload, start)
      test_utils.assert_trees_all_equal(result.params, replayed)
      test_utils.assert_trees_all_equal(result.sampler, final)
      np.testing.assert_array_equal(result.active, [True, True, True, False])
      self.assertTrue(np.isfinite(float(result.loss)))
      self.assertGreater(float(optax.tree.norm(optax.tree.sub(
          result.params, params))), 0.)
    # The warm start was used: 3 active steps on top of count 5.
    self.assertEqual(int(final.count), 8)

  def test_seed_uploads_match_delta_uploads_and_count_bytes(self):
    params, cohort, tx = tiny_params(), tiny_cohort(), optimizer()
    n = zo.num_blocks(params)
    for carry in (True, False):
      results = {}
      for upload in zo.UPLOADS:
        algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), upload=upload,
                                  carry_sampler=carry, execution='sequential')
        apply = jax.jit(algorithm.apply)
        state = algorithm.init(params)
        for r in range(3):
          state, _, metrics = apply(state, (), tiny_cohort(r),
                                    jax.random.key(0))
        results[upload] = (state, metrics)
      delta, seeds = results['delta'], results['seeds']
      # Bit-exact: parameters and the carried sampler state.
      test_utils.assert_trees_all_equal(delta[0].params, seeds[0].params)
      test_utils.assert_trees_all_equal(delta[0].aggregator_state.sampler,
                                        seeds[0].aggregator_state.sampler)
      extra = zo.sampler_bytes(n) if carry else 0
      self.assertEqual(float(delta[1]['upload_bytes_per_client']),
                       4 * (D * K + K) + extra)
      self.assertEqual(float(seeds[1]['upload_bytes_per_client']),
                       zo.seed_upload_bytes(S, 1))
      for _, metrics in results.values():
        self.assertEqual(float(metrics['downlink_bytes_per_client']),
                         4 * (D * K + K) + extra)
      self.assertGreater(float(optax.tree.norm(optax.tree.sub(
          seeds[0].params, params))), 0.)
      sampler = seeds[0].aggregator_state.sampler
      if carry:
        # 3 rounds of at most 4 local steps (S) carried over.
        self.assertEqual(int(sampler.count), 3 * S)
        self.assertEqual(sampler.scores.shape, (n,))
      else:
        self.assertIsNone(sampler)
    self.assertEqual(zo.seed_upload_bytes(S, 1), 8 + S * 5)
    self.assertEqual(zo.sampler_bytes(n), 4 * n + 12)

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
    mezo = optax.chain(zo.mezo(), optax.sgd(0.1))
    self.assertIsNone(zo.sampler_state(mezo.init(tiny_params())))

  def test_cnn_seed_uploads_are_over_1000x_smaller(self):
    model = models.create_model('cnn', num_classes=62)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                           train=False))['params']
    delta = zo.upload_bytes(shapes)
    self.assertGreater(zo.num_parameters(shapes), 1_000_000)
    self.assertGreater(delta / zo.seed_upload_bytes(100, 1), 1000)


if __name__ == '__main__':
  absltest.main()
