r"""Zeroth-order fine-tuning on a shifted task: FO SGD, MeZO, sparse, CurvZO.

An MLP pre-trained with SGD on digits 0-4 is fine-tuned on digits 5-9
relabelled 0-4 by each of `METHODS` from the same parameters and batches,
centralized (ONE client holding all the data, a round being --eval_every of
its steps; ``optax.sgd(1.0)`` on the server makes its parameters the new
ones) and federated (IID clients; ZO clients upload deltas or seeds), each
run through `training.run_rounds` into WORKDIR/<mode>-<method>-seed<s>/.
WORKDIR/summary.json: pre-training; per mode and method the final numbers,
steps to MeZO's final training loss, time per step; EMNIST-CNN upload bytes.
Plots: zo_{train_loss,test_accuracy}.png. benchmarks/probes/zo_step_times.py
times the methods' steps, interleaved.

  python -m experiments.zo_finetune --quick --workdir=/tmp/zo_quick
"""

import json
import math
import os
import statistics
import types

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._cli import fail
from experiments._cli import parse_flags
from fedjax_ext import algorithms, clients, core, data, models, training, zo
from fedjax_ext.training import _plots

METHODS = ('sgd', 'mezo', 'uniform_sparse', 'curvzo_fixed', 'curvzo')
MODES = ('centralized', 'federated')
QUICK = dict(hidden_sizes=['16'], pretrain_steps=50, steps=40, eval_every=20,
             rounds=4, local_steps=3, num_clients=6, clients_per_round=3)
SPEC = (  # (name, default, help[, choices]); integers >= 1 but the seed.
    ('workdir', None, 'Output directory.'), ('data_dir', None, 'TFDS dir.'),
    ('methods', list(METHODS), 'Methods.'), ('modes', list(MODES), 'Modes.'),
    ('seed', 0, 'Seed of everything.'), ('resume', False, 'Continue runs.'),
    ('quick', False, f'A tiny run: {QUICK}; explicit flags win.'),
    ('hidden_sizes', ['64', '64'], 'MLP hidden layer sizes.'),
    ('pretrain_steps', 400, 'SGD steps, digits 0-4.'),
    ('pretrain_lr', 0.1, 'Their rate.'), ('batch_size', 32, 'Batch size.'),
    ('steps', 4000, 'Centralized steps, a multiple of --eval_every.'),
    ('eval_every', 200, 'Evaluate every N steps (federated: rounds).'),
    ('sgd_lr', 0.05, 'SGD rate.'), ('zo_lr', 1e-3, 'Other ZO methods\' rate.'),
    ('method_lrs', ['mezo=0.002', 'uniform_sparse=0.00125'], 'METHOD=LR, '
     'selected on tuning seeds 10-12 (BUILD_NOTES); empty: --zo_lr for all.'),
    ('epsilon', 1e-3, 'ZO perturbation.'), ('num_directions', 1, 'ZO q.'),
    ('budget', 0.4, 'Sparse budget, in [0.1, 0.8] (curvzo: its start).'),
    ('score_rule', 'port', 'CurvZO score rule.', zo.SCORE_RULES),
    ('uniform_mix', 0., "CurvZO mix with uniform sampling, in [0, 1]."),
    ('rounds', 300, 'Federated rounds.'), ('num_clients', 20, 'Clients.'),
    ('clients_per_round', 5, 'Cohort size.'), ('local_steps', 10, 'Steps.'),
    ('upload', 'seeds', 'ZO client uploads.', zo.UPLOADS),
    ('weighting', 'examples_processed', 'Client weights (the default keeps '
     'the numbers of the pre-issue-10 script).', core.WEIGHTINGS),
    ('carry_sampler', True, 'Federated: the server carries the sparse ZO '
     'sampler state across rounds; false: cold every round.'))


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This script's flags, on `fv` (a test passes a fresh `FlagValues`)."""
  kw = dict(flag_values=fv)
  for name, default, help_, *choices in SPEC:
    if choices:
      flags.DEFINE_enum(name, default, choices[0], help_, **kw)
    elif isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_, **kw)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_,
                           lower_bound=int(name != 'seed'), **kw)
    else:
      {float: flags.DEFINE_float, list: flags.DEFINE_list}.get(
          type(default), flags.DEFINE_string)(name, default, help_, **kw)


def settings_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """The checked flag values as attributes (--quick fills the flags not
  given); a one-line `ConfigError` for bad values, before any output."""
  s = types.SimpleNamespace(**{name: fv[name].value for name, *_ in SPEC})
  vars(s).update({k: v for k, v in QUICK.items()
                  if s.quick and not fv[k].present})
  try:
    lrs = {m: float(v) for m, _, v in (e.partition('=') for e in s.method_lrs)}
  except ValueError:
    lrs = {'': 0.}  # Malformed: rejected below.
  for bad, message in (
      (not s.workdir, '--workdir is required'),
      *[(not v or not set(v) <= set(c), f'--{n} must be some of '
         f'{", ".join(c)}') for n, v, c in (('methods', s.methods, METHODS),
                                           ('modes', s.modes, MODES))],
      (not s.hidden_sizes or not all(h.isdigit() and int(h) > 0
                                     for h in s.hidden_sizes),
       '--hidden_sizes must be positive integers'),
      (not all(m in METHODS and 0 < r < math.inf for m, r in lrs.items()),
       f'--method_lrs must be METHOD=LR entries, LR > 0, METHOD one of '
       f'{", ".join(METHODS)}'),
      *[(not 0 < getattr(s, n) < math.inf, f'--{n} must be finite and > 0')
        for n in ('pretrain_lr', 'sgd_lr', 'zo_lr', 'epsilon')],
      (not 0.1 <= s.budget <= 0.8, '--budget must be in [0.1, 0.8]'),
      (not 0 <= s.uniform_mix <= 1, '--uniform_mix must be in [0, 1]'),
      (s.clients_per_round > s.num_clients,
       '--clients_per_round must be at most --num_clients'),
      (s.steps % s.eval_every, '--steps must be a multiple of --eval_every'),
      *[(getattr(s, n) > most, f'--{n} must be at most {most}') for n, most in
        (('batch_size', 4096), ('local_steps', 100_000), ('steps', 10**7),
         ('rounds', 10**7), ('num_clients', 10_000))]):
    if bad:
      raise training.ConfigError(f'{message}.')
  s.lrs = {m: lrs.get(m, s.sgd_lr if m == 'sgd' else s.zo_lr) for m in METHODS}
  s.hidden_sizes = tuple(map(int, s.hidden_sizes))
  return s


def run_one(s, mode, method, params, loss_fn, train, evaluators, log):
  """One method in one mode through `training.run_rounds`: its lines."""
  central, name = mode == 'centralized', f'{mode}-{method}-seed{s.seed}'
  kw = dict(weighting=s.weighting, execution='sequential')
  zo_kw = dict(epsilon=s.epsilon, num_directions=s.num_directions, key=s.seed)
  estimator = zo.mezo(**zo_kw) if method == 'mezo' else zo.sparse_zo(
      budget=s.budget, **zo_kw) if method == 'uniform_sparse' else zo.curvzo(
          budget=s.budget, score_rule=s.score_rule, uniform_mix=s.uniform_mix,
          adaptive_budget=method == 'curvzo', **zo_kw)
  algorithm = algorithms.fed_avg(
      loss_fn, optax.sgd(s.lrs[method]), optax.sgd(1.0), **kw,
      extra_metrics=lambda out, _, st: core.communication_metrics(
          out, st.params)) if method == 'sgd' else zo.zo_fed_avg(
              loss_fn, optax.chain(estimator, optax.sgd(s.lrs[method])),
              optax.sgd(1.0), upload='delta' if central else s.upload,
              carry_sampler=central or s.carry_sampler, **kw)
  steps = s.eval_every if central else 1  # Steps per round.
  parts = ([np.arange(len(train['y']))] if central else
           data.partition('iid', train, s.num_clients, seed=s.seed))
  ids = lambda r: np.zeros(1, np.int32) if central else data.sample_clients(
      s.num_clients, s.clients_per_round, seed=s.seed, round_num=r)
  cohorts = lambda r: data.pack_cohort(
      train, parts, ids(r), batch_size=s.batch_size, num_steps=(
          s.eval_every if central else s.local_steps), seed=s.seed, round_num=r)
  rounds, workdir = s.steps // steps if central else s.rounds, os.path.join(
      s.workdir, name)
  lines = training.run_rounds(  # A copy: it donates the state (params).
      algorithm, jax.tree.map(jnp.copy, params), num_clients=len(parts),
      cohorts=cohorts, rounds=rounds, key=jax.random.key(s.seed),
      workdir=workdir, evaluators=evaluators,
      eval_every=1 if central else s.eval_every, checkpoint_every=rounds,
      resume=s.resume and os.path.isdir(os.path.join(workdir, 'checkpoints')),
      config=dict(vars(s), mode=mode, method=method), title=name,
      log=lambda m: log(f'[{mode} {method}] {m}')).metrics
  for line in lines:
    line['step'] = line['round'] * steps
    if 'round_time_s' in line:
      line['s_per_step'] = line['round_time_s'] / steps
  return lines


def summarize(s, mode, runs):
  """Final numbers, steps to MeZO's final loss (/ MeZO's first hit, run)."""
  loss = lambda line: line.get('full_train_loss')
  ref = runs.get('mezo')
  target = loss(ref[-1]) if ref else None
  hit = lambda lines: next((l['step'] for l in lines if None not in (
      target, loss(l)) and loss(l) <= target), None)
  per_step = lambda lines: statistics.median(
      [l['s_per_step'] for l in lines if 's_per_step' in l] or [None])
  ratio = lambda a, b: a and b and a / b
  out = []
  for method, lines in runs.items():
    out.append(dict(mode=mode, method=method, learning_rate=s.lrs[method],
                    final_train_loss=loss(lines[-1]),
                    final_test_accuracy=lines[-1].get('test_accuracy'),
                    s_per_step=per_step(lines)))
    if ref:
      out[-1].update(
          mezo_final_train_loss=target, steps_to_mezo_final_loss=hit(lines),
          steps_ratio_vs_mezo=ratio(hit(lines), hit(ref)),
          steps_ratio_vs_mezo_run=ratio(hit(lines), ref[-1]['step']),
          step_time_ratio_vs_mezo=ratio(per_step(lines), per_step(ref)))
  return out


def run(s, log=print):
  """Pre-trains, runs every mode and method, summarizes: (runs, summary)."""
  ds = data.load_dataset('digits', data_dir=s.data_dir)
  task = lambda c, lo: dict(x=c['x'][(c['y'] >= lo) & (c['y'] < lo + 5)], y=(
      c['y'] - lo)[(c['y'] >= lo) & (c['y'] < lo + 5)].astype(np.int32))
  task_a, task_b = (dict(train=task(ds.train, lo), test=task(ds.test, lo))
                    for lo in (0, 5))  # Digits 0-4; 5-9 relabelled 0-4.
  model = models.create_model('mlp', num_classes=5, hidden_sizes=s.hidden_sizes)
  loss_fn, predict = (clients.classification_loss(model),
                      clients.predict_fn(model))
  train = task_a['train']  # Pre-training: SGD, batches drawn as before.
  idx = np.random.default_rng([s.seed, 1]).integers(
      0, len(train['y']), size=(s.pretrain_steps, s.batch_size))
  params = jax.jit(lambda p, b: clients.train_locally(
      p, b, jax.random.key(0), loss_fn=loss_fn, optimizer=optax.sgd(
          s.pretrain_lr))[0])(model.init(jax.random.key(s.seed), train['x'][
              :1], train=False)['params'], dict(x=train['x'][idx], y=train[
                  'y'][idx], mask=np.ones(idx.shape, np.float32)))
  evaluate = lambda part, name: training.classification_evaluator(
      predict, part, batch_size=1024, name=name)
  evaluators = [evaluate(task_b['test'], 'test'),
                evaluate(task_b['train'], 'full_train'),
                lambda p, st, _: {'budget': float(st.algorithm_state.budget)}
                if isinstance(st.algorithm_state, zo.SamplerState) else {}]
  pretrained = dict(num_parameters=zo.num_parameters(params),
                    **evaluate(task_a['test'], 'task_a_test')(params))
  for e in evaluators[:2]:
    pretrained.update({f'task_b_{k}': v for k, v in e(params).items()})
  log(f'pre-trained: {json.dumps(pretrained)}')
  runs, summaries = {}, []
  for mode in [m for m in MODES if m in s.modes]:
    runs[mode] = {m: run_one(s, mode, m, params, loss_fn, task_b['train'],
                             evaluators, log)
                  for m in METHODS if m in s.methods}
    summaries += summarize(s, mode, runs[mode])
  cnn = jax.eval_shape(lambda: models.create_model('cnn', num_classes=62).init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))['params']
  up = dict(delta_bytes=zo.upload_bytes(cnn), seed_bytes=zo.seed_upload_bytes(
      s.local_steps, s.num_directions), num_parameters=zo.num_parameters(cnn))
  summary = dict(pretrained=pretrained, summaries=summaries, settings=vars(s),
                 cnn_upload=dict(up, ratio=up['delta_bytes'] / up[
                     'seed_bytes']))
  with open(os.path.join(s.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  for key in ('full_train_loss', 'test_accuracy'):  # x: steps, rounds.
    _plots.plot_runs(
        {mode: {m: [[dict(l, round=l['step']) for l in lines]]
                for m, lines in r.items()} for mode, r in runs.items()},
        f'{s.workdir}/zo_{key.removeprefix("full_")}.png', key=key,
        title='ZO fine-tuning (centralized: x in steps)')
  log('\n'.join(map(json.dumps, summaries)))
  return runs, summary


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    run(settings_from_flags())
  except (training.ConfigError, data.DataError) as e:
    fail(str(e))
  except training.NonFiniteError as e:
    fail(str(e), status=1)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
