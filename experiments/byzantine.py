r"""Byzantine robustness sweep: aggregator x attack x worker momentum.

Reproduces, at CPU scale, the experiments the method spec
(../shared/methods/byzantine_split_moe_satellite.md, section 1.8) derives
from Ruan, Wang and Liu, "Byzantine-Robust Distributed SGD: A Unified
Analysis and Tight Error Bounds" (arXiv 2604.10179, 2026):

1. **Grid.** Distributed SGD (one gradient per round, every client each
   round; ``--mode=fedavg`` for local epochs instead) of a logistic
   regression on ``digits`` (20 Dirichlet(``--dirichlet_alpha``) clients)
   and ``leaf_synthetic`` (its 30 natural clients), with Byzantine
   fractions ``--fractions`` of the clients, every aggregator of
   ``--aggregators`` against every attack of ``--attacks``, without and with
   worker momentum ``--momentum``. The robust rules are configured for
   ``b = floor(max(--fractions) * C)`` Byzantine clients. Writes
   ``metrics.jsonl``, ``table.md`` (final test accuracy) and
   ``heatmap.png``.
2. **Quadratic.** :math:`L_i(\theta) = \frac12 \|\theta - c_i\|^2`,
   d = 20, n = 10, b = 2 ALIE attackers: the error floor
   :math:`\|\nabla L_H\|^2` against heterogeneity :math:`G^2` and noise
   :math:`\sigma^2`, with and without momentum (``quadratic.png``,
   ``quadratic.jsonl``).
3. ``--benchmark``: the aggregation step for 100 clients x the 1.2M
   parameters of the EMNIST CNN, relative to a W1 round (10 clients x 200
   examples, batch 20, one local epoch of that CNN), timed in the same run
   (``benchmark.json``).

One compiled program runs all rounds (``lax.scan``) of the four variants
(fractions x momentum) of an (aggregator, attack) pair at once (``vmap``):

  python -m experiments.byzantine --workdir=/tmp/byz            # ~15 min
  python -m experiments.byzantine --quick --workdir=/tmp/byz_q  # seconds
  python -m experiments.byzantine --benchmark --nogrid --noquadratic

Bad flags exit with status 2 and a one-line ``error:`` message.
"""

import itertools
import json
import math
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from matplotlib import figure
import numpy as np
import optax

from experiments._cli import fail
from experiments._cli import parse_flags
from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext import models

AGGREGATORS = ('mean', 'mean_guarded', 'median', 'trimmed_mean', 'krum',
               'multi_krum', 'geometric_median', 'centered_clipping',
               'nnm_trimmed_mean', 'nnm_median', 'bucketing_trimmed_mean',
               'bulyan', 'arc_trimmed_mean', 'arc_nnm_trimmed_mean')
DEFAULT_AGGREGATORS = ('mean', 'median', 'trimmed_mean', 'krum',
                       'geometric_median', 'centered_clipping',
                       'nnm_trimmed_mean')
DEFAULT_ATTACKS = ('none', 'sign_flip', 'alie', 'ipm', 'label_flip', 'mimic',
                   'gaussian', 'nan')
DATASETS = ('digits', 'leaf_synthetic')

flags.DEFINE_string('workdir', None, 'Output directory (required).')
flags.DEFINE_string('data_dir', None, 'TFDS data dir.')
flags.DEFINE_integer('seed', 0, 'Seed of data split, init, Byzantine ids.')
flags.DEFINE_list('datasets', list(DATASETS),
                  f'Datasets: {", ".join(DATASETS)}.')
flags.DEFINE_list('aggregators', list(DEFAULT_AGGREGATORS),
                  f'Aggregators: {", ".join(AGGREGATORS)}.')
flags.DEFINE_list('attacks', list(DEFAULT_ATTACKS),
                  f'Attacks: {", ".join(byzantine.ATTACKS)}.')
flags.DEFINE_list('fractions', ['0.1', '0.2'],
                  'Byzantine fractions of the clients, each in [0, 0.5).')
flags.DEFINE_float('momentum', 0.9, 'Worker momentum beta in (0, 1), run '
                   'beside beta = 0.')
flags.DEFINE_string('mode', 'dsgd', 'dsgd (one gradient per round) or '
                    'fedavg (--local_epochs of local SGD).')
flags.DEFINE_integer('rounds', 300, 'Rounds per run (>= 1).')
flags.DEFINE_integer('batch_size', 16, 'Minibatch size per client (>= 1).')
flags.DEFINE_float('lr', 0.5, 'Step size gamma (dsgd: server; fedavg: '
                   'client), > 0.')
flags.DEFINE_float('local_epochs', 1.0, 'Local epochs of --mode=fedavg.')
flags.DEFINE_integer('num_clients', 20, 'Clients of digits (>= 4).')
flags.DEFINE_float('dirichlet_alpha', 1.0, 'Label skew of digits (> 0).')
flags.DEFINE_float('alie_z', None, 'ALIE z; default: Baruch et al. z_max.')
flags.DEFINE_float('ipm_epsilon', 0.1, 'IPM epsilon (> 0).')
flags.DEFINE_list('optimal_factors',
                  [f'{f:g}' for f in byzantine.OPTIMAL_FACTORS],
                  'Grid of factors (ALIE z, IPM epsilon) the *_optimal '
                  'attacks search each round.')
flags.DEFINE_float('gaussian_scale', 1.0, 'Gaussian attack std (> 0).')
flags.DEFINE_float('cc_radius', 1.0, 'Centered clipping radius (> 0).')
flags.DEFINE_bool('grid', True, 'Run the aggregator x attack grid.')
flags.DEFINE_bool('quadratic', True, 'Run the synthetic quadratic.')
flags.DEFINE_bool('benchmark', False, 'Time aggregation vs a W1 round.')
flags.DEFINE_bool('benchmark_sort', False, 'Also time median and trimmed '
                  'mean with jnp.sort (the baseline; ~12 s each on CPU).')
flags.DEFINE_bool('quick', False, 'Tiny settings for tests (seconds).')

FLAGS = flags.FLAGS



def log(message: str) -> None:
  print(message, flush=True)


# ---------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------


def check_flags() -> dict:
  """Validates flags; returns the settings (after --quick)."""
  if not FLAGS.workdir:
    fail('--workdir is required.')
  for name in FLAGS.datasets:
    if name not in DATASETS:
      fail(f'unknown --datasets value {name!r}; valid choices: '
           f'{", ".join(DATASETS)}.')
  for name in FLAGS.aggregators:
    if name not in AGGREGATORS:
      fail(f'unknown --aggregators value {name!r}; valid choices: '
           f'{", ".join(AGGREGATORS)}.')
  for name in FLAGS.attacks:
    if name not in byzantine.ATTACKS:
      fail(f'unknown --attacks value {name!r}; valid choices: '
           f'{", ".join(byzantine.ATTACKS)}.')
  try:
    fractions = [float(f) for f in FLAGS.fractions]
  except ValueError:
    fail(f'--fractions must be numbers, got {",".join(FLAGS.fractions)!r}.')
  if not fractions or any(not 0 <= f < 0.5 for f in fractions):
    fail('--fractions must each be in [0, 0.5).')
  if FLAGS.mode not in byzantine.MODES:
    fail(f'unknown --mode {FLAGS.mode!r}; valid choices: '
         f'{", ".join(byzantine.MODES)}.')
  if not 0 < FLAGS.momentum < 1:
    fail(f'--momentum must be in (0, 1), got {FLAGS.momentum}.')
  for name in ('rounds', 'batch_size'):
    if FLAGS[name].value < 1:
      fail(f'--{name} must be >= 1, got {FLAGS[name].value}.')
  if FLAGS.num_clients < 4:
    fail(f'--num_clients must be >= 4, got {FLAGS.num_clients}.')
  for name in ('lr', 'local_epochs', 'dirichlet_alpha', 'ipm_epsilon',
               'gaussian_scale', 'cc_radius'):
    if not FLAGS[name].value > 0:
      fail(f'--{name} must be > 0, got {FLAGS[name].value}.')
  try:
    factors = [float(f) for f in FLAGS.optimal_factors]
  except ValueError:
    fail('--optimal_factors must be numbers, got '
         f'{",".join(FLAGS.optimal_factors)!r}.')
  if not factors or any(not f > 0 for f in factors):
    fail('--optimal_factors must be a non-empty list of numbers > 0.')
  settings = dict(
      datasets=list(FLAGS.datasets), aggregators=list(FLAGS.aggregators),
      attacks=list(FLAGS.attacks), fractions=fractions,
      rounds=FLAGS.rounds, quad_rounds=1000, quad_seeds=4)
  if FLAGS.quick:
    settings.update(datasets=['digits'], aggregators=['mean',
                                                      'nnm_trimmed_mean'],
                    attacks=['nan', 'alie_optimal'], rounds=5,
                    quad_rounds=50,
                    quad_seeds=1)
  return settings


def make_aggregator(name: str, b: int) -> core.Aggregator:
  a = aggregators
  return {
      'mean': a.mean,
      'mean_guarded': lambda: a.mean(reject_non_finite=True),
      'median': a.coordinate_median,
      'trimmed_mean': lambda: a.trimmed_mean(b),
      'krum': lambda: a.krum(b),
      'multi_krum': lambda: a.multi_krum(b),
      'geometric_median': a.geometric_median,
      'centered_clipping': lambda: a.centered_clipping(FLAGS.cc_radius),
      'nnm_trimmed_mean': lambda: a.process(a.nnm(b), a.trimmed_mean(b)),
      'nnm_median': lambda: a.process(a.nnm(b), a.coordinate_median()),
      'bucketing_trimmed_mean': lambda: a.process(
          a.bucketing(2, key=jax.random.key(FLAGS.seed)),
          a.trimmed_mean(b // 2)),
      'bulyan': lambda: a.bulyan(b),
      'arc_trimmed_mean': lambda: a.process(a.arc(b), a.trimmed_mean(b)),
      'arc_nnm_trimmed_mean': lambda: a.process(a.arc(b), a.nnm(b),
                                                a.trimmed_mean(b)),
  }[name]()


def make_attack(name: str, aggregator: core.Aggregator) -> byzantine.Attack:
  """The attack ``name``; the optimal ones target ``aggregator``."""
  factors = [float(f) for f in FLAGS.optimal_factors]
  kwargs = {'alie': dict(z=FLAGS.alie_z),
            'ipm': dict(epsilon=FLAGS.ipm_epsilon),
            'gaussian': dict(scale=FLAGS.gaussian_scale),
            'alie_optimal': dict(aggregator=aggregator, factors=factors),
            'ipm_optimal': dict(aggregator=aggregator, factors=factors),
            }.get(name, {})
  return byzantine.create_attack(name, **kwargs)


# ---------------------------------------------------------------------------
# The grid.
# ---------------------------------------------------------------------------


def load_clients(name: str):
  """(train columns, per-client rows, test columns, num_classes)."""
  dataset = data.load_dataset(name, data_dir=FLAGS.data_dir)
  train = {k: dataset.train[k] for k in ('x', 'y')}
  if name == 'leaf_synthetic':
    parts = data.natural_partition(dataset.train['client_id'])
  else:
    parts = data.partition('dirichlet', train, FLAGS.num_clients,
                           seed=FLAGS.seed,
                           dirichlet_alpha=FLAGS.dirichlet_alpha)
  test = {k: dataset.test[k] for k in ('x', 'y')}
  return train, parts, test, dataset.num_classes


def pack_all_rounds(train, parts, rounds: int, num_steps: int,
                    local_epochs):
  """Every round's cohort (all clients) stacked: leaves [T, C, S, B, ...]."""
  ids = np.arange(len(parts), dtype=np.int32)
  cohorts = [data.pack_cohort(train, parts, ids,
                              batch_size=FLAGS.batch_size,
                              num_steps=num_steps, seed=FLAGS.seed,
                              round_num=r, local_epochs=local_epochs)
             for r in range(rounds)]
  return jax.tree.map(lambda *xs: np.stack(xs), *cohorts)


def run_pair(model, params, loss_fn, test, cohorts, flags_v, betas,
             aggregator, attack, num_classes):
  """All rounds of the variants (flags_v [V, C], betas [V]) of one pair."""
  test_x, test_y = jnp.asarray(test['x']), jnp.asarray(test['y'])
  key = jax.random.key(FLAGS.seed)
  num_clients = flags_v.shape[1]

  def one_variant(byz_flags, beta):
    if FLAGS.mode == 'dsgd':
      algorithm = byzantine.robust_algorithm(
          loss_fn, aggregator, optax.sgd(FLAGS.lr), mode='dsgd',
          attack=attack, num_classes=num_classes, momentum=beta)
    else:
      algorithm = byzantine.robust_algorithm(
          loss_fn, aggregator, optax.sgd(1.0), mode='fedavg',
          client_optimizer=optax.sgd(FLAGS.lr), attack=attack,
          num_classes=num_classes, momentum=beta, execution='vmap')
    state = algorithm.init(params)
    store = core.tree_broadcast(algorithm.init_client_state(params),
                                num_clients)

    def round_fn(carry, cohort):
      state, store = carry
      batches = dict(cohort.batches)
      batches[byzantine.BYZANTINE] = byz_flags
      state, store, metrics = algorithm.apply(
          state, store, cohort._replace(batches=batches), key)
      factor = metrics.get('attack_factor', jnp.zeros(()))
      return (state, store), (metrics['train_loss'],
                              metrics['rejected_updates'], factor)

    (state, _), (losses, rejected, factors) = jax.lax.scan(
        round_fn, (state, store), cohorts)
    logits = model.apply({'params': state.params}, test_x, train=False)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == test_y)
    finite = core.tree_all_finite(state.params)
    return (accuracy, jnp.mean(losses[-10:]), jnp.sum(rejected), finite,
            jnp.median(factors))

  return jax.jit(jax.vmap(one_variant))(flags_v, betas)


def run_grid(settings, workdir):
  results = []
  fractions = settings['fractions']
  for name in settings['datasets']:
    train, parts, test, num_classes = load_clients(name)
    num_clients = len(parts)
    b = int(math.floor(max(fractions) * num_clients))
    if FLAGS.mode == 'dsgd':
      num_steps, local_epochs = 1, None
    else:
      num_steps = data.num_local_steps([len(p) for p in parts],
                                       FLAGS.batch_size,
                                       local_epochs=FLAGS.local_epochs)
      local_epochs = FLAGS.local_epochs
    cohort = pack_all_rounds(train, parts, settings['rounds'], num_steps,
                             local_epochs)
    cohorts = core.Cohort(jnp.asarray(cohort.client_ids),
                          jax.tree.map(jnp.asarray, cohort.batches),
                          jnp.asarray(cohort.num_examples))
    model = models.create_model('logistic', num_classes=num_classes)
    params = model.init(jax.random.key(FLAGS.seed), train['x'][:1])['params']
    loss_fn = clients.classification_loss(model)
    variants = list(itertools.product(fractions, (0., FLAGS.momentum)))
    flags_v = np.stack([
        np.isin(np.arange(num_clients), byzantine.byzantine_ids(
            num_clients, f, seed=FLAGS.seed)).astype(np.float32)
        for f, _ in variants])
    betas = np.array([beta for _, beta in variants], np.float32)
    log(f'{name}: {num_clients} clients, defence b={b}, '
        f'{settings["rounds"]} rounds of {FLAGS.mode}; Byzantine per '
        f'fraction: {[int(f.sum()) for f in flags_v[::2]]}')
    for agg_name, attack_name in itertools.product(settings['aggregators'],
                                                   settings['attacks']):
      t0 = time.perf_counter()
      aggregator = make_aggregator(agg_name, b)
      acc, loss, rejected, finite, factor = jax.device_get(run_pair(
          model, params, loss_fn, test, cohorts, jnp.asarray(flags_v),
          jnp.asarray(betas), aggregator,
          make_attack(attack_name, aggregator), num_classes))
      for v, (fraction, beta) in enumerate(variants):
        results.append(dict(
            dataset=name, aggregator=agg_name, attack=attack_name,
            fraction=fraction, momentum=float(beta),
            test_accuracy=float(acc[v]), train_loss=float(loss[v]),
            rejected_updates=int(rejected[v]), finite=bool(finite[v]),
            median_attack_factor=float(factor[v])))
      chosen = (' factor ' + '/'.join(f'{x:g}' for x in factor)
                if attack_name.endswith('_optimal') else '')
      log(f'  {agg_name:>22} x {attack_name:<12} '
          + ' '.join(f'f={f} b={beta:g}: {a:.3f}'
                     for (f, beta), a in zip(variants, acc))
          + f'{chosen}  ({time.perf_counter() - t0:.1f}s)')
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for line in results:
      f.write(json.dumps(line) + '\n')
  write_table(results, settings, os.path.join(workdir, 'table.md'))
  plot_heatmaps(results, settings, os.path.join(workdir, 'heatmap.png'))
  return results


def _cell(results, **where):
  for r in results:
    if all(r[k] == v for k, v in where.items()):
      return r
  return None


def write_table(results, settings, path):
  lines = ['# Final test accuracy (%) under attack', '',
           f'mode={FLAGS.mode}, rounds={settings["rounds"]}, '
           f'lr={FLAGS.lr}, batch={FLAGS.batch_size}, seed={FLAGS.seed}; '
           f'm = worker momentum {FLAGS.momentum}. NaN params show as 0 '
           'in the plot and "nan" here.', '']
  for name, fraction in itertools.product(settings['datasets'],
                                          settings['fractions']):
    lines += [f'## {name}, Byzantine fraction {fraction}', '',
              '| aggregator | ' + ' | '.join(settings['attacks']) + ' |',
              '|---' * (len(settings['attacks']) + 1) + '|']
    for agg, beta in itertools.product(settings['aggregators'],
                                       (0., FLAGS.momentum)):
      row = []
      for attack in settings['attacks']:
        r = _cell(results, dataset=name, fraction=fraction, aggregator=agg,
                  attack=attack, momentum=float(beta))
        row.append('nan' if not r['finite'] else
                   f'{100 * r["test_accuracy"]:.1f}')
      label = agg + (f' + m{FLAGS.momentum:g}' if beta else '')
      lines.append(f'| {label} | ' + ' | '.join(row) + ' |')
    lines.append('')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def plot_heatmaps(results, settings, path):
  panels = list(itertools.product(settings['datasets'],
                                  settings['fractions']))
  fig = figure.Figure(figsize=(1.0 * len(settings['attacks']) + 3,
                               0.45 * len(settings['aggregators']) * 2 * len(
                                   panels) + 1.5))
  axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
  rows = list(itertools.product(settings['aggregators'],
                                (0., FLAGS.momentum)))
  for ax, (name, fraction) in zip(axes, panels):
    grid = np.zeros((len(rows), len(settings['attacks'])))
    for i, (agg, beta) in enumerate(rows):
      for j, attack in enumerate(settings['attacks']):
        r = _cell(results, dataset=name, fraction=fraction, aggregator=agg,
                  attack=attack, momentum=float(beta))
        grid[i, j] = 100 * r['test_accuracy'] if r['finite'] else 0.
    im = ax.imshow(grid, vmin=0, vmax=100, cmap='viridis', aspect='auto')
    for i, j in itertools.product(range(len(rows)),
                                  range(len(settings['attacks']))):
      ax.text(j, i, f'{grid[i, j]:.0f}', ha='center', va='center',
              fontsize=7, color='w' if grid[i, j] < 60 else 'k')
    ax.set_xticks(range(len(settings['attacks'])), settings['attacks'],
                  fontsize=8)
    ax.set_yticks(range(len(rows)),
                  [a + (' +m' if beta else '') for a, beta in rows],
                  fontsize=7)
    ax.set_title(f'{name}, Byzantine fraction {fraction}: test accuracy %',
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------
# The synthetic quadratic.
# ---------------------------------------------------------------------------

QUAD_N, QUAD_B, QUAD_D, QUAD_GAMMA = 10, 2, 20, 0.1
QUAD_G2 = (0., 0.25, 1., 4., 16.)
QUAD_S2 = (0., 0.25, 1., 4., 16.)


def quadratic_floor(agg: core.Aggregator, g2, s2, beta, seed, rounds):
  r"""Plateau of :math:`\|\nabla L_H\|^2 = \|\theta - \bar c_H\|^2`.

  Honest centres :math:`c_i` with :math:`\frac{1}{|H|}\sum\|c_i - \bar
  c_H\|^2 = G^2`, gradient noise with :math:`E\|\xi\|^2 = \sigma^2`, the last
  ``QUAD_B`` workers Byzantine (ALIE), DSGD with EMA momentum beta, step
  ``QUAD_GAMMA``; the floor is the mean over the last fifth of the rounds.
  """
  key = jax.random.key(seed)
  honest = QUAD_N - QUAD_B
  k_c, k_run = jax.random.split(key)
  c = jax.random.normal(k_c, (honest, QUAD_D))
  c = c - c.mean(0)
  c = c * jnp.sqrt(g2 / jnp.maximum(jnp.mean(jnp.sum(c ** 2, 1)), 1e-12))
  c = jnp.concatenate([c, jnp.zeros((QUAD_B, QUAD_D))])  # c_H mean = 0.
  byz = jnp.arange(QUAD_N) >= honest
  attack = make_attack('alie', agg)
  weights = jnp.ones(QUAD_N)

  def step(carry, t):
    theta, m, agg_state = carry
    k = jax.random.fold_in(k_run, t)
    noise = jax.random.normal(k, (QUAD_N, QUAD_D)) * jnp.sqrt(s2 / QUAD_D)
    g = theta[None] - c + noise
    m = beta * m + (1 - beta) * g
    sent = attack.corrupt(m, byz, weights, jax.random.fold_in(k, 1))
    r, agg_state = agg.update(sent, agg_state, weights=weights)
    theta = theta - QUAD_GAMMA * r
    return (theta, m, agg_state), jnp.sum(theta ** 2)

  init = (jnp.full((QUAD_D,), 5.), jnp.zeros((QUAD_N, QUAD_D)),
          agg.init(jnp.zeros(QUAD_D)))
  _, errs = jax.lax.scan(step, init, jnp.arange(rounds))
  return jnp.mean(errs[-(rounds // 5):])


def run_quadratic(settings, workdir):
  names = (['trimmed_mean', 'nnm_trimmed_mean'] if not FLAGS.quick
           else ['trimmed_mean'])
  betas = (0., FLAGS.momentum)
  points = ([(g2, 1.) for g2 in QUAD_G2] + [(1., s2) for s2 in QUAD_S2])
  grid = np.array([(g2, s2, beta, seed) for (g2, s2), beta, seed in
                   itertools.product(points, betas,
                                     range(settings['quad_seeds']))],
                  np.float32)
  lines = []
  for name in names:
    agg = make_aggregator(name, QUAD_B)
    fn = jax.jit(jax.vmap(lambda g2, s2, beta, seed: quadratic_floor(
        agg, g2, s2, beta, seed.astype(jnp.int32),
        settings['quad_rounds'])))
    floors = np.asarray(fn(*(jnp.asarray(grid[:, i]) for i in range(4))))
    for (g2, s2), beta in itertools.product(points, betas):
      sel = (grid[:, 0] == g2) & (grid[:, 1] == s2) & (
          grid[:, 2] == np.float32(beta))
      lines.append(dict(aggregator=name, G2=float(g2), sigma2=float(s2),
                        momentum=float(beta),
                        floor=float(floors[sel].mean())))
    log(f'quadratic {name}: ' + ', '.join(
        f'(G2={l["G2"]:g}, s2={l["sigma2"]:g}, b={l["momentum"]:g}) '
        f'{l["floor"]:.3g}' for l in lines if l['aggregator'] == name))
  with open(os.path.join(workdir, 'quadratic.jsonl'), 'w') as f:
    for line in lines:
      f.write(json.dumps(line) + '\n')
  fig = figure.Figure(figsize=(10, 4))
  ax_g, ax_s = fig.subplots(1, 2)
  for name, beta in itertools.product(names, betas):
    style = '-' if beta else '--'
    label = f'{name}, beta={beta:g}'
    sel = [l for l in lines if l['aggregator'] == name and
           l['momentum'] == float(beta)]
    g_pts = sorted({(l['G2'], l['floor']) for l in sel if l['sigma2'] == 1.})
    s_pts = sorted({(l['sigma2'], l['floor']) for l in sel if l['G2'] == 1.})
    ax_g.plot(*zip(*g_pts), style, marker='o', label=label)
    ax_s.plot(*zip(*s_pts), style, marker='o', label=label)
  ax_g.set(xlabel='heterogeneity G^2 (sigma^2 = 1)',
           ylabel='floor of ||grad L_H||^2', title='floor vs G^2')
  ax_s.set(xlabel='noise sigma^2 (G^2 = 1)', title='floor vs sigma^2')
  for ax in (ax_g, ax_s):
    ax.set_xscale('symlog', linthresh=0.25)
    ax.set_yscale('log')
    ax.legend(fontsize=7)
  fig.suptitle(f'Quadratic, n={QUAD_N}, b={QUAD_B} ALIE, d={QUAD_D}, '
               f'gamma={QUAD_GAMMA}')
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'quadratic.png'), dpi=110)
  return lines


# ---------------------------------------------------------------------------
# Benchmark: aggregation of 100 x 1.2M vs a W1 round.
# ---------------------------------------------------------------------------


def _time(fn, *args, repeats=3):
  """(compile + first call, median wall, median process CPU) seconds.

  Process CPU time counts every thread: XLA:CPU runs the aggregators on one
  core but spreads a W1 round's convolutions over both, so the wall-time
  ratio is the one the target is about and the CPU ratio shows the work.
  """
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  first = time.perf_counter() - t0
  walls, cpus = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  return first, float(np.median(walls)), float(np.median(cpus))


def run_benchmark(workdir):
  model = models.create_model('cnn', num_classes=62)
  rng = np.random.default_rng(0)
  params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1),
                                                  np.float32))['params']
  num_params = sum(p.size for p in jax.tree.leaves(params))
  algorithm = algorithms.fed_avg(
      clients.classification_loss(model), optax.sgd(0.05), optax.sgd(1.),
      unroll=True)
  cohort = core.Cohort(
      jnp.arange(10, dtype=jnp.int32),
      {'x': jnp.asarray(rng.uniform(size=(10, 10, 20, 28, 28, 1)),
                        jnp.float32),
       'y': jnp.asarray(rng.integers(0, 62, (10, 10, 20)), jnp.int32),
       'mask': jnp.ones((10, 10, 20), jnp.float32)},
      jnp.full((10,), 200., jnp.float32))
  state = algorithm.init(params)
  round_fn = jax.jit(lambda s, c: algorithm.apply(s, (), c,
                                                  jax.random.key(0))[0])
  log(f'benchmark: W1 round (10 clients x 200 examples, batch 20, CNN with '
      f'{num_params} params)...')
  _, w1, w1_cpu = _time(round_fn, state, cohort)
  log(f'  W1 round: {w1:.3f} s wall, {w1_cpu:.3f} s CPU')
  stacked = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=(100,) + p.shape) * 0.01,
                            jnp.float32), params)
  weights = jnp.ones(100)
  out = {'num_params': int(num_params), 'w1_round_s': w1,
         'w1_round_cpu_s': w1_cpu, 'clients': 100, 'aggregators': {},
         'load_average': os.getloadavg()}
  b = 20
  names = [n for n in AGGREGATORS if n != 'mean_guarded']
  if FLAGS.benchmark_sort:
    names += ['median@sort', 'trimmed_mean@sort']
  for name in names:
    base, _, method = name.partition('@')
    if method:
      agg = {'median': aggregators.coordinate_median(method=method),
             'trimmed_mean': aggregators.trimmed_mean(b, method=method)
             }[base]
    else:
      agg = make_aggregator(name, b)
    state0 = agg.init(params)
    fn = jax.jit(lambda u, s, w, agg=agg: agg.update(u, s, weights=w)[0])
    try:
      first, t, cpu = _time(fn, stacked, state0, weights,
                            repeats=1 if method else 3)
    except Exception as e:  # pylint: disable=broad-except
      log(f'  {name}: failed ({type(e).__name__}: {e})')
      continue
    out['aggregators'][name] = {
        'seconds': t, 'cpu_seconds': cpu, 'compile_and_first_s': first,
        'fraction_of_w1': t / w1, 'cpu_fraction_of_w1': cpu / w1_cpu}
    log(f'  {name:>24}: {t:.3f} s = {100 * t / w1:.1f}% of a W1 round '
        f'(CPU {cpu:.3f} s = {100 * cpu / w1_cpu:.1f}%; compile + first '
        f'call {first:.1f} s)')
  out['load_average_after'] = os.getloadavg()
  with open(os.path.join(workdir, 'benchmark.json'), 'w') as f:
    json.dump(out, f, indent=1)
  return out


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  settings = check_flags()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, 'config.json'), 'w') as f:
    json.dump(dict(FLAGS.flag_values_dict(), **settings), f, indent=1,
              default=str)
  t0 = time.perf_counter()
  if FLAGS.grid:
    run_grid(settings, FLAGS.workdir)
  if FLAGS.quadratic:
    run_quadratic(settings, FLAGS.workdir)
  if FLAGS.benchmark:
    run_benchmark(FLAGS.workdir)
  log(f'done in {time.perf_counter() - t0:.0f}s; outputs in {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
