r"""OmniISR across FL algorithms, datasets and modes, from one command.

Measures the claims of OmniISR (Kou et al., arXiv 2605.20276, 2026): ISR
(auxiliary-head MI supervision + negative-entropy regularization at hidden
layers, `fedjax_ext.isr`) against the plain loss, over

* PureFL: {fedavg, fedprox, scaffold, fedadam} x {digits, leaf_synthetic};
* PureCL: centralized SGD on the pooled data, same steps and examples per
  round (`isr.centralized`);
* Hybrid CL-FL: FedAvg with a poolable group of clients trained centrally
  (`isr.hybrid`, OUR READING of the mixing rule), logging the cosine of the
  centralized and federated updates;
* ablations MI-only (mu = 0) and NE-only (lambda = 0) with FedAvg;

each over `--num_seeds` seeds, with client drift, gradient dissimilarity and
the local-SGD drift bound logged every round (`fedjax_ext.drift`), and the
metrics test accuracy, macro-F1 and 10th-percentile client accuracy.

  python -m experiments.omniisr --workdir=runs/omniisr       # full
  python -m experiments.omniisr --quick --workdir=/tmp/omni  # pipeline test

Writes WORKDIR/metrics.jsonl (one line per run and evaluation),
WORKDIR/results.md (paired-wins table, CL-FL gap with and without ISR,
ablations, hybrid cosine, drift table), WORKDIR/summary.json, and the PNGs
accuracy_<dataset>.png, drift_<dataset>.png and gap.png. Bad flags exit
with status 2 and a one-line `error: ...`.
"""

import dataclasses
import json
import os
import time
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import optax
from sklearn import metrics as sk_metrics

from experiments._cli import fail
from experiments._cli import parse_flags
from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext import drift
from fedjax_ext import isr
from fedjax_ext import models
from fedjax_ext import server
from fedjax_ext import training

ALGORITHMS = ('fedavg', 'fedprox', 'scaffold', 'fedadam')
DATASETS = ('digits', 'leaf_synthetic')
METRICS = ('test_accuracy', 'macro_f1', 'client_accuracy_p10')
# Variant -> (uses MI, uses NE).
VARIANTS = {'base': (False, False), 'isr': (True, True), 'mi': (True, False),
            'ne': (False, True)}

flags.DEFINE_string('workdir', None, 'Output directory (default: '
                    'runs/omniisr-<time>).')
flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: '
                    '$FEDJAX_EXT_DATA_DIR or ~/tensorflow_datasets).')
flags.DEFINE_list('algorithms', list(ALGORITHMS),
                  f'FL algorithms: {", ".join(ALGORITHMS)}.')
flags.DEFINE_list('datasets', list(DATASETS),
                  f'Datasets: {", ".join(DATASETS)}.')
flags.DEFINE_integer('num_seeds', 3, 'Seeds per configuration (>= 1).')
flags.DEFINE_integer('seed', 0, 'First seed; runs use seed, seed+1, ...')
flags.DEFINE_integer('rounds', 60, 'Rounds per run (>= 1).')
flags.DEFINE_integer('eval_every', 10, 'Evaluate every N rounds (>= 1).')
flags.DEFINE_integer('local_steps', 10, 'Local SGD steps per round (>= 1).')
flags.DEFINE_integer('batch_size', 20, 'Local batch size (>= 1).')
flags.DEFINE_integer('clients_per_round', 10, 'Clients per round (>= 1).')
flags.DEFINE_integer('num_clients', 20, 'Clients of the Dirichlet split of '
                     'digits (leaf_synthetic has its 30 natural clients).')
flags.DEFINE_float('dirichlet_alpha', 0.3, 'Label-skew concentration of the '
                   'digits split (> 0).')
flags.DEFINE_float('client_lr', 0.05, 'Client (and centralized) SGD step.')
flags.DEFINE_float('fedadam_server_lr', 0.01, 'Server step of fedadam.')
flags.DEFINE_float('prox_mu', 0.01, 'Proximal mu of fedprox (>= 0).')
flags.DEFINE_list('hidden_sizes', ['64', '64'], 'MLP hidden layers.')
flags.DEFINE_list('isr_points', ['hidden_0', 'hidden_1'],
                  'Submodules of the MLP that get an ISR head.')
flags.DEFINE_float('mi_weight', 0.3, 'lambda of every ISR point (>= 0).')
flags.DEFINE_float('ne_weight', 0.05, 'mu of every ISR point (>= 0).')
flags.DEFINE_string('ne_over', 'location', 'NE softmax over: '
                    f'{", ".join(isr.NE_OVER)}.')
flags.DEFINE_float('cloud_fraction', 0.3, 'Hybrid: fraction of the clients '
                   'whose data may be pooled, in (0, 1).')
flags.DEFINE_float('cloud_weight', -1., 'Hybrid: w_C in [0, 1]; -1 uses the '
                   'data-size weight |D_C| / |D| (our reading).')
flags.DEFINE_bool('quick', False, 'A tiny run of the whole pipeline (for '
                  'the test): 3 rounds, 1 seed, digits, fedavg, '
                  'hidden 16; flags given explicitly still win.')

FLAGS = flags.FLAGS
QUICK = dict(rounds=3, num_seeds=1, eval_every=3, local_steps=2,
             datasets=['digits'], algorithms=['fedavg'],
             hidden_sizes=['16'], isr_points=['hidden_0'])



@dataclasses.dataclass(frozen=True)
class Settings:
  """Every knob of one experiment (filled from the flags)."""
  workdir: str
  data_dir: str | None
  algorithms: tuple[str, ...]
  datasets: tuple[str, ...]
  seeds: tuple[int, ...]
  rounds: int
  eval_every: int
  local_steps: int
  batch_size: int
  clients_per_round: int
  num_clients: int
  dirichlet_alpha: float
  client_lr: float
  fedadam_server_lr: float
  prox_mu: float
  hidden_sizes: tuple[int, ...]
  isr_points: tuple[str, ...]
  mi_weight: float
  ne_weight: float
  ne_over: str
  cloud_fraction: float
  cloud_weight: float


def _check_names(flag, values, choices):
  if not values:
    fail(f'--{flag} must name at least one of: {", ".join(choices)}.')
  for v in values:
    if v not in choices:
      fail(f'unknown --{flag} value {v!r}; valid choices: '
           f'{", ".join(choices)}.')


def settings_from_flags() -> Settings:
  """Validated `Settings`; a bad flag exits with status 2."""
  values = {name: FLAGS[name].value for name in FLAGS
            if name in Settings.__dataclass_fields__ or name == 'num_seeds'
            or name == 'seed'}
  if FLAGS.quick:
    for name, value in QUICK.items():
      if not FLAGS[name].present:
        values[name] = value
  _check_names('algorithms', values['algorithms'], ALGORITHMS)
  _check_names('datasets', values['datasets'], DATASETS)
  _check_names('ne_over', [values['ne_over']], isr.NE_OVER)
  for name in ('num_seeds', 'rounds', 'eval_every', 'local_steps',
               'batch_size', 'clients_per_round', 'num_clients'):
    if values[name] < 1:
      fail(f'--{name} must be >= 1, got {values[name]}.')
  for name in ('client_lr', 'fedadam_server_lr', 'dirichlet_alpha'):
    if not values[name] > 0:
      fail(f'--{name} must be > 0, got {values[name]}.')
  for name in ('prox_mu', 'mi_weight', 'ne_weight'):
    if values[name] < 0:
      fail(f'--{name} must be >= 0, got {values[name]}.')
  if not 0 < values['cloud_fraction'] < 1:
    fail(f'--cloud_fraction must be in (0, 1), got '
         f'{values["cloud_fraction"]}.')
  if values['cloud_weight'] != -1 and not 0 <= values['cloud_weight'] <= 1:
    fail(f'--cloud_weight must be in [0, 1] or -1, got '
         f'{values["cloud_weight"]}.')
  try:
    hidden = tuple(int(h) for h in values['hidden_sizes'])
  except ValueError:
    fail(f'--hidden_sizes must be a list of integers, got '
         f'{",".join(values["hidden_sizes"])!r}.')
  if not hidden or min(hidden) < 1:
    fail('--hidden_sizes must list at least one size >= 1.')
  if not values['isr_points']:
    fail('--isr_points must name at least one submodule.')
  workdir = values['workdir'] or os.path.join(
      'runs', 'omniisr-' + time.strftime('%Y%m%d-%H%M%S'))
  seeds = tuple(range(values['seed'], values['seed'] + values['num_seeds']))
  fields = {k: v for k, v in values.items()
            if k in Settings.__dataclass_fields__}
  fields.update(workdir=workdir, seeds=seeds, hidden_sizes=hidden,
                algorithms=tuple(values['algorithms']),
                datasets=tuple(values['datasets']),
                isr_points=tuple(values['isr_points']))
  return Settings(**fields)


# ----------------------------------------------------------------- data ---


class Problem(NamedTuple):
  """One dataset split over clients for one seed."""
  federation: training.Federation
  test_set: training.EvalSet
  held_set: training.EvalSet
  num_classes: int


def load_problem(s: Settings, dataset: str, seed: int) -> Problem:
  natural = dataset == 'leaf_synthetic'
  config = training.ExperimentConfig(
      dataset=dataset, data_dir=s.data_dir,
      partition='natural' if natural else 'dirichlet',
      dirichlet_alpha=s.dirichlet_alpha,
      num_clients=None if natural else s.num_clients,
      clients_per_round=1, client_test_fraction=0.2, seed=seed)
  fed = training.load_federation(config)
  test_set = training.make_eval_set(fed.test, batch_size=500)
  held_set = training.make_eval_set(
      fed.held_out, batch_size=500, segment_ids=fed.held_out_client,
      num_segments=fed.num_clients)
  return Problem(fed, test_set, held_set, fed.num_classes)


def make_eval(model):
  """``evaluate(params, problem) -> {metric: value}`` (backbone only)."""
  predict = isr.predict_fn(model)

  @jax.jit
  def labels(params, x):
    return jax.lax.map(lambda b: jnp.argmax(predict(params, b), -1), x)

  def evaluate(params, problem: Problem) -> dict[str, float]:
    out = {}
    for name, es in (('test', problem.test_set), ('held', problem.held_set)):
      pred = np.asarray(labels(params, es.x)).reshape(-1)[:es.num_examples]
      true = np.asarray(es.y).reshape(-1)[:es.num_examples]
      if name == 'test':
        out['test_accuracy'] = float(np.mean(pred == true))
        out['macro_f1'] = float(sk_metrics.f1_score(
            true, pred, average='macro',
            labels=np.arange(problem.num_classes), zero_division=0))
      else:
        seg = es.segment_ids
        counts = np.bincount(seg, minlength=es.num_segments)
        hits = np.bincount(seg, weights=(pred == true).astype(float),
                           minlength=es.num_segments)
        per_client = hits[counts > 0] / counts[counts > 0]
        out['client_accuracy_p10'] = float(np.percentile(per_client, 10))
    return out

  return evaluate


# --------------------------------------------------------------- runs ---


class RunSpec(NamedTuple):
  mode: str  # 'fl', 'cl' or 'hybrid'.
  algorithm: str  # FL algorithm ('centralized' for cl).
  dataset: str
  variant: str  # A key of VARIANTS.


def run_specs(s: Settings) -> list[RunSpec]:
  specs = []
  for ds in s.datasets:
    for alg in s.algorithms:
      specs += [RunSpec('fl', alg, ds, v) for v in ('base', 'isr')]
    specs += [RunSpec('cl', 'centralized', ds, v) for v in ('base', 'isr')]
    specs += [RunSpec('fl', 'fedavg', ds, v) for v in ('mi', 'ne')]
    specs += [RunSpec('hybrid', 'fedavg', ds, v) for v in ('base', 'isr')]
  return specs


def build_fl(s: Settings, name: str, loss_fn, num_clients: int):
  """A named algorithm with drift measured on the backbone, instrumented."""
  agg = drift.drift_aggregator(aggregators.weighted_mean(),
                               select=isr.backbone)
  if name == 'scaffold':
    algorithm = algorithms.scaffold(loss_fn, s.client_lr, optax.sgd(1.0),
                                    num_clients=num_clients, aggregator=agg)
  else:
    server_lr = s.fedadam_server_lr if name == 'fedadam' else 1.0
    server_name = 'fedadam' if name == 'fedadam' else 'fedavg'
    algorithm = algorithms.fed_avg(
        loss_fn, optax.sgd(s.client_lr),
        server.server_optimizer(server_name, server_lr),
        prox_mu=s.prox_mu if name == 'fedprox' else 0., aggregator=agg)
  return drift.instrument(algorithm, loss_fn, learning_rate=s.client_lr,
                          select=isr.backbone)


class Runner:
  """Builds and jits one configuration once, then runs it for every seed."""

  def __init__(self, s: Settings, spec: RunSpec, problem: Problem, model,
               evaluate):
    self.s, self.spec = s, spec
    mi, ne = VARIANTS[spec.variant]
    self.points = isr.isr_points(
        s.isr_points, mi_weight=s.mi_weight if mi else 0.,
        ne_weight=s.ne_weight if ne else 0.)
    self.model = model
    loss_fn = isr.isr_loss(model, self.points, ne_over=s.ne_over)
    n = problem.federation.num_clients
    self.num_cloud = 0
    if spec.mode == 'cl':
      self.algorithm = isr.centralized(loss_fn, s.client_lr)
    elif spec.mode == 'fl':
      self.algorithm = build_fl(s, spec.algorithm, loss_fn, n)
    else:
      self.num_cloud = max(1, int(round(s.cloud_fraction * n)))
      self.fl = build_fl(s, spec.algorithm, loss_fn, n)
    self.loss_fn = loss_fn
    self.apply = None if spec.mode == 'hybrid' else jax.jit(
        self.algorithm.apply)
    self.hybrid_apply = {}
    self.evaluate = evaluate

  def run(self, problem: Problem, seed: int, log) -> list[dict]:
    s, spec = self.s, self.spec
    fed = problem.federation
    key = jax.random.key(seed)
    init_key, run_key = jax.random.split(key)
    params = isr.init_isr(self.model, init_key, fed.train['x'][:1],
                          self.points, num_classes=problem.num_classes)
    n = fed.num_clients
    cpr = min(s.clients_per_round, n - self.num_cloud)
    cloud_weight = 0.
    if spec.mode == 'hybrid':
      sizes = np.array([len(p) for p in fed.client_indices], float)
      cloud_weight = (s.cloud_weight if s.cloud_weight != -1 else
                      float(sizes[:self.num_cloud].sum() / sizes.sum()))
      if cloud_weight not in self.hybrid_apply:
        self.hybrid_apply[cloud_weight] = jax.jit(isr.hybrid(
            self.fl, self.loss_fn, learning_rate=s.client_lr,
            cloud_weight=cloud_weight).apply)
      apply = self.hybrid_apply[cloud_weight]
      algorithm = self.fl
    else:
      apply, algorithm = self.apply, self.algorithm
    state = algorithm.init(params)
    store = core.tree_broadcast(algorithm.init_client_state(params), n)
    lines, interval = [], []
    for r in range(s.rounds):
      if spec.mode == 'cl':
        cohort = isr.pooled_cohort(
            fed.train, fed.client_indices, range(n),
            batch_size=s.batch_size * s.clients_per_round,
            num_steps=s.local_steps, seed=seed, round_num=r)
        state, store, m = apply(state, store, cohort, run_key)
      else:
        pick = data.sample_clients(n - self.num_cloud, cpr, seed=seed,
                                   round_num=r)
        ids = (pick + self.num_cloud).astype(np.int32)
        cohort = data.pack_cohort(fed.train, fed.client_indices, ids,
                                  batch_size=s.batch_size,
                                  num_steps=s.local_steps, seed=seed,
                                  round_num=r)
        if spec.mode == 'hybrid':
          cloud = isr.pooled_cohort(
              fed.train, fed.client_indices, range(self.num_cloud),
              batch_size=s.batch_size * self.num_cloud,
              num_steps=s.local_steps, seed=seed + 7919, round_num=r)
          cloud = jax.tree.map(lambda v: v[0], cloud.batches)
          state, store, m = apply(state, store, cohort, cloud, run_key)
        else:
          state, store, m = apply(state, store, cohort, run_key)
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      if not np.isfinite(m['train_loss']):
        raise FloatingPointError(f'{spec} seed {seed}: non-finite loss in '
                                 f'round {r + 1}.')
      interval.append(m)
      done = r + 1
      if done % s.eval_every == 0 or done == s.rounds:
        line = dict(spec._asdict(), seed=seed, round=done)
        for k in interval[0]:
          line[k] = float(np.mean([x[k] for x in interval]))
        line.update(self.evaluate(state.params, problem))
        if spec.mode == 'hybrid':
          line['cloud_weight'] = cloud_weight
        lines.append(line)
        interval = []
    last = lines[-1]
    log(f'  {spec.mode:6s} {spec.algorithm:11s} {spec.dataset:14s} '
        f'{spec.variant:4s} seed {seed}: acc {last["test_accuracy"]:.4f} '
        f'f1 {last["macro_f1"]:.4f} p10 '
        f'{last["client_accuracy_p10"]:.4f}')
    return lines


# ------------------------------------------------------------ reports ---


def final_lines(lines: list[dict], rounds: int) -> dict:
  """(mode, algorithm, dataset, variant) -> {seed: final line}."""
  out = {}
  for line in lines:
    if line['round'] == rounds:
      key = (line['mode'], line['algorithm'], line['dataset'],
             line['variant'])
      out.setdefault(key, {})[line['seed']] = line
  return out


def _mean(finals, key, metric):
  runs = finals.get(key, {})
  return float(np.mean([r[metric] for r in runs.values()])) if runs else \
      float('nan')


def paired_wins(s: Settings, finals: dict) -> tuple[list[str], dict]:
  """The markdown paired-wins table: ISR vs base per (dataset, alg, metric)."""
  rows = ['| dataset | algorithm | ' + ' | '.join(METRICS) + ' |',
          '|---|---|' + '---|' * len(METRICS)]
  cells = seed_wins = seed_pairs = 0
  wins = 0
  for ds in s.datasets:
    for alg in s.algorithms:
      base = finals.get(('fl', alg, ds, 'base'), {})
      new = finals.get(('fl', alg, ds, 'isr'), {})
      seeds = sorted(set(base) & set(new))
      row = f'| {ds} | {alg} |'
      for metric in METRICS:
        diffs = [new[k][metric] - base[k][metric] for k in seeds]
        b = np.mean([base[k][metric] for k in seeds])
        n = np.mean([new[k][metric] for k in seeds])
        won = bool(diffs) and bool(np.mean(diffs) > 0)
        cells += 1
        wins += int(won)
        seed_wins += int(sum(d > 0 for d in diffs))
        seed_pairs += len(diffs)
        row += (f' {b:.4f} → {n:.4f} ({np.mean(diffs):+.4f}, '
                f'{sum(d > 0 for d in diffs)}/{len(diffs)})'
                f'{" **win**" if won else ""} |')
      rows.append(row)
  summary = {'cell_wins': wins, 'cells': cells, 'seed_wins': seed_wins,
             'seed_pairs': seed_pairs}
  rows.append('')
  rows.append(f'ISR wins {wins}/{cells} cells (mean paired difference > 0) '
              f'and {seed_wins}/{seed_pairs} seed pairs (paper: 37/48 '
              'paired metric wins).')
  return rows, summary


def gap_report(s: Settings, finals: dict) -> tuple[list[str], dict]:
  """CL - FL gap per (dataset, algorithm, metric), base vs ISR."""
  rows = ['| dataset | algorithm | metric | CL base | FL base | gap base | '
          'CL ISR | FL ISR | gap ISR | reduction |',
          '|---|---|---|---|---|---|---|---|---|---|']
  gaps = {}
  for ds in s.datasets:
    for metric in METRICS:
      cl_b = _mean(finals, ('cl', 'centralized', ds, 'base'), metric)
      cl_i = _mean(finals, ('cl', 'centralized', ds, 'isr'), metric)
      for alg in s.algorithms:
        fl_b = _mean(finals, ('fl', alg, ds, 'base'), metric)
        fl_i = _mean(finals, ('fl', alg, ds, 'isr'), metric)
        gb, gi = cl_b - fl_b, cl_i - fl_i
        red = 100. * (gb - gi) / abs(gb) if abs(gb) > 1e-9 else float('nan')
        gaps[(ds, alg, metric)] = (gb, gi, red)
        rows.append(f'| {ds} | {alg} | {metric} | {cl_b:.4f} | {fl_b:.4f} | '
                    f'{gb:+.4f} | {cl_i:.4f} | {fl_i:.4f} | {gi:+.4f} | '
                    f'{red:+.1f}% |')
  summary = {}
  for metric in METRICS:
    gb = [v[0] for k, v in gaps.items() if k[2] == metric]
    gi = [v[1] for k, v in gaps.items() if k[2] == metric]
    mb, mi = float(np.mean(gb)), float(np.mean(gi))
    summary[metric] = {
        'mean_gap_base': mb, 'mean_gap_isr': mi,
        'reduction_pct': 100. * (mb - mi) / abs(mb) if abs(mb) > 1e-9
                         else float('nan')}
  rows.append('')
  for metric, v in summary.items():
    rows.append(f'- {metric}: mean CL-FL gap {v["mean_gap_base"]:+.4f} '
                f'without ISR, {v["mean_gap_isr"]:+.4f} with ISR: '
                f'{v["reduction_pct"]:+.1f}% reduction (paper: 22.60%).')
  return rows, {'per_metric': summary,
                'cells': {'/'.join(k): v for k, v in gaps.items()}}


def ablation_report(s: Settings, finals: dict) -> list[str]:
  rows = ['| dataset | variant | ' + ' | '.join(METRICS) + ' |',
          '|---|---|' + '---|' * len(METRICS)]
  for ds in s.datasets:
    for v, label in (('base', 'plain'), ('mi', 'MI only'),
                     ('ne', 'NE only'), ('isr', 'MI + NE')):
      key = ('fl', 'fedavg', ds, v)
      if key in finals:
        rows.append(f'| {ds} | {label} | ' + ' | '.join(
            f'{_mean(finals, key, m):.4f}' for m in METRICS) + ' |')
  return rows


def mode_report(s: Settings, finals: dict, lines: list[dict]) -> list[str]:
  rows = ['| dataset | mode | variant | test_accuracy | macro_f1 | '
          'client_accuracy_p10 | mean cl_fl_cosine |',
          '|---|---|---|---|---|---|---|']
  for ds in s.datasets:
    for mode, alg in (('cl', 'centralized'), ('fl', 'fedavg'),
                      ('hybrid', 'fedavg')):
      for v in ('base', 'isr'):
        key = (mode, alg, ds, v)
        if key not in finals:
          continue
        cos = [l['cl_fl_cosine'] for l in lines if 'cl_fl_cosine' in l
               and (l['mode'], l['algorithm'], l['dataset'], l['variant'])
               == key]
        cells = [f'{_mean(finals, key, m):.4f}' for m in METRICS]
        cells.append(f'{np.mean(cos):.3f}' if cos else '-')
        rows.append(f'| {ds} | {mode} | {v} | ' + ' | '.join(cells) + ' |')
  return rows


def drift_report(s: Settings, lines: list[dict]) -> tuple[list[str], dict]:
  """Drift metrics averaged over all rounds, base vs ISR."""
  keys = ('drift_sq_dist', 'client_drift', 'update_cosine_mean', 'zeta_sq',
          'b_dissimilarity_sq', 'drift_bound_ratio')
  rows = ['| dataset | algorithm | variant | ' + ' | '.join(keys) + ' |',
          '|---|---|---|' + '---|' * len(keys)]
  summary = {}
  for ds in s.datasets:
    for alg in s.algorithms:
      for v in ('base', 'isr'):
        sel = [l for l in lines if l['mode'] == 'fl' and l['algorithm'] ==
               alg and l['dataset'] == ds and l['variant'] == v]
        if not sel:
          continue
        vals = {k: float(np.mean([l[k] for l in sel])) for k in keys}
        summary[f'{ds}/{alg}/{v}'] = vals
        rows.append(f'| {ds} | {alg} | {v} | ' + ' | '.join(
            f'{vals[k]:.4g}' for k in keys) + ' |')
  lower = sum(summary[f'{ds}/{a}/isr']['drift_sq_dist']
              < summary[f'{ds}/{a}/base']['drift_sq_dist']
              for ds in s.datasets for a in s.algorithms)
  rows.append('')
  rows.append(f'ISR has the lower mean drift ||x_i^K - x||^2 in {lower}/'
              f'{len(s.datasets) * len(s.algorithms)} (dataset, algorithm) '
              'pairs. Drift is measured on the backbone only (aux heads '
              'excluded), averaged over rounds and seeds.')
  return rows, summary


def _curves(lines, key, metric):
  sel = [l for l in lines if (l['mode'], l['algorithm'], l['dataset'],
                              l['variant']) == key]
  rounds = sorted({l['round'] for l in sel})
  return rounds, [float(np.mean([l[metric] for l in sel if l['round'] == r]))
                  for r in rounds]


def _save(fig: Figure, path: str) -> None:
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=90)


def plot_curves(s: Settings, lines: list[dict], metric: str,
                path: str, dataset: str, include_cl: bool) -> None:
  fig = Figure(figsize=(4 * len(s.algorithms), 3.4))
  for i, alg in enumerate(s.algorithms):
    ax = fig.add_subplot(1, len(s.algorithms), i + 1)
    for v, style in (('base', '--'), ('isr', '-')):
      r, y = _curves(lines, ('fl', alg, dataset, v), metric)
      ax.plot(r, y, style, color='C0', label=f'FL {v}')
      if include_cl:
        r, y = _curves(lines, ('cl', 'centralized', dataset, v), metric)
        ax.plot(r, y, style, color='C3', label=f'CL {v}')
    ax.set_title(f'{alg} on {dataset}')
    ax.set_xlabel('round')
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_gap(s: Settings, gaps: dict, path: str) -> None:
  fig = Figure(figsize=(1.6 * len(s.algorithms) * len(s.datasets) + 2, 3.4))
  ax = fig.add_subplot(1, 1, 1)
  labels, base, new = [], [], []
  for ds in s.datasets:
    for alg in s.algorithms:
      gb, gi, _ = gaps['cells']['/'.join((ds, alg, 'test_accuracy'))]
      labels.append(f'{ds}\n{alg}')
      base.append(gb)
      new.append(gi)
  x = np.arange(len(labels))
  ax.bar(x - 0.2, base, 0.4, label='without ISR')
  ax.bar(x + 0.2, new, 0.4, label='with ISR')
  ax.axhline(0, color='k', lw=0.5)
  ax.set_xticks(x)
  ax.set_xticklabels(labels, fontsize=7)
  ax.set_ylabel('CL - FL test accuracy')
  ax.legend()
  fig.tight_layout()
  _save(fig, path)


def write_reports(s: Settings, lines: list[dict], seconds: float) -> dict:
  finals = final_lines(lines, s.rounds)
  wins_rows, wins = paired_wins(s, finals)
  gap_rows, gaps = gap_report(s, finals)
  drift_rows, drift_summary = drift_report(s, lines)
  md = [f'# OmniISR on fedjax_ext ({len(s.seeds)} seeds, {s.rounds} rounds, '
        f'{s.local_steps} local steps, {time.strftime("%Y-%m-%d")})', '',
        f'Settings: `{json.dumps(dataclasses.asdict(s))}`', '',
        f'Wall time: {seconds:.0f} s.', '',
        '## Paired wins of ISR over the plain loss (PureFL)', '',
        'Cell: mean over seeds without → with ISR (mean paired difference, '
        'seeds where ISR is higher).', ''] + wins_rows + [
        '', '## Centralized-federated gap (CL - FL)', ''] + gap_rows + [
        '', '## Ablations (FedAvg)', ''] + ablation_report(s, finals) + [
        '', '## Modes: PureCL, PureFL, Hybrid CL-FL (FedAvg)', '',
        'Hybrid mixes by data size (our reading; see `isr.hybrid`).', ''
        ] + mode_report(s, finals, lines) + [
        '', '## Client drift (PureFL, mean over rounds and seeds)', ''
        ] + drift_rows + ['']
  with open(os.path.join(s.workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(md))
  for ds in s.datasets:
    plot_curves(s, lines, 'test_accuracy',
                os.path.join(s.workdir, f'accuracy_{ds}.png'), ds, True)
    plot_curves(s, lines, 'drift_sq_dist',
                os.path.join(s.workdir, f'drift_{ds}.png'), ds, False)
  plot_gap(s, gaps, os.path.join(s.workdir, 'gap.png'))
  summary = {'paired_wins': wins, 'gap': gaps['per_metric'],
             'gap_cells': gaps['cells'], 'drift': drift_summary,
             'seconds': seconds}
  with open(os.path.join(s.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def run(s: Settings, log=print) -> dict:
  """Runs every configuration and seed, then writes the reports."""
  os.makedirs(s.workdir, exist_ok=True)
  specs = run_specs(s)
  log(f'OmniISR: {len(specs)} configurations x {len(s.seeds)} seeds, '
      f'{s.rounds} rounds each; workdir {s.workdir}')
  t0 = time.perf_counter()
  lines = []
  path = os.path.join(s.workdir, 'metrics.jsonl')
  open(path, 'w').close()
  problems = {(ds, seed): load_problem(s, ds, seed)
              for ds in s.datasets for seed in s.seeds}
  mlp = {ds: models.create_model(
      'mlp', num_classes=problems[(ds, s.seeds[0])].num_classes,
      hidden_sizes=s.hidden_sizes) for ds in s.datasets}
  evaluators = {ds: make_eval(mlp[ds]) for ds in s.datasets}
  for ds in s.datasets:  # Unknown --isr_points fail before any training.
    try:
      isr.capture_features(mlp[ds], mlp[ds].init(
          jax.random.key(0), problems[(ds, s.seeds[0])].federation.train['x']
          [:1])['params'], problems[(ds, s.seeds[0])].federation.train['x']
                           [:1], s.isr_points, train=False)
    except ValueError as e:
      raise training.ConfigError(f'--isr_points: {e}') from e
  for i, spec in enumerate(specs):
    runner = Runner(s, spec, problems[(spec.dataset, s.seeds[0])],
                    mlp[spec.dataset], evaluators[spec.dataset])
    log(f'[{i + 1}/{len(specs)}] {spec.mode} {spec.algorithm} '
        f'{spec.dataset} {spec.variant} ({time.perf_counter() - t0:.0f} s)')
    for seed in s.seeds:
      new = runner.run(problems[(spec.dataset, seed)], seed, log)
      lines += new
      with open(path, 'a') as f:
        for line in new:
          f.write(json.dumps(line) + '\n')
  seconds = time.perf_counter() - t0
  summary = write_reports(s, lines, seconds)
  w = summary['paired_wins']
  acc = summary['gap']['test_accuracy']
  log(f'Done in {seconds:.0f} s: ISR wins {w["cell_wins"]}/{w["cells"]} '
      f'cells; CL-FL test-accuracy gap {acc["mean_gap_base"]:+.4f} -> '
      f'{acc["mean_gap_isr"]:+.4f} ({acc["reduction_pct"]:+.1f}%). '
      f'Tables in {os.path.join(s.workdir, "results.md")}.')
  return summary


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  s = settings_from_flags()
  try:
    run(s)
  except (training.ConfigError, data.DataError) as e:
    fail(str(e))
  except FloatingPointError as e:
    fail(str(e), status=1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
