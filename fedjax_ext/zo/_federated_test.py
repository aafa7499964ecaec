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
    local, pgs, active, loss, _ = jax.jit(lambda p, b, k: zo.zo_train_locally(
        p, b, k, loss_fn=loss_fn, optimizer=tx))(params, batches, key)
    upload = zo.SeedUpload(seed=jax.random.key_data(key),
                           projected_grads=pgs, active=active)
    replayed = jax.jit(lambda p, u: zo.replay(p, u, optimizer=tx))(params,
                                                                   upload)
    test_utils.assert_trees_all_equal(local, replayed)
    np.testing.assert_array_equal(active, [True, True, True, False])
    self.assertTrue(np.isfinite(float(loss)))
    self.assertGreater(float(optax.tree.norm(optax.tree.sub(local, params))),
                       0.)

  def test_seed_uploads_match_delta_uploads_and_count_bytes(self):
    params, cohort, tx = tiny_params(), tiny_cohort(), optimizer()
    results = {}
    for upload in zo.UPLOADS:
      algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), upload=upload,
                                execution='sequential')
      apply = jax.jit(algorithm.apply)
      state = algorithm.init(params)
      for r in range(2):
        state, _, metrics = apply(state, (), tiny_cohort(r), jax.random.key(0))
      results[upload] = (state.params, metrics)
    test_utils.assert_trees_all_equal(results['delta'][0],
                                      results['seeds'][0])
    self.assertEqual(float(results['delta'][1]['upload_bytes_per_client']),
                     4 * (D * K + K))
    self.assertEqual(float(results['seeds'][1]['upload_bytes_per_client']),
                     zo.seed_upload_bytes(S, 1))
    self.assertEqual(zo.seed_upload_bytes(S, 1), 8 + S * 5)
    self.assertGreater(float(optax.tree.norm(optax.tree.sub(
        results['seeds'][0], params))), 0.)

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
