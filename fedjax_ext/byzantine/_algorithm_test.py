"""Robust training on the round's stages: flags in ``Cohort.info``, label
flipping, the attack transform, optimal attacks against the defence's
current state, worker momentum in the client store, hooks forwarded."""

from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext._src import test_utils

C, S, B, D, K = 6, 2, 4, 5, 3  # clients, steps, batch, features, classes.
BYZ = np.array([1, 4])


def toy_cohort(seed=0, ids=None):
  rng = np.random.default_rng(seed)
  ids = np.arange(C, dtype=np.int32) if ids is None else ids
  x = rng.normal(size=(C, S, B, D)).astype(np.float32)
  y = rng.integers(0, K, (C, S, B)).astype(np.int32)
  mask = np.ones((C, S, B), np.float32)
  mask[2, 1] = 0.  # One padded step.
  return core.Cohort(ids, {'x': x, 'y': y, 'mask': mask},
                     np.full((C,), S * B, np.float32))


def toy_problem():
  model = models.create_model('logistic', num_classes=K)
  params = model.init(jax.random.key(0), np.zeros((1, D), np.float32))
  return clients.classification_loss(model), params['params']


def run_rounds(algorithm, params, cohorts, num_clients=C,
               key=jax.random.key(1)):
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params),
                              num_clients)
  apply = jax.jit(algorithm.apply)
  history = []
  for cohort in cohorts:
    state, store, metrics = apply(state, store, cohort, key)
    history.append(metrics)
  return state, store, history


def client_updates(client_update, params, cohort, key=jax.random.key(1)):
  """The stacked outputs of `client_update` over the cohort."""
  keys = core.client_keys(key, jnp.int32(0), cohort.client_ids)
  fn = jax.vmap(client_update, in_axes=(None, None, 0, 0, 0))
  return fn(params, (), cohort.batches, keys, cohort.client_info())


class FlagsTest(absltest.TestCase):

  def test_mark_cohort_puts_the_flags_in_info_not_in_the_batches(self):
    cohort = toy_cohort()._replace(info={'rank': np.arange(C)})
    marked = byzantine.mark_cohort(cohort, BYZ)
    self.assertEqual(set(marked.batches), {'x', 'y', 'mask'})
    flags = marked.info[byzantine.BYZANTINE]
    self.assertEqual(flags.dtype, np.float32)
    np.testing.assert_array_equal(flags, np.isin(np.arange(C), BYZ))
    np.testing.assert_array_equal(marked.info['rank'], np.arange(C))
    np.testing.assert_array_equal(byzantine.cohort_flags(marked),
                                  np.isin(np.arange(C), BYZ))
    np.testing.assert_array_equal(byzantine.cohort_flags(cohort),
                                  np.zeros(C, bool))

  def test_client_reads_its_flag_from_info_and_flips_labels(self):
    loss_fn, params = toy_problem()
    cohort = byzantine.mark_cohort(toy_cohort(), BYZ)
    flipped = toy_cohort()
    flipped.batches['y'][BYZ] = K - 1 - flipped.batches['y'][BYZ]
    attacked = byzantine.byzantine_client(byzantine.sgd_gradient(loss_fn),
                                          flip_labels=True, num_classes=K)
    honest = byzantine.sgd_gradient(loss_fn)
    out = client_updates(attacked, params, cohort)
    test_utils.assert_trees_all_close(
        out.update, client_updates(honest, params, flipped).update)
    np.testing.assert_array_equal(out.metrics[byzantine.BYZANTINE],
                                  np.isin(np.arange(C), BYZ))
    # Without the column every client is honest.
    unmarked = client_updates(attacked, params, toy_cohort())
    test_utils.assert_trees_all_close(
        unmarked.update, client_updates(honest, params, toy_cohort()).update)
    np.testing.assert_array_equal(unmarked.metrics[byzantine.BYZANTINE], 0.)
    with self.assertRaisesRegex(ValueError, 'num_classes'):
      byzantine.byzantine_client(honest, flip_labels=True)

  def test_clients_report_examples_processed_and_pass_info_through(self):
    loss_fn, params = toy_problem()
    cohort = byzantine.mark_cohort(toy_cohort(), BYZ)
    out = client_updates(byzantine.sgd_gradient(loss_fn), params, cohort)
    np.testing.assert_array_equal(out.weight,
                                  cohort.batches['mask'].sum(axis=(1, 2)))
    seen = {}

    def spy(message, client_state, batches, key, info):
      seen.update(info)
      return byzantine.sgd_gradient(loss_fn)(message, client_state, batches,
                                             key, info)

    momentum = byzantine.worker_momentum(spy, 0.5)
    one = jax.tree.map(lambda v: v[0], cohort.batches)
    momentum(params, jax.tree.map(jnp.zeros_like, params), one,
             jax.random.key(0), {'num_examples': 8., 'byzantine': 1.})
    self.assertEqual(set(seen), {'num_examples', 'byzantine'})


class AttackTransformTest(absltest.TestCase):

  def outputs(self, seed=0):
    rng = np.random.default_rng(seed)
    update = {'u': jnp.asarray(rng.normal(size=(C, 4)) + 2., jnp.float32)}
    return core.ClientOutput(update=update, weight=jnp.ones(C),
                             client_state=(), metrics={})

  def server_state(self, aggregator, params, aggregator_state=None):
    if aggregator_state is None:
      aggregator_state = aggregator.init(params)
    return core.ServerState(params=params, opt_state=(),
                            aggregator_state=aggregator_state,
                            algorithm_state=(),
                            round=jnp.asarray(3, jnp.int32))

  def test_attack_reads_the_rows_from_cohort_info(self):
    outputs = self.outputs()
    cohort = byzantine.mark_cohort(toy_cohort(), BYZ)
    aggregator = aggregators.mean()
    state = self.server_state(aggregator, {'u': jnp.zeros(4)})
    transform = jax.jit(byzantine.attack_outputs(byzantine.sign_flip()))
    out = transform(outputs, state, cohort, jax.random.key(0)).update
    honest = np.delete(np.asarray(outputs.update['u']), BYZ, axis=0)
    np.testing.assert_allclose(np.delete(np.asarray(out['u']), BYZ, axis=0),
                               honest)
    np.testing.assert_allclose(out['u'][BYZ],
                               np.stack([-honest.mean(0)] * 2), rtol=1e-6)
    # No column: nobody is Byzantine, nothing changes.
    same = transform(outputs, state, toy_cohort(), jax.random.key(0))
    test_utils.assert_trees_all_equal(same.update, outputs.update)

  def test_aggregation_key_is_the_rounds_aggregation_stage_key(self):
    key, round_num = jax.random.key(7), jnp.int32(5)
    np.testing.assert_array_equal(
        jax.random.key_data(jax.random.fold_in(
            core.stage_key(key, round_num, 0), 1)),
        jax.random.key_data(core.stage_key(key, round_num, 1)))

  def test_optimal_attack_simulates_centered_clipping_from_its_center(self):
    cc = aggregators.centered_clipping(1.0)
    factors = (0.25, 0.5, 1., 2., 4., 8., 16.)
    outputs = self.outputs()
    params = {'u': jnp.zeros(4)}
    moved = aggregators.CenteredClippingState(
        center={'u': jnp.asarray(np.random.default_rng(0).normal(size=4)
                                 * 3, jnp.float32)})
    state = self.server_state(cc, params, moved)
    cohort = byzantine.mark_cohort(toy_cohort(), BYZ)
    key = jax.random.key(1)
    byz = byzantine.cohort_flags(cohort)
    context = byzantine.RoundContext(
        aggregator=cc, server_state=state,
        key=core.stage_key(key, state.round, 1),
        client_info=cohort.client_info())
    for attack, fixed in ((byzantine.optimal_alie(cc, factors),
                           lambda z: byzantine.alie(z)),
                          (byzantine.optimal_ipm(cc, factors),
                           byzantine.inner_product_manipulation)):
      transform = jax.jit(byzantine.attack_outputs(attack, cc))
      attacked = transform(outputs, state, cohort,
                           core.stage_key(key, state.round, 0))
      factor = float(attacked.metrics['attack_factor'][0])
      # The simulated aggregate IS the server's aggregation of the
      # attacked updates (same state, params and extra arguments) ...
      real, _ = core.aggregate_outputs(cc, attacked, state, cohort,
                                       core.stage_key(key, state.round, 1))
      simulated = byzantine.simulate_aggregation(
          cc, attacked.update, attacked.weight, context)
      test_utils.assert_trees_all_close(simulated, real, rtol=1e-6)
      # ... and not the one from CC's initial center (zeros).
      from_init = byzantine.simulate_aggregation(cc, attacked.update,
                                                 attacked.weight)
      self.assertGreater(float(jnp.max(jnp.abs(from_init['u']
                                                - real['u']))), 1e-3)
      # The factor is the argmax of the real deviation over the grid.
      mu = np.delete(np.asarray(outputs.update['u']), BYZ, axis=0).mean(0)

      def real_deviation(f):
        corrupted = fixed(f).corrupt(outputs.update, byz, outputs.weight,
                                     key)
        out, _ = cc.update(corrupted, moved, params, weights=outputs.weight)
        return float(np.sum((np.asarray(out['u']) - mu) ** 2))

      deviations = [real_deviation(f) for f in factors]
      self.assertEqual(factor, factors[int(np.argmax(deviations))])
    # From the current center IPM picks the largest factor; the initial
    # center (a stale simulation) would pick a small one.
    ipm = byzantine.optimal_ipm(cc, factors)
    self.assertEqual(float(ipm.choose_factor(outputs.update, byz,
                                             outputs.weight, key, context)),
                     16.)
    self.assertLess(float(ipm.choose_factor(outputs.update, byz,
                                            outputs.weight, key)), 1.)

  def test_optimal_attack_of_another_rule_starts_from_its_init(self):
    cc = aggregators.centered_clipping(1.0)
    other = aggregators.centered_clipping(1.0)  # Same rule, not in use.
    outputs = self.outputs()
    moved = aggregators.CenteredClippingState(center={'u': jnp.ones(4) * 5})
    state = self.server_state(cc, {'u': jnp.zeros(4)}, moved)
    context = byzantine.RoundContext(cc, state, jax.random.key(0),
                                     {'num_examples': jnp.ones(C)})
    test_utils.assert_trees_all_close(
        byzantine.simulate_aggregation(other, outputs.update,
                                       outputs.weight, context),
        byzantine.simulate_aggregation(other, outputs.update,
                                       outputs.weight))


class RobustAlgorithmTest(absltest.TestCase):

  def test_no_attack_and_mean_equals_fed_avg_bit_for_bit(self):
    loss_fn, params = toy_problem()
    execution = core.Execution(strategy='vmap', unroll=1)
    plain = algorithms.fed_avg(loss_fn, optax.sgd(0.3), optax.sgd(1.0),
                               execution=execution)
    robust = byzantine.robust_algorithm(
        loss_fn, aggregators.mean(), optax.sgd(1.0), mode='fedavg',
        client_optimizer=optax.sgd(0.3), weighting='num_examples',
        execution=execution)
    want, _, want_m = run_rounds(plain, params,
                                 [toy_cohort(r) for r in range(3)])
    got, _, got_m = run_rounds(
        robust, params,
        [byzantine.mark_cohort(toy_cohort(r), BYZ) for r in range(3)])
    test_utils.assert_trees_all_equal(want.params, got.params)
    self.assertEqual(float(got_m[-1]['train_loss']),
                     float(want_m[-1]['train_loss']))
    self.assertEqual(int(got_m[-1]['byzantine_clients']), 2)

  def test_momentum_lives_in_the_client_store(self):
    loss_fn, params = toy_problem()
    beta, num_clients = 0.75, 9
    ids = np.array([0, 1, 3, 4, 7, 8], np.int32)  # 1 and 4 Byzantine.
    cohort = byzantine.mark_cohort(toy_cohort(ids=ids), BYZ)
    algorithm = byzantine.robust_algorithm(
        loss_fn, aggregators.trimmed_mean(1), optax.sgd(0.2), mode='dsgd',
        momentum=beta)
    _, store, history = run_rounds(algorithm, params, [cohort],
                                   num_clients=num_clients)
    grads = client_updates(byzantine.sgd_gradient(loss_fn), params,
                           cohort).update
    expected = jax.tree.map(
        lambda g: jnp.zeros((num_clients,) + g.shape[1:]).at[ids].set(
            (1 - beta) * g), grads)
    test_utils.assert_trees_all_close(store, expected, rtol=1e-5, atol=1e-7)
    self.assertEqual(int(history[0]['byzantine_clients']), 2)

  def test_every_hook_is_forwarded(self):
    loss_fn, params = toy_problem()
    cohort = byzantine.mark_cohort(toy_cohort(), BYZ)
    byz = np.isin(np.arange(C), BYZ)

    def ones(outputs, state, cohort, key):  # Runs before the attack.
      del state, cohort, key
      return outputs._replace(update=jax.tree.map(jnp.ones_like,
                                                  outputs.update))

    def extra(outputs, aggregate, state):
      del aggregate, state
      return {'weight_sum': jnp.sum(outputs.weight),
              'first_leaf': jax.tree.leaves(outputs.update)[0]}

    for weighting, total in (('uniform', C),
                             ('num_examples', C * S * B),
                             ('examples_processed', C * S * B - B)):
      with self.subTest(weighting), mock.patch.object(
          clients, 'local_sgd', wraps=clients.local_sgd) as local_sgd:
        algorithm = byzantine.robust_algorithm(
            loss_fn, aggregators.mean(), optax.sgd(1.0), mode='fedavg',
            client_optimizer=optax.sgd(0.3), attack=byzantine.sign_flip(),
            weighting=weighting, transform_outputs=ones, extra_metrics=extra,
            execution=core.Execution(strategy='sequential', unroll=2))
        self.assertEqual(local_sgd.call_args.kwargs['unroll'], 2)
        _, _, (metrics,) = run_rounds(algorithm, params, [cohort])
      self.assertEqual(float(metrics['weight_sum']), total)
      leaf = np.asarray(metrics['first_leaf'])
      np.testing.assert_array_equal(leaf[~byz], 1.)
      np.testing.assert_array_equal(leaf[byz], -1.)  # -mean of the ones.
      self.assertEqual(int(metrics['byzantine_clients']), 2)
      self.assertEqual(int(metrics['rejected_updates']), 0)

  def test_bad_arguments(self):
    loss_fn, _ = toy_problem()
    with self.assertRaisesRegex(ValueError, 'valid choices'):
      byzantine.robust_algorithm(loss_fn, aggregators.mean(), optax.sgd(1.),
                                 client_optimizer=optax.sgd(.1),
                                 weighting='examples')
    with self.assertRaisesRegex(ValueError, 'client_optimizer'):
      byzantine.robust_algorithm(loss_fn, aggregators.mean(), optax.sgd(1.),
                                 mode='dsgd', client_optimizer=optax.sgd(.1))
    with self.assertRaisesRegex(ValueError, 'client_optimizer'):
      byzantine.robust_algorithm(loss_fn, aggregators.mean(), optax.sgd(1.))
    with self.assertRaisesRegex(ValueError, 'mode'):
      byzantine.robust_algorithm(loss_fn, aggregators.mean(), optax.sgd(1.),
                                 mode='sgd')
    with self.assertRaisesRegex(ValueError, 'factors'):
      byzantine.optimal_alie(aggregators.mean(), (1., float('nan')))


if __name__ == '__main__':
  absltest.main()
