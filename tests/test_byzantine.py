"""Byzantine robustness end to end: attacks, momentum, DSGD, the round,
the sweep of `experiments.byzantine` (its --quick mode, in-process) and the
quadratic probe."""

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext import training
from fedjax_ext._src import test_utils

from _cli_runner import run_module
from benchmarks.probes import byzantine_quadratic
from experiments import byzantine as experiment


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


def toy_model():
  model = models.create_model('logistic', num_classes=K)
  params = model.init(jax.random.key(0), np.zeros((1, D), np.float32))
  return model, params['params']


def run_rounds(algorithm, params, cohorts, key=jax.random.key(1)):
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params), C)
  apply = jax.jit(algorithm.apply)
  history = []
  for cohort in cohorts:
    state, store, metrics = apply(state, store, cohort, key)
    history.append(metrics)
  return state, store, history


# ---------------------------------------------------------------------------
# Attacks, on hand-checkable stacked updates.
# ---------------------------------------------------------------------------


def stacked():
  u = jnp.arange(12., dtype=jnp.float32).reshape(4, 3)  # rows: clients.
  return {'u': u}, jnp.array([False, False, True, True]), jnp.ones(4)


def test_omniscient_attacks_use_honest_statistics():
  updates, byz, w = stacked()
  honest = np.array([[0., 1, 2], [3, 4, 5]])
  mu, sd = honest.mean(0), honest.std(0)
  key = jax.random.key(0)
  cases = {
      'sign_flip': (byzantine.sign_flip(), -mu),
      'alie': (byzantine.alie(z=1.5), mu + 1.5 * sd),
      'ipm': (byzantine.inner_product_manipulation(0.5), -0.5 * mu),
      'mimic': (byzantine.mimic(), honest[0]),
  }
  for name, (attack, expected) in cases.items():
    out = jax.jit(attack.corrupt)(updates, byz, w, key)['u']
    np.testing.assert_allclose(out[:2], honest, err_msg=name)
    np.testing.assert_allclose(out[2:], np.stack([expected] * 2), rtol=1e-6,
                               err_msg=name)


def test_noise_and_non_finite_attacks_touch_only_byzantine_rows():
  updates, byz, w = stacked()
  key = jax.random.key(0)
  out = byzantine.gaussian(2.0).corrupt(updates, byz, w, key)['u']
  np.testing.assert_array_equal(out[:2], updates['u'][:2])
  assert not np.allclose(out[2], out[3])  # Independent noise per client.
  for value, check in (('nan', np.isnan), ('inf', np.isposinf)):
    out = byzantine.non_finite(value).corrupt(updates, byz, w, key)['u']
    assert check(out[2:]).all() and np.isfinite(out[:2]).all()


def test_alie_default_z_and_byzantine_ids():
  # Baruch et al.: n=20, b=4 -> s=7, z = Phi^-1(13/20).
  np.testing.assert_allclose(byzantine.alie_z(20, 4), 0.38532, atol=1e-4)
  small = byzantine.byzantine_ids(20, 0.1, seed=3)
  large = byzantine.byzantine_ids(20, 0.2, seed=3)
  assert len(small) == 2 and len(large) == 4
  assert set(small) <= set(large)  # Nested across fractions.
  with pytest.raises(ValueError, match='0.5'):
    byzantine.byzantine_ids(20, 0.5, seed=0)
  with pytest.raises(ValueError, match='valid choices'):
    byzantine.create_attack('nope')


def deviation(aggregator, updates, byz, w):
  out, _ = aggregator.update(updates, aggregator.init(None), weights=w)
  mu = np.asarray(updates['u'])[~np.asarray(byz)].mean(0)
  return float(np.linalg.norm(np.asarray(out['u']) - mu))


def test_optimal_attacks_deviate_at_least_as_much_as_fixed_factors():
  rng = np.random.default_rng(0)
  honest = rng.normal(size=(8, 5)) + 1.
  updates = {'u': jnp.asarray(np.concatenate([honest, np.zeros((2, 5))]),
                              jnp.float32)}
  byz = jnp.asarray([False] * 8 + [True] * 2)
  w = jnp.ones(10)
  key = jax.random.key(0)
  factors = (0.5, 1., 1.5, 2., 4., 8.)
  for aggregator in (aggregators.mean(), aggregators.trimmed_mean(2),
                     aggregators.coordinate_median(), aggregators.krum(2)):
    for optimal, fixed in (
        (byzantine.optimal_alie(aggregator, factors),
         [byzantine.alie(z) for z in (None,) + factors]),
        (byzantine.optimal_ipm(aggregator, factors),
         [byzantine.inner_product_manipulation(e) for e in factors])):
      best = deviation(aggregator, jax.jit(optimal.corrupt)(
          updates, byz, w, key), byz, w)
      for attack in fixed:
        other = deviation(aggregator, attack.corrupt(updates, byz, w, key),
                          byz, w)
        assert best >= other * (1 - 1e-5) - 1e-6, (aggregator, best, other)
  # Against the mean the deviation grows with z: the largest factor wins.
  chosen = byzantine.optimal_alie(aggregators.mean(), factors).choose_factor(
      updates, byz, w, key)
  assert float(chosen) == 8.
  with pytest.raises(TypeError):
    byzantine.create_attack('alie_optimal')  # Needs aggregator=.


def test_optimal_attack_reports_its_factor_in_the_round():
  model, params = toy_model()
  loss_fn = clients.classification_loss(model)
  cohorts = [byzantine.mark_cohort(toy_cohort(r), BYZ) for r in range(2)]
  aggregator = aggregators.trimmed_mean(1)
  robust = byzantine.robust_algorithm(
      loss_fn, aggregator, optax.sgd(0.1), mode='dsgd',
      attack=byzantine.create_attack('alie_optimal', aggregator=aggregator,
                                     factors=(0.5, 2., 16.)))
  _, _, history = run_rounds(robust, params, cohorts)
  for metrics in history:
    assert float(metrics['attack_factor']) in (0.5, 2., 16.)


# ---------------------------------------------------------------------------
# The round.
# ---------------------------------------------------------------------------


def test_no_attack_and_mean_equals_fedavg_bit_for_bit():
  model, params = toy_model()
  loss_fn = clients.classification_loss(model)
  cohorts = [byzantine.mark_cohort(toy_cohort(r), BYZ) for r in range(3)]
  plain = algorithms.fed_avg(loss_fn, optax.sgd(0.3), optax.sgd(1.0))
  robust = byzantine.robust_algorithm(
      loss_fn, aggregators.mean(), optax.sgd(1.0), mode='fedavg',
      client_optimizer=optax.sgd(0.3), attack=None,
      weighting='num_examples')  # fed_avg's default.
  plain_cohorts = [toy_cohort(r) for r in range(3)]
  want, _, want_m = run_rounds(plain, params, plain_cohorts)
  got, _, got_m = run_rounds(robust, params, cohorts)
  test_utils.assert_trees_all_equal(want.params, got.params)
  assert float(got_m[-1]['train_loss']) == float(want_m[-1]['train_loss'])
  assert int(got_m[-1]['byzantine_clients']) == 2  # Flagged, yet honest.


def test_non_finite_attack_never_leaks_and_is_counted():
  # Inf and overflow are covered per aggregator by the compliance suite.
  value = 'nan'
  model, params = toy_model()
  loss_fn = clients.classification_loss(model)
  cohorts = [byzantine.mark_cohort(toy_cohort(r), BYZ) for r in range(2)]
  robust = byzantine.robust_algorithm(
      loss_fn, aggregators.process(aggregators.nnm(2),
                                   aggregators.trimmed_mean(2)),
      optax.sgd(1.0), mode='fedavg', client_optimizer=optax.sgd(0.3),
      attack=byzantine.non_finite(value), momentum=0.5)
  state, store, history = run_rounds(robust, params, cohorts)
  test_utils.assert_tree_all_finite(state.params)
  test_utils.assert_tree_all_finite(store)  # Momenta are honest values.
  assert [int(m['rejected_updates']) for m in history] == [2, 2]
  assert all(np.isfinite(float(m['update_norm'])) for m in history)
  # The guarded mean is safe too; the plain mean is not.
  guarded = byzantine.robust_algorithm(
      loss_fn, aggregators.mean(reject_non_finite=True), optax.sgd(1.0),
      mode='fedavg', client_optimizer=optax.sgd(0.3),
      attack=byzantine.non_finite(value))
  test_utils.assert_tree_all_finite(
      run_rounds(guarded, params, cohorts)[0].params)
  plain = byzantine.robust_algorithm(
      loss_fn, aggregators.mean(), optax.sgd(1.0), mode='fedavg',
      client_optimizer=optax.sgd(0.3), attack=byzantine.non_finite(value))
  assert not bool(core.tree_all_finite(
      run_rounds(plain, params, cohorts)[0].params))


def test_dsgd_with_momentum_matches_a_hand_computation():
  model, params = toy_model()
  loss_fn = clients.classification_loss(model)
  beta, gamma = 0.75, 0.2
  algorithm = byzantine.robust_algorithm(
      loss_fn, aggregators.mean(), optax.sgd(gamma), mode='dsgd',
      momentum=beta)
  cohorts = [toy_cohort(r) for r in range(2)]
  state, store, _ = run_rounds(algorithm, params, cohorts)

  def grads(p, cohort):
    def one(c):
      batch = {k: v[c].reshape((S * B,) + v.shape[3:])
               for k, v in cohort.batches.items()}
      return jax.grad(lambda q: loss_fn(q, batch, jax.random.key(0))[0])(p)
    return [one(c) for c in range(C)]

  m = [jax.tree.map(jnp.zeros_like, params)] * C
  p = params
  for cohort in cohorts:
    g = grads(p, cohort)
    m = [jax.tree.map(lambda a, b: beta * a + (1 - beta) * b, mi, gi)
         for mi, gi in zip(m, g)]
    mean = jax.tree.map(lambda *xs: sum(xs) / C, *m)
    p = jax.tree.map(lambda a, b: a - gamma * b, p, mean)
  test_utils.assert_trees_all_close(state.params, p, rtol=1e-5, atol=1e-6)
  test_utils.assert_trees_all_close(
      jax.tree.map(lambda x: x[3], store), m[3], rtol=1e-5, atol=1e-6)


def test_label_flip_trains_byzantine_clients_on_flipped_labels():
  model, params = toy_model()
  loss_fn = clients.classification_loss(model)
  cohort = byzantine.mark_cohort(toy_cohort(), BYZ)
  flipped = toy_cohort()
  flipped.batches['y'][BYZ] = K - 1 - flipped.batches['y'][BYZ]

  def updates(algorithm, cohort):
    keys = core.client_keys(jax.random.key(1), jnp.int32(0),
                            cohort.client_ids)
    fn = jax.vmap(algorithm, in_axes=(None, None, 0, 0, 0))
    return fn(params, (), cohort.batches, keys, cohort.client_info()).update

  attacked = byzantine.byzantine_client(byzantine.sgd_gradient(loss_fn),
                                        flip_labels=True, num_classes=K)
  honest = byzantine.sgd_gradient(loss_fn)
  test_utils.assert_trees_all_close(updates(attacked, cohort),
                                    updates(honest, flipped))


def quick_settings(*args):
  fv = flags.FlagValues()
  experiment.define_flags(fv)
  fv(['byzantine', '--quick', *args])
  return experiment.settings_from_flags(fv)


def test_experiment_quick_in_process(tmp_path, data_dir):
  s = quick_settings(f'--workdir={tmp_path}', f'--data_dir={data_dir}')
  lines = experiment.run(s, log=lambda _: None)
  # 1 dataset x 2 aggregators x 2 attacks x 2 fractions x 2 momenta.
  assert len(lines) == 16
  cell = {(l['aggregator'], l['attack'], l['fraction'], l['momentum']): l
          for l in lines}
  for fraction, beta in [(f, m) for f in (0.1, 0.2) for m in (0., 0.9)]:
    # The plain mean lets NaN through (its run stops); NNM + TM rejects
    # every Byzantine update of every round and stays finite.
    assert not cell[('mean', 'nan', fraction, beta)]['finite']
    robust = cell[('nnm_trimmed_mean', 'nan', fraction, beta)]
    assert robust['finite'] and robust['byzantine'] == round(20 * fraction)
    assert robust['rejected_updates'] == robust['byzantine'] * s.rounds
    # The optimal ALIE drives the mean to the largest z of the grid and
    # collapses it; against NNM + TM it picks a moderate z.
    mean = cell[('mean', 'alie_optimal', fraction, beta)]
    nnm = cell[('nnm_trimmed_mean', 'alie_optimal', fraction, beta)]
    assert mean['median_attack_factor'] == pytest.approx(32.)
    assert 0 < nnm['median_attack_factor'] < 32.
    assert mean['test_accuracy'] < 0.1 < nnm['test_accuracy']
    if beta == 0.:
      assert nnm['test_accuracy'] > 0.5
  for name in ('results.jsonl', 'table.md', 'heatmap.png'):
    assert (tmp_path / name).stat().st_size > 0
  assert '| mean | nan | 0.3 |' in (tmp_path / 'table.md').read_text()
  run_dir = tmp_path / 'digits' / 'nnm_trimmed_mean-alie_optimal-f0.2-m0.9'
  assert (run_dir / 'metrics.jsonl').stat().st_size > 0
  # Rerunning into the same workdir needs --resume, which reuses the
  # finished runs (and reruns the diverged ones): the same cells.
  with pytest.raises(training.ConfigError, match='--resume'):
    experiment.run(s, log=lambda _: None)
  cell = next(l for l in lines if l.get('test_accuracy') is not None)
  finished = [l for l in lines if l['aggregator'] == cell['aggregator']
              and l['attack'] == cell['attack']]
  again = experiment.run(quick_settings(
      f'--workdir={tmp_path}', f'--data_dir={data_dir}', '--resume',
      f'--aggregators={cell["aggregator"]}', f'--attacks={cell["attack"]}'),
                         log=lambda _: None)
  assert again == finished


def test_experiment_quick_lets_explicit_flags_win():
  s = quick_settings('--workdir=/nonexistent', '--rounds=2',
                     '--attacks=none')
  assert (s.rounds, s.attacks, s.datasets) == (2, ['none'], ['digits'])
  assert s.fractions == [0.1, 0.2]


def test_experiment_bad_flag_exits_2(tmp_path):
  bad = run_module('experiments.byzantine', '--attacks=oops',
                   f'--workdir={tmp_path}')
  assert bad.returncode == 2
  assert bad.stderr.strip().startswith('error:') and 'sign_flip' in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


def test_quadratic_probe_floors(tmp_path):
  lines = byzantine_quadratic.run(str(tmp_path), names=('trimmed_mean',),
                                  rounds=50, seeds=1)
  assert len(lines) == 20  # (5 G2 + 5 sigma2 points) x 2 momenta.
  floors = {(l['G2'], l['sigma2'], l['momentum']): l['floor'] for l in lines}
  assert all(np.isfinite(v) and v > 0 for v in floors.values())
  # Without momentum the floor grows with heterogeneity and with noise.
  assert floors[(16., 1., 0.)] > floors[(0., 1., 0.)]
  assert floors[(1., 16., 0.)] > floors[(1., 0., 0.)]
  for name in ('quadratic.jsonl', 'quadratic.png'):
    assert (tmp_path / name).stat().st_size > 0
