r"""Byzantine robustness sweep: aggregator x attack x worker momentum.

The experiments of ../shared/methods/byzantine_split_moe_satellite.md (1.8)
after Ruan, Wang and Liu, arXiv 2604.10179 (2026), at CPU scale: DSGD (one
gradient per round, every client every round; ``--mode=fedavg``: local
epochs) of a logistic regression on ``digits`` (Dirichlet clients) and
``leaf_synthetic`` (30 natural clients), Byzantine fractions
``--fractions``, every aggregator against every attack, with and without
worker momentum; robust rules assume ``b = floor(max(--fractions) * N)``.
Each cell (dataset, aggregator, attack, fraction, momentum) is one
`training.run_rounds` run of `byzantine.robust_algorithm` into
``WORKDIR/<dataset>/<aggregator>-<attack>-f<fraction>-m<momentum>/`` (a
model gone non-finite stops its run: ``nan``). Summary: ``results.jsonl``
(a line per cell), ``table.md`` (final test accuracy), ``heatmap.png``.
The quadratic floor: ``benchmarks/probes/byzantine_quadratic.py``; the
aggregation timing: ``benchmarks/aggregation.py``.

  python -m experiments.byzantine --workdir=/tmp/byz            # full grid
  python -m experiments.byzantine --quick --workdir=/tmp/byz_q  # seconds
"""

import glob
import itertools
import json
import math
import os
import pathlib
import time
import types

from absl import app
from absl import flags
import jax
import numpy as np
import optax

from experiments._cli import fail, parse_flags
from fedjax_ext import byzantine, clients, core, data, models, training
from fedjax_ext.training import _plots

DATASETS = ('digits', 'leaf_synthetic')
DEFAULT_AGGREGATORS = ('mean', 'median', 'trimmed_mean', 'krum',
                       'geometric_median', 'centered_clipping',
                       'nnm_trimmed_mean')
DEFAULT_ATTACKS = ('none', 'sign_flip', 'alie', 'ipm', 'label_flip', 'mimic',
                   'gaussian', 'nan')
QUICK = dict(datasets=['digits'], aggregators=['mean', 'nnm_trimmed_mean'],
             attacks=['nan', 'alie_optimal'], rounds=5)


def _numbers(values, ok) -> bool:
  try:
    floats = [float(v) for v in values]
  except ValueError:
    return False
  return len(set(floats)) == len(floats) > 0 and all(map(ok, floats))


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This script's flags, on `fv` (a test passes a fresh `FlagValues`)."""
  kw = dict(flag_values=fv)
  flags.DEFINE_string('workdir', None, 'Output directory (required).', **kw)
  flags.DEFINE_string('data_dir', None, 'TFDS data dir.', **kw)
  flags.DEFINE_integer('seed', 0, 'Seed of split, init, Byzantine ids.', 0,
                       **kw)
  flags.DEFINE_list('datasets', list(DATASETS), 'Datasets.', **kw)
  flags.DEFINE_list('aggregators', list(DEFAULT_AGGREGATORS), 'Aggregators (of '
                    f'{", ".join(training.AGGREGATORS)}).', **kw)
  flags.DEFINE_list('attacks', list(DEFAULT_ATTACKS), 'Attacks (of '
                    f'{", ".join(byzantine.ATTACKS)}).', **kw)
  flags.DEFINE_list('fractions', ['0.1', '0.2'], 'Byzantine fractions.', **kw)
  flags.DEFINE_float('momentum', 0.9, 'Worker momentum, beside 0.', **kw)
  flags.DEFINE_enum('mode', 'dsgd', byzantine.MODES, 'dsgd: one gradient '
                    'per round; fedavg: --local_epochs of local SGD.', **kw)
  flags.DEFINE_integer('rounds', 300, 'Rounds per run.', 1, **kw)
  flags.DEFINE_integer('eval_every', 10, 'Evaluate every N rounds.', 1, **kw)
  flags.DEFINE_integer('batch_size', 16, 'Minibatch per client.', 1, **kw)
  flags.DEFINE_float('lr', 0.5, 'Step (dsgd: server; fedavg: client).', **kw)
  flags.DEFINE_float('local_epochs', 1.0, 'Epochs of --mode=fedavg.', **kw)
  flags.DEFINE_integer('num_clients', 20, 'Clients of digits.', 4, **kw)
  flags.DEFINE_float('dirichlet_alpha', 1.0, 'Label skew of digits.', **kw)
  flags.DEFINE_float('alie_z', None, 'ALIE z (default: z_max).', **kw)
  flags.DEFINE_float('ipm_epsilon', 0.1, 'IPM epsilon.', **kw)
  flags.DEFINE_list('optimal_factors',
                    [f'{f:g}' for f in byzantine.OPTIMAL_FACTORS], 'Factors '
                    '(ALIE z, IPM epsilon) the *_optimal attacks search.', **kw)
  flags.DEFINE_float('gaussian_scale', 1.0, 'Gaussian attack std.', **kw)
  flags.DEFINE_float('cc_radius', 1.0, 'Centered clipping radius.', **kw)
  flags.DEFINE_bool('resume', False, 'Reuse/continue runs in --workdir.', **kw)
  flags.DEFINE_bool('quick', False, f'Tiny settings for tests: {QUICK}; '
                    'flags given explicitly win.', **kw)
  checks = [(n, lambda v, c=c: len(set(v)) == len(v) > 0 and set(v) <= set(
      c), f'must name distinct values of: {", ".join(c)}') for n, c in (
          ('datasets', DATASETS), ('aggregators', training.AGGREGATORS),
          ('attacks', byzantine.ATTACKS))]
  checks += [(n, lambda v: v > 0, 'must be > 0') for n in (
      'lr', 'local_epochs', 'dirichlet_alpha', 'ipm_epsilon', 'gaussian_scale',
      'cc_radius')]
  checks += [
      ('workdir', bool, 'is required'),
      ('fractions', lambda v: _numbers(v, lambda f: 0 <= f < 0.5),
       'must be distinct numbers in [0, 0.5)'),
      ('optimal_factors', lambda v: _numbers(v, lambda f: 0 < f < math.inf),
       'must be distinct finite numbers > 0'),
      ('momentum', lambda v: 0 < v < 1, 'must be in (0, 1)'),
      ('alie_z', lambda v: v is None or v > 0, 'must be > 0')]
  for name, ok, want in checks:
    flags.register_validator(name, ok, f'--{name} {want}.', **kw)


def settings_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """The flag values as attributes (--quick fills the flags not given)."""
  values = {f.name: f.value for f in fv.get_flags_for_module(
      fv.find_module_defining_flag('rounds'))}
  values.update({k: v for k, v in QUICK.items()
                 if values['quick'] and not fv[k].present})
  return types.SimpleNamespace(**dict(
      values, fractions=[float(f) for f in values['fractions']],
      optimal_factors=[float(f) for f in values['optimal_factors']]))


# Settings of the sweep, not of a cell: a cell may be reused across sweeps.
SWEEP_KEYS = ('resume', 'rounds', 'eval_every', 'data_dir', 'datasets',
              'aggregators', 'attacks', 'fractions', 'quick', 'workdir')


def run_cell(s, fed, cell, b: int, model, evaluator) -> dict:
  """One (dataset, aggregator, attack, fraction, beta) through run_rounds."""
  name, agg_name, attack_name, fraction, beta = cell
  params = model.init(jax.random.key(s.seed), fed.train['x'][:1])['params']
  aggregator = training.create_aggregator(agg_name, b, cc_radius=s.cc_radius,
                                          seed=s.seed)
  attack = training.create_attack(
      attack_name, aggregator, alie_z=s.alie_z, ipm_epsilon=s.ipm_epsilon,
      gaussian_scale=s.gaussian_scale, optimal_factors=s.optimal_factors)
  fedavg = s.mode == 'fedavg'
  algorithm = byzantine.robust_algorithm(
      clients.classification_loss(model), aggregator,
      optax.sgd(1. if fedavg else s.lr), mode=s.mode, attack=attack,
      client_optimizer=optax.sgd(s.lr) if fedavg else None,
      num_classes=fed.num_classes, momentum=beta or None,
      execution=core.Execution(strategy='vmap') if fedavg else None)
  epochs = s.local_epochs if fedavg else None
  steps = 1 if not fedavg else data.num_local_steps(
      [len(p) for p in fed.client_indices], s.batch_size, local_epochs=epochs)
  ids = np.arange(fed.num_clients, dtype=np.int32)  # Every client, each round.
  byz = byzantine.byzantine_ids(fed.num_clients, fraction, seed=s.seed)
  cohorts = lambda r: byzantine.mark_cohort(data.pack_cohort(
      fed.train, fed.client_indices, ids, batch_size=s.batch_size,
      num_steps=steps, seed=s.seed, round_num=r, local_epochs=epochs), byz)
  workdir = os.path.join(s.workdir, name,
                         f'{agg_name}-{attack_name}-f{fraction:g}-m{beta:g}')
  result = dict(dataset=name, aggregator=agg_name, attack=attack_name,
                fraction=fraction, momentum=beta, byzantine=len(byz))
  with training.Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    resume = s.resume and ckpt.latest_round() is not None  # Else: rerun.
  try:
    lines = training.run_rounds(
        algorithm, params, num_clients=fed.num_clients, cohorts=cohorts,
        rounds=s.rounds, key=jax.random.key(s.seed), workdir=workdir,
        evaluators=[evaluator], eval_every=s.eval_every,
        checkpoint_every=s.rounds, resume=resume,
        config=dict(vars(s), cell=cell, b=b), tensorboard=False,
        config_may_differ=SWEEP_KEYS,
        title=' '.join(map(str, cell)), log=lambda _: None).metrics
  except training.NonFiniteError as e:  # The defence let NaN/Inf through.
    return dict(result, finite=False, test_accuracy=None, error=str(e))
  spans = np.diff([0] + [l['round'] for l in lines])  # Interval means.
  factors = [l.get('attack_factor', 0.) for l in lines]
  return dict(result, finite=True, test_accuracy=lines[-1]['test_accuracy'],
              train_loss=lines[-1]['train_loss'], rejected_updates=int(round(
                  np.dot(spans, [l['rejected_updates'] for l in lines]))),
              median_attack_factor=float(np.median(factors)))


def summarize(s, results: list[dict]) -> None:
  """results.jsonl, table.md (accuracy %) and heatmap.png of the cells."""
  pathlib.Path(s.workdir, 'results.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in results))
  acc = {(r['dataset'], r['fraction'], r['aggregator'], r['momentum'],
          r['attack']): 100 * r['test_accuracy'] if r['finite'] else math.nan
         for r in results}
  rows = list(itertools.product(s.aggregators, (0., s.momentum)))
  panels = {f'{name}, Byzantine fraction {fraction}: test accuracy %': (
      [a + (f' + m{s.momentum:g}' if beta else '') for a, beta in rows],
      s.attacks, [[acc[(name, fraction, a, beta, attack)]
                   for attack in s.attacks] for a, beta in rows])
      for name, fraction in itertools.product(s.datasets, s.fractions)}
  md = ['# Final test accuracy (%) under attack', '',
        f'mode={s.mode}, rounds={s.rounds}, lr={s.lr}, batch={s.batch_size}, '
        f'seed={s.seed}; m = worker momentum {s.momentum}; "nan": the model '
        'went non-finite (the run stopped there).', '']
  for title, (labels, cols, grid) in panels.items():
    md += [f'## {title.split(":")[0]}', '',
           f'| aggregator | {" | ".join(cols)} |', '|---' * len(cols) + '|---|']
    md += [f'| {label} | ' + ' | '.join(f'{v:.1f}' for v in values) + ' |'
           for label, values in zip(labels, grid)] + ['']
  pathlib.Path(s.workdir, 'table.md').write_text('\n'.join(md))
  _plots.plot_heatmaps(panels, os.path.join(s.workdir, 'heatmap.png'),
                       vmin=0, vmax=100)


def run(s, log=print) -> list[dict]:
  """Every cell of the grid, then the summary; returns the cells' lines."""
  if not s.resume and glob.glob(f'{s.workdir}/*/*/checkpoints/[0-9]*'):
    raise training.ConfigError(f'--workdir={s.workdir} holds runs of a '
                               'previous sweep; pass --resume to reuse them.')
  feds = {name: training.load_federation(training.ExperimentConfig(
      dataset=name, data_dir=s.data_dir, seed=s.seed, clients_per_round=1,
      partition='natural' if name == 'leaf_synthetic' else 'dirichlet',
      num_clients=None if name == 'leaf_synthetic' else s.num_clients,
      dirichlet_alpha=s.dirichlet_alpha, client_test_fraction=0.))
      for name in s.datasets}  # All loaded before the first run writes.
  largest = min(max(map(len, fed.client_indices)) for fed in feds.values())
  if s.batch_size > largest:  # Each batch is padded to --batch_size.
    raise training.ConfigError(f'--batch_size must be in [1, {largest}] (the '
                               f'largest client), got {s.batch_size}.')
  results, t0 = [], time.perf_counter()
  for name, fed in feds.items():
    b = int(math.floor(max(s.fractions) * fed.num_clients))
    model = models.create_model('logistic', num_classes=fed.num_classes)
    evaluator = training.classification_evaluator(  # Compiled once.
        clients.predict_fn(model), fed.test, batch_size=1000)
    log(f'{name}: {fed.num_clients} clients, defence b={b}, {s.mode}')
    for agg, attack in itertools.product(s.aggregators, s.attacks):
      t1 = time.perf_counter()
      cells = [run_cell(s, fed, (name, agg, attack, f, beta), b, model,
                        evaluator) for f, beta in itertools.product(
                            s.fractions, (0., s.momentum))]
      results += cells
      log(f'  {agg:>22} x {attack:<12} ' + ' '.join(
          f'f={c["fraction"]:g} m={c["momentum"]:g}: ' + (
              f'{c["test_accuracy"]:.3f}' + (
                  f' (factor {c["median_attack_factor"]:g})'
                  if attack.endswith('_optimal') else '')
              if c['finite'] else 'nan') for c in cells)
          + f'  ({time.perf_counter() - t1:.1f}s)')
  summarize(s, results)
  log(f'done in {time.perf_counter() - t0:.0f}s; outputs in {s.workdir}')
  return results


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    run(settings_from_flags())
  except (training.ConfigError, training.CheckpointError, data.DataError) as e:
    fail(str(e))
  except training.Preempted as e:  # Checkpointed: rerun with --resume.
    fail(str(e), status=e.exit_status)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
