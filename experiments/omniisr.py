r"""OmniISR (arXiv 2605.20276): ISR vs the plain loss over algorithms and modes.

PureFL ({fedavg, fedprox, scaffold, fedadam} x {digits, leaf_synthetic}),
PureCL (`isr.centralized`), Hybrid CL-FL (`isr.hybrid`, our reading) and MI /
NE ablations over seeds; drift on the backbone (`fedjax_ext.drift`). Each run:
`training.run_rounds` into WORKDIR/<mode>-<alg>-<dataset>-<variant>-seed<s>/;
summary: WORKDIR/results.md, summary.json, {accuracy,drift}_<dataset>.png.
``python -m experiments.omniisr [--quick] --workdir=runs/omniisr``
"""

import functools
import itertools
import json
import os
import time
import types

from absl import app, flags
import jax
import numpy as np
from sklearn import metrics as sk_metrics

from experiments import _cli
from experiments._cli import fail, parse_flags
from fedjax_ext import algorithms, core, data, drift, isr, models, training
from fedjax_ext.training import _plots

ALGORITHMS = ('fedavg', 'fedprox', 'scaffold', 'fedadam')
DATASETS = ('digits', 'leaf_synthetic')
METRICS = ('test_accuracy', 'macro_f1', 'client_accuracy_p10')
PER_ROUND = ('drift_sq_dist', 'client_drift', 'update_cosine_mean', 'zeta_sq',
             'b_dissimilarity_sq', 'drift_bound_ratio', 'cl_fl_cosine')
VARIANTS = {'base': (0, 0), 'isr': (1, 1), 'mi': (1, 0), 'ne': (0, 1)}
QUICK = dict(rounds=3, num_seeds=1, eval_every=3, local_steps=2, hidden_sizes=[
    '16'], datasets=['digits'], algorithms=['fedavg'], isr_points=['hidden_0'])


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This script's flags, on `fv` (a test passes a fresh `FlagValues`)."""
  define = functools.partial(_cli.define_checked, fv)
  define('string', 'workdir', None, 'Default: runs/omniisr-<time>.')
  define('string', 'data_dir', None, 'TFDS data dir.')
  among = lambda c: (f'among {", ".join(c)}', lambda v: set(
      [v] if isinstance(v, str) else v or ['']) <= set(c))
  define('list', 'algorithms', list(ALGORITHMS), 'FL algorithms.',
         *among(ALGORITHMS))
  define('list', 'datasets', list(DATASETS), 'Datasets.', *among(DATASETS))
  define('string', 'weighting', 'examples_processed', 'Aggregation weights.',
         *among(core.WEIGHTINGS))
  define('string', 'ne_over', 'location', 'NE over.', *among(isr.NE_OVER))
  define('integer', 'num_seeds', 3, 'Seeds per configuration.', '>= 1')
  define('integer', 'seed', 0, 'Runs use seed, seed + 1, ...', '>= 0')
  define('integer', 'rounds', 60, 'Rounds per run.', '>= 1')
  define('integer', 'eval_every', 10, 'Evaluate every N rounds.', '>= 1')
  define('integer', 'local_steps', 10, 'Local SGD steps per round.',
         'in [1, 100000]')
  define('integer', 'batch_size', 20, 'Local batch size.', '>= 1')
  define('integer', 'clients_per_round', 10, 'Clients per round.', '>= 1')
  define('integer', 'num_clients', 20, 'Clients of digits.', '>= 1')
  define('float', 'dirichlet_alpha', 0.3, 'Label skew of digits.', '> 0')
  define('float', 'client_lr', 0.05, 'Client (and PureCL) SGD step.', '> 0')
  define('float', 'fedadam_server_lr', 0.01, 'Server step, fedadam.', '> 0')
  define('float', 'prox_mu', 0.01, 'Proximal mu of fedprox.', '>= 0')
  define('list', 'hidden_sizes', ['64', '64'], 'MLP hidden layers.',
         'sizes >= 1', lambda v: v and all(h.isdigit() and int(h) for h in v))
  define('list', 'isr_points', ['hidden_0', 'hidden_1'], 'ISR heads.',
         'at least one submodule', bool)
  define('float', 'mi_weight', 0.3, 'lambda of each ISR point.', '>= 0')
  define('float', 'ne_weight', 0.05, 'mu of each ISR point.', '>= 0')
  define('float', 'cloud_fraction', 0.3, 'Hybrid: poolable clients.',
         'in (0, 1)', lambda v: 0 < v < 1)
  define('float', 'cloud_weight', -1., 'Hybrid: w_C; -1: |D_C| / |D|.',
         'in [0, 1] or -1', lambda v: v == -1 or 0 <= v <= 1)
  define('bool', 'resume', False, 'Continue the runs with checkpoints.')
  define('bool', 'quick', False, f'Tiny: {QUICK}; explicit flags win.')


def settings_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """The flag values as attributes (--quick fills the flags not given)."""
  v = {f.name: f.value for f in fv.get_flags_for_module(
      fv.find_module_defining_flag('rounds'))}
  v.update({k: q for k, q in QUICK.items() if v['quick'] and not fv[k].present})
  v.update(hidden_sizes=tuple(map(int, v['hidden_sizes'])), workdir=v[
      'workdir'] or time.strftime('runs/omniisr-%Y%m%d-%H%M%S'))
  return types.SimpleNamespace(**v)


def run_one(s, spec, seed: int, fed) -> list[list[dict]]:
  """One configuration and seed through `training.run_rounds`."""
  mode, name, ds, variant = spec
  model = models.create_model('mlp', num_classes=fed.num_classes,
                              hidden_sizes=s.hidden_sizes)
  mi, ne = VARIANTS[variant]  # 0 or 1: drop or keep the term.
  points = isr.isr_points(s.isr_points, mi_weight=mi * s.mi_weight,
                          ne_weight=ne * s.ne_weight)
  init_key, run_key = jax.random.split(jax.random.key(seed))
  try:  # Unknown --isr_points fail here, before the first run writes.
    params = isr.init_isr(model, init_key, fed.train['x'][:1], points,
                          num_classes=fed.num_classes)
  except (KeyError, ValueError) as e:
    raise training.ConfigError(f'--isr_points: {e}') from None
  loss_fn, n = isr.isr_loss(model, points, ne_over=s.ne_over), fed.num_clients
  cloud = range(max(1, round(s.cloud_fraction * n)) if mode == 'hybrid' else 0)
  w = s.cloud_weight if s.cloud_weight != -1 else sum(map(
      len, fed.client_indices[:len(cloud)])) / sum(map(len, fed.client_indices))
  kw = dict(batch_size=s.batch_size, num_steps=s.local_steps, seed=seed)
  ids = lambda r: (len(cloud) + data.sample_clients(
      n - len(cloud), min(s.clients_per_round, n - len(cloud)), seed=seed,
      round_num=r)).astype(np.int32)
  if mode == 'cl':  # K steps of batch C * B on the pooled data per round.
    algorithm = isr.centralized(loss_fn, s.client_lr)
    cohorts = lambda r: isr.pooled_cohort(
        fed.train, fed.client_indices, range(n), round_num=r,
        **dict(kw, batch_size=s.batch_size * s.clients_per_round))
  else:  # The named algorithm; drift and its bound on the backbone.
    algorithm = drift.instrument(algorithms.create_algorithm(
        name, loss_fn, client_learning_rate=s.client_lr, num_clients=n,
        server_learning_rate=s.fedadam_server_lr if name == 'fedadam' else 1.,
        prox_mu=s.prox_mu, weighting=s.weighting,
        extra_metrics=drift.drift_metrics(select=isr.backbone)), loss_fn,
        learning_rate=s.client_lr, weighting=s.weighting, select=isr.backbone)
    cohorts = lambda r: data.pack_cohort(fed.train, fed.client_indices, ids(r),
                                         round_num=r, **kw)
  if mode == 'hybrid':
    algorithm = isr.hybrid(algorithm, loss_fn, learning_rate=s.client_lr,
                           cloud_weight=w)
    cohorts = lambda r: isr.hybrid_cohort(
        fed.train, fed.client_indices, ids(r), cloud, round_num=r, **kw)
  predict = isr.predict_fn(model)
  labels = jax.jit(lambda p, x: predict(p, x).argmax(-1))
  evaluators = [
      training.classification_evaluator(predict, fed.test, batch_size=500),
      training.classification_evaluator(
          predict, fed.held_out, batch_size=500, num_clients=n,
          client_of_example=fed.held_out_client),
      lambda p, *_: {'macro_f1': float(sk_metrics.f1_score(
          fed.test['y'], np.asarray(labels(p, fed.test['x'])), zero_division=0,
          average='macro', labels=np.arange(fed.num_classes)))}]
  workdir = os.path.join(s.workdir, f'{"-".join(spec)}-seed{seed}')
  return training.run_rounds(
      algorithm, params, num_clients=n, cohorts=cohorts, rounds=s.rounds,
      key=run_key, workdir=workdir, evaluators=evaluators,
      eval_every=s.eval_every, log=lambda _: None,
      resume=s.resume and os.path.isdir(os.path.join(workdir, 'checkpoints')),
      config=dict(vars(s), spec=spec, seed=seed,
                  cloud_weight=w if cloud else None),
      title=f'{" ".join(spec)}, seed {seed}').metrics


def summarize(s, runs: dict, seconds: float) -> dict:
  """results.md, summary.json and plots from {spec: [lines of each seed]}."""
  table = lambda head, rows: ['|'.join(['', *head, '']), '|---' * len(head) +
                              '|'] + ['|'.join(['', *(f'{v:.4g}' if isinstance(
      v, float) else str(v) for v in r), '']) for r in rows]
  # Mean over seeds of the last line (last=1) or of all lines (last=0).
  mean = lambda spec, m, last=1: float(np.mean([
      l.get(m, np.nan) for ls in runs[spec] for l in ls[-last:]]))
  configs = {k: {m: mean(k, m) for m in METRICS} | {
      m: mean(k, m, 0) for m in PER_ROUND} for k in runs}
  cells = {}
  for ds, alg, m in itertools.product(s.datasets, s.algorithms, METRICS):
    c = {f'{mode}_{v}': configs[(mode, a, ds, v)][m] for mode, a in (
        ('fl', alg), ('cl', 'centralized')) for v in ('base', 'isr')}
    d = [i[-1][m] - b[-1][m] for b, i in zip(runs[('fl', alg, ds, 'base')],
                                             runs[('fl', alg, ds, 'isr')])]
    cells[f'{ds}/{alg}/{m}'] = dict(
        c, diff=float(np.mean(d)), won=int(np.mean(d) > 0), seeds=len(d),
        seed_wins=sum(x > 0 for x in d), gap_base=c['cl_base'] - c['fl_base'],
        gap_isr=c['cl_isr'] - c['fl_isr'])
  wins = {k: sum(c[v] for c in cells.values()) for k, v in (
      ('cell_wins', 'won'), ('seed_wins', 'seed_wins'),
      ('seed_pairs', 'seeds'))} | {'cells': len(cells)}
  gap = {}
  for m in METRICS:
    gb, gi = (float(np.mean([c[k] for n, c in cells.items() if n.endswith(m)]))
              for k in ('gap_base', 'gap_isr'))
    gap[m] = dict(mean_gap_base=gb, mean_gap_isr=gi, reduction_pct=100 * (
        gb - gi) / abs(gb) if abs(gb) > 1e-9 else np.nan)
  md = [f'# OmniISR ({s.num_seeds} seeds, {s.rounds} rounds, {seconds:.0f} s)',
        '', '## Paired wins of ISR (PureFL), centralized-federated gap (CL - '
        'FL): final values, means over seeds', '',
        *table(['cell', *next(iter(cells.values()))],
              [[n, *c.values()] for n, c in cells.items()]), '',
        f'ISR wins {wins["cell_wins"]}/{wins["cells"]} cells and '
        f'{wins["seed_wins"]}/{wins["seed_pairs"]} seed pairs (paper: 37/48).',
        *[f'- {m}: mean CL-FL gap {g["mean_gap_base"]:+.4f} without ISR, '
          f'{g["mean_gap_isr"]:+.4f} with: {g["reduction_pct"]:+.1f}% reduction'
          ' (paper: 22.60%).' for m, g in gap.items()], '',
        '## Modes (PureCL, PureFL, Hybrid CL-FL), ablations, client drift '
        '(of the backbone); per-round metrics averaged over rounds', '',
        *table(['mode', 'algorithm', 'dataset', 'variant', *METRICS,
                *PER_ROUND], [[*k, *c.values()] for k, c in configs.items()])]
  with open(os.path.join(s.workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  for ds, (png, m, modes) in itertools.product(s.datasets, (
      ('accuracy', 'test_accuracy', ('fl', 'cl')),
      ('drift', 'drift_sq_dist', ('fl',)))):
    _plots.plot_runs({a: {f'{mode} {v}': runs[
        (mode, a if mode == 'fl' else 'centralized', ds, v)]
        for mode in modes for v in ('base', 'isr')} for a in s.algorithms},
        os.path.join(s.workdir, f'{png}_{ds}.png'), key=m, title=ds)
  summary = dict(paired_wins=wins, gap=gap, cells=cells, seconds=seconds,
                 configurations={'/'.join(k): c for k, c in configs.items()})
  with open(os.path.join(s.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def run(s, log=print) -> tuple[dict, dict]:
  """Every configuration and seed, then the summary: (runs, summary)."""
  seeds, digits, t0 = range(s.seed, s.seed + s.num_seeds), 'digits', time.time()
  feds = {(ds, seed): training.load_federation(training.ExperimentConfig(
      dataset=ds, data_dir=s.data_dir, seed=seed, clients_per_round=1,
      partition='dirichlet' if ds == digits else 'natural', num_clients=(
          s.num_clients if ds == digits else None),
      dirichlet_alpha=s.dirichlet_alpha))
      for ds in s.datasets for seed in seeds}
  largest = min(max(map(len, f.client_indices)) for f in feds.values())
  if s.batch_size > largest:  # Each batch is padded to --batch_size.
    raise training.ConfigError(f'--batch_size must be in [1, {largest}] (the '
                               f'largest client), got {s.batch_size}.')
  runs = {(m, a, ds, v): [] for ds in s.datasets for m, a, vs in [
      ('fl', a, ('base', 'isr')) for a in s.algorithms] + [
      ('cl', 'centralized', ('base', 'isr')), ('fl', 'fedavg', ('mi', 'ne')),
      ('hybrid', 'fedavg', ('base', 'isr'))] for v in vs}
  log(f'OmniISR: {len(runs)} configurations x {len(seeds)} seeds.')
  for spec, seed in itertools.product(list(runs), seeds):
    runs[spec].append(run_one(s, spec, seed, feds[(spec[2], seed)]))
    log(f'  {" ".join(spec)} seed {seed} ({time.time() - t0:.0f} s): '
        + ', '.join(f'{m} {runs[spec][-1][-1][m]:.4f}' for m in METRICS))
  summary = summarize(s, runs, time.time() - t0)
  log(f'ISR wins {summary["paired_wins"]["cell_wins"]}/{len(summary["cells"])}'
      f' cells; tables in {s.workdir}/results.md.')
  return runs, summary


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    run(settings_from_flags())
  except (training.ConfigError, data.DataError, training.NonFiniteError) as e:
    fail(str(e), status=1 if isinstance(e, training.NonFiniteError) else 2)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
