"""Tests of federated ZO: exact server-side seed replay and upload bytes."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext import zo
from fedjax_ext._src import test_utils
from fedjax_ext.zo import _testing

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


def run_rounds(algorithm, params, num_rounds=3):
  apply = jax.jit(algorithm.apply)
  state = algorithm.init(params)
  for r in range(num_rounds):
    state, _, metrics = apply(state, (), tiny_cohort(r), jax.random.key(0))
  return state, metrics


def moved(tree, reference):
  return float(optax.tree.norm(optax.tree.sub(tree, reference)))


class FederatedZOTest(parameterized.TestCase):

  def test_replay_step_from_scalars_is_exact(self):
    params, obj_fn = _testing.small_problem()
    tx = optax.chain(zo.curvzo(num_directions=2), optax.sgd(0.05))
    state = tx.init(params)
    live, live_state, pg, _ = jax.jit(lambda p, s: zo.zo_step(
        p, s, optimizer=tx, obj_fn=obj_fn))(params, state)
    replayed, replay_state = jax.jit(lambda p, s, g: zo.replay_step(
        p, s, g, optimizer=tx))(params, state, pg)
    test_utils.assert_trees_all_equal(live, replayed)
    test_utils.assert_trees_all_equal(live_state, replay_state)
    self.assertGreater(moved(live, params), 0.)

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
      self.assertEqual(result.projected_grads.shape, (S, 1))
      self.assertEqual(float(result.num_examples), 3 * B)
      self.assertTrue(np.isfinite(float(result.loss)))
      self.assertGreater(moved(result.params, params), 0.)
    # The warm start was used: 3 active steps on top of count 5.
    self.assertEqual(int(final.count), 8)

  def test_replay_transform_matches_every_client(self):
    params, cohort, tx = tiny_params(), tiny_cohort(), optimizer()
    alg_init = zo.init_sampler(tx)
    state = core.ServerState(params=params, opt_state=(),
                             aggregator_state=(),
                             algorithm_state=alg_init(params),
                             round=jnp.zeros((), jnp.int32))
    message = zo.zo_message(state)
    keys = core.client_keys(jax.random.key(3), state.round,
                            cohort.client_ids)
    run = lambda upload: jax.jit(lambda m, k: core.run_clients(
        zo.zo_local(loss_fn, tx, upload=upload), m, jnp.zeros((C,)), cohort,
        k, 'sequential'))(message, keys)
    delta, seeds = run('delta'), run('seeds')
    self.assertIsInstance(seeds.update, zo.SeedUpload)
    self.assertEqual(seeds.aux, ())
    replayed = jax.jit(lambda o, s: zo.seed_replay_outputs(
        tx, execution='sequential')(o, s, cohort, jax.random.key(0)))(
            seeds, state)
    # Per client, bit for bit: the pseudo-gradient and the final sampler.
    test_utils.assert_trees_all_equal(replayed.update, delta.update)
    test_utils.assert_trees_all_equal(replayed.aux, delta.aux)
    test_utils.assert_trees_all_equal(replayed.weight, delta.weight)
    # The bytes each client sent, recorded before the upload was replaced.
    np.testing.assert_array_equal(
        replayed.metrics['upload_bytes_per_client'],
        [zo.seed_upload_bytes(S, 1)] * C)
    self.assertNotIn('upload_bytes_per_client', seeds.metrics)
    np.testing.assert_array_equal(delta.weight, [S * B, S * B, 3 * B])
    with self.assertRaisesRegex(TypeError, 'SeedUpload'):
      zo.seed_replay_outputs(tx)(delta, state, cohort, jax.random.key(0))

  def test_seed_uploads_match_delta_uploads_and_count_bytes(self):
    params, tx = tiny_params(), optimizer()
    n = zo.num_blocks(params)
    for carry in (True, False):
      results = {}
      for upload in zo.UPLOADS:
        algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), upload=upload,
                                  carry_sampler=carry, execution='sequential')
        results[upload] = run_rounds(algorithm, params)
      delta, seeds = results['delta'], results['seeds']
      # Bit-exact: parameters and the carried sampler state.
      test_utils.assert_trees_all_equal(delta[0].params, seeds[0].params)
      test_utils.assert_trees_all_equal(delta[0].algorithm_state,
                                        seeds[0].algorithm_state)
      extra = zo.sampler_bytes(n) if carry else 0
      self.assertEqual(float(delta[1]['upload_bytes_per_client']),
                       4 * (D * K + K) + extra)
      self.assertEqual(float(seeds[1]['upload_bytes_per_client']),
                       zo.seed_upload_bytes(S, 1))
      for _, metrics in results.values():
        self.assertEqual(float(metrics['downlink_bytes_per_client']),
                         4 * (D * K + K) + extra)
      self.assertGreater(moved(seeds[0].params, params), 0.)
    self.assertEqual(zo.seed_upload_bytes(S, 1), 8 + S * 5)
    self.assertEqual(zo.sampler_bytes(n), 4 * n + 12)

  def test_sampler_lives_in_algorithm_state(self):
    params, tx = tiny_params(), optimizer()
    n = zo.num_blocks(params)
    for upload in zo.UPLOADS:
      algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), upload=upload,
                                execution='sequential')
      initial = algorithm.init(params)
      self.assertEqual(initial.aggregator_state, ())
      test_utils.assert_trees_all_equal(initial.algorithm_state,
                                        zo.sampler_state(tx.init(params)))
      state, _ = run_rounds(algorithm, params)
      self.assertEqual(state.aggregator_state, ())
      sampler = state.algorithm_state
      self.assertIsInstance(sampler, zo.SamplerState)
      # 3 rounds of at most 4 local steps (S) carried over.
      self.assertEqual(int(sampler.count), 3 * S)
      self.assertEqual(sampler.scores.shape, (n,))
      self.assertGreater(moved(sampler.scores, initial.algorithm_state.scores),
                         0.)
      message = zo.zo_message(state)
      test_utils.assert_trees_all_equal(message.sampler, sampler)
    # Nothing carried: no sampler anywhere, the message is the parameters.
    for tx_, carry in ((tx, False), (optax.chain(zo.mezo(), optax.sgd(.1)),
                                     True)):
      algorithm = zo.zo_fed_avg(loss_fn, tx_, optax.sgd(1.0),
                                carry_sampler=carry, execution='sequential')
      state, _ = run_rounds(algorithm, params, num_rounds=1)
      self.assertEqual(state.algorithm_state, ())
      if carry:
        self.assertIsNone(zo.zo_message(state).sampler)

  def test_upload_bytes_exact_with_zero_weights(self):
    params, tx = tiny_params(), optimizer()
    cohort = tiny_cohort()
    empty = cohort._replace(batches=dict(
        cohort.batches, mask=jnp.zeros_like(cohort.batches['mask'])))
    for upload, sent in (('seeds', zo.seed_upload_bytes(S, 1)),
                         ('delta', 4 * (D * K + K)
                          + zo.sampler_bytes(zo.num_blocks(params)))):
      algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), upload=upload,
                                execution='sequential')
      apply = jax.jit(algorithm.apply)
      state = algorithm.init(params)
      for batch in (cohort, empty):  # Weights [20, 20, 15], then all 0.
        state, _, metrics = apply(state, (), batch, jax.random.key(0))
        self.assertEqual(float(metrics['upload_bytes_per_client']), sent)
      self.assertEqual(float(metrics['cohort_weight']), 0.)

  @parameterized.product(upload=zo.UPLOADS)
  def test_robust_aggregator_and_hooks_compose(self, upload):
    params, tx = tiny_params(), optimizer()
    seen = {}

    def transform(outputs, state, cohort, key):
      del state, cohort, key
      seen['update'] = outputs.update  # After the replay: pseudo-gradients.
      return outputs

    def extra(outputs, aggregate, state):
      del outputs, state
      return {'aggregate_norm': optax.tree.norm(aggregate)}

    algorithm = zo.zo_fed_avg(
        loss_fn, tx, optax.sgd(1.0), upload=upload,
        aggregator=aggregators.coordinate_median(), weighting='uniform',
        transform_outputs=transform, extra_metrics=extra,
        execution=core.Execution(strategy='sequential', unroll=2))
    state, metrics = run_rounds(algorithm, params)
    self.assertEqual(jax.tree.structure(seen['update']),
                     jax.tree.structure(params))
    self.assertGreater(moved(state.params, params), 0.)
    self.assertIsInstance(state.algorithm_state, zo.SamplerState)
    self.assertEqual(int(state.algorithm_state.count), 3 * S)
    for name in ('aggregate_norm', 'upload_bytes_per_client',
                 'downlink_bytes_per_client', 'train_loss', 'local_steps'):
      self.assertTrue(np.isfinite(float(metrics[name])), name)
    if upload == 'seeds':
      self.assertEqual(float(metrics['upload_bytes_per_client']),
                       zo.seed_upload_bytes(S, 1))
      # The same median of the same (replayed) deltas as 'delta' mode.
      delta_alg = zo.zo_fed_avg(
          loss_fn, tx, optax.sgd(1.0), upload='delta',
          aggregator=aggregators.coordinate_median(), weighting='uniform',
          execution='sequential')
      delta_state, _ = run_rounds(delta_alg, params)
      test_utils.assert_trees_all_equal(delta_state.params, state.params)

  def test_weighting_and_errors(self):
    params, tx = tiny_params(), optimizer()
    states = {}
    for weighting in core.WEIGHTINGS:
      algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0),
                                weighting=weighting, execution='sequential')
      states[weighting], _ = run_rounds(algorithm, params, num_rounds=1)
    # Client 2 processed 3 batches of its 4: n_k differs from processed.
    self.assertGreater(moved(states['num_examples'].params,
                             states['examples_processed'].params), 0.)
    # Every client has n_k = S B: 'num_examples' is 'uniform' here.
    test_utils.assert_trees_all_close(states['num_examples'].params,
                                      states['uniform'].params)
    with self.assertRaisesRegex(ValueError, 'valid choices: delta'):
      zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), upload='grads')
    with self.assertRaisesRegex(ValueError, 'weighting'):
      zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), weighting='examples')
    with self.assertRaisesRegex(ValueError, 'chunk_size'):
      zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0), execution='chunked')

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
