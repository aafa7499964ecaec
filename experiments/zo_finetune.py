r"""Zeroth-order fine-tuning on a shifted task: FO SGD, MeZO, sparse, CurvZO.

An MLP is pre-trained with first-order SGD on digits 0-4 of the embedded
`digits` data (scikit-learn's 8x8 digits), then fine-tuned on digits 5-9
relabelled 0-4 (the same 5-way head must learn new classes) by each method,
all from the same pre-trained parameters and with the same batches:

* ``sgd``: first-order SGD (the reference; backprop memory);
* ``mezo``: dense two-point SPSA (`zo.mezo`);
* ``uniform_sparse``: Horvitz-Thompson sparse ZO, uniform blocks, fixed
  budget (`zo.sparse_zo`);
* ``curvzo_fixed``: curvature-guided blocks, fixed budget (`zo.curvzo`,
  ``adaptive_budget=False``);
* ``curvzo``: full CurvZO (adaptive budget).

Centralized: one step = one batch. Federated: the fine-tuning data is split
IID over clients; each round samples a cohort, runs local steps and uploads
deltas (FO) or (seed, scalar) pairs that the server replays (ZO,
``--upload=seeds``), and the bytes each client sends are logged.

  python -m experiments.zo_finetune --workdir=/tmp/zo
  python -m experiments.zo_finetune --quick --workdir=/tmp/zo_quick

Writes WORKDIR/metrics.jsonl (one line per evaluation, with ``mode``,
``method``, ``step``, ``wall_s``, ``train_loss``, ``test_loss``,
``test_accuracy``; then one ``summary`` line per mode and method, and the
EMNIST-CNN upload-bytes line) and WORKDIR/zo_{centralized,federated}.png
(loss and accuracy against steps and against wall time). Bad flags exit
with status 2 and a one-line message.
"""

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
from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import data
from fedjax_ext import models
from fedjax_ext import zo

METHODS = ('sgd', 'mezo', 'uniform_sparse', 'curvzo_fixed', 'curvzo')
MODES = ('centralized', 'federated')

flags.DEFINE_string('workdir', None, 'Output directory (required).')
flags.DEFINE_string('data_dir', None, 'TFDS data dir for the embedded '
                    'digits data (default: $FEDJAX_EXT_DATA_DIR or '
                    '~/tensorflow_datasets).')
flags.DEFINE_list('methods', list(METHODS), f'Methods: {", ".join(METHODS)}.')
flags.DEFINE_list('modes', list(MODES), f'Modes: {", ".join(MODES)}.')
flags.DEFINE_integer('seed', 0, 'Seed of init, batches, keys, split.')
flags.DEFINE_bool('quick', False, 'Tiny run for tests (overrides sizes).')
flags.DEFINE_list('hidden_sizes', ['64', '64'], 'MLP hidden layer sizes.')
flags.DEFINE_integer('pretrain_steps', 400, 'First-order pre-training steps '
                     'on digits 0-4.')
flags.DEFINE_float('pretrain_lr', 0.1, 'Pre-training SGD learning rate.')
flags.DEFINE_integer('steps', 4000, 'Centralized fine-tuning steps.')
flags.DEFINE_integer('batch_size', 32, 'Batch size.')
flags.DEFINE_float('sgd_lr', 0.05, 'First-order fine-tuning learning rate.')
flags.DEFINE_float('zo_lr', 0.001, 'Learning rate of the ZO methods that '
                   '--method_lrs does not list.')
flags.DEFINE_list('method_lrs', ['mezo=0.002', 'uniform_sparse=0.00125'],
                  'Per-method learning rates, METHOD=LR, overriding --zo_lr '
                  '(and --sgd_lr for sgd). The defaults with --zo_lr are each '
                  "method's rate selected on training loss on tuning seeds "
                  '10-12 (BUILD_NOTES); empty: one rate for every ZO method.')
flags.DEFINE_float('epsilon', 1e-3, 'ZO perturbation size.')
flags.DEFINE_integer('num_directions', 1, 'ZO directions per step (q).')
flags.DEFINE_float('budget', 0.4, 'Sparse budget: fraction of blocks, in '
                   '(0, 1]; the adaptive start for curvzo, in [0.1, 0.8].')
flags.DEFINE_string('score_rule', 'port',
                    f'CurvZO score rule: {", ".join(zo.SCORE_RULES)}.')
flags.DEFINE_float('uniform_mix', 0.0, 'CurvZO exploration mix with '
                   'uniform sampling, in [0, 1] (a reconstruction; 0 is the '
                   "port's sampler).")
flags.DEFINE_integer('eval_every', 200, 'Evaluate every N steps (rounds '
                     'in federated mode).')
flags.DEFINE_integer('rounds', 300, 'Federated rounds.')
flags.DEFINE_integer('num_clients', 20, 'Federated clients.')
flags.DEFINE_integer('clients_per_round', 5, 'Clients per round.')
flags.DEFINE_integer('local_steps', 10, 'Local steps per round.')
flags.DEFINE_integer('timing_repeats', 15, 'Interleaved timing repeats '
                     'of one --eval_every chunk per centralized method.')
flags.DEFINE_string('upload', 'seeds', f'ZO client uploads: '
                    f'{", ".join(zo.UPLOADS)}.')
flags.DEFINE_bool('carry_sampler', True, 'Federated: the server carries the '
                  "sparse ZO sampler state (CurvZO's scores, G, budget) "
                  'across rounds and broadcasts it; false restarts it cold '
                  'every round.')

FLAGS = flags.FLAGS



def check_flags():
  """Validates the flags; one-line error and status 2 for bad input."""
  if not FLAGS.workdir:
    fail('--workdir is required.')
  for name, value, choices in (('methods', FLAGS.methods, METHODS),
                               ('modes', FLAGS.modes, MODES)):
    for v in value:
      if v not in choices:
        fail(f'unknown --{name} entry {v!r}; valid choices: '
             f'{", ".join(choices)}.')
  if FLAGS.upload not in zo.UPLOADS:
    fail(f'unknown --upload {FLAGS.upload!r}; valid choices: '
         f'{", ".join(zo.UPLOADS)}.')
  if FLAGS.score_rule not in zo.SCORE_RULES:
    fail(f'unknown --score_rule {FLAGS.score_rule!r}; valid choices: '
         f'{", ".join(zo.SCORE_RULES)}.')
  try:
    hidden = tuple(int(h) for h in FLAGS.hidden_sizes)
  except ValueError:
    fail('--hidden_sizes must be a list of positive integers.')
  if any(h < 1 for h in hidden):
    fail('--hidden_sizes must be a list of positive integers.')
  positive_ints = ('pretrain_steps', 'steps', 'batch_size', 'num_directions',
                   'eval_every', 'rounds', 'num_clients', 'timing_repeats',
                   'clients_per_round', 'local_steps')
  for name in positive_ints:
    if FLAGS[name].value < 1:
      fail(f'--{name} must be >= 1, got {FLAGS[name].value}.')
  method_lrs = {}
  for entry in FLAGS.method_lrs:
    method, _, value = entry.partition('=')
    if method not in METHODS:
      fail(f'unknown --method_lrs method {method!r}; valid choices: '
           f'{", ".join(METHODS)}.')
    try:
      method_lrs[method] = float(value)
    except ValueError:
      fail(f'--method_lrs entries must be METHOD=LR, got {entry!r}.')
    if not 0 < method_lrs[method] < math.inf:
      fail(f'--method_lrs {method} must be a finite number > 0, got '
           f'{value}.')
  FLAGS.method_lrs = [f'{m}={lr}' for m, lr in method_lrs.items()]
  for name in ('pretrain_lr', 'sgd_lr', 'zo_lr', 'epsilon'):
    if not 0 < FLAGS[name].value < math.inf:
      fail(f'--{name} must be a finite number > 0, got '
           f'{FLAGS[name].value}.')
  if not 0 <= FLAGS.uniform_mix <= 1:
    fail(f'--uniform_mix must be in [0, 1], got {FLAGS.uniform_mix}.')
  if not 0.1 <= FLAGS.budget <= 0.8:
    fail(f'--budget must be in [0.1, 0.8], got {FLAGS.budget}.')
  if FLAGS.clients_per_round > FLAGS.num_clients:
    fail(f'--clients_per_round must be in [1, {FLAGS.num_clients}] '
         f'(--num_clients), got {FLAGS.clients_per_round}.')
  return hidden


def settings(hidden):
  """The run's sizes; --quick shrinks them for tests."""
  s = dict(hidden=hidden, pretrain_steps=FLAGS.pretrain_steps,
           steps=FLAGS.steps, eval_every=FLAGS.eval_every,
           rounds=FLAGS.rounds, local_steps=FLAGS.local_steps,
           num_clients=FLAGS.num_clients,
           clients_per_round=FLAGS.clients_per_round,
           timing_repeats=FLAGS.timing_repeats)
  if FLAGS.quick:
    s.update(hidden=(16,), pretrain_steps=50, steps=40, eval_every=20,
             timing_repeats=1,
             rounds=4, local_steps=3, num_clients=6, clients_per_round=3)
  return s


def split_tasks(dataset):
  """(task A = digits 0-4, task B = digits 5-9 relabelled 0-4)."""
  def select(examples, lo):
    keep = (examples['y'] >= lo) & (examples['y'] < lo + 5)
    return {'x': examples['x'][keep],
            'y': (examples['y'][keep] - lo).astype(np.int32)}
  return ({'train': select(dataset.train, 0), 'test': select(dataset.test, 0)},
          {'train': select(dataset.train, 5), 'test': select(dataset.test, 5)})


def learning_rate(method):
  """The method's rate: --method_lrs, else --sgd_lr or --zo_lr."""
  lrs = dict(entry.split('=') for entry in FLAGS.method_lrs)
  if method in lrs:
    return float(lrs[method])
  return FLAGS.sgd_lr if method == 'sgd' else FLAGS.zo_lr


def zo_estimator(method, key):
  common = dict(epsilon=FLAGS.epsilon, num_directions=FLAGS.num_directions,
                key=key)
  if method == 'mezo':
    return zo.mezo(**common)
  if method == 'uniform_sparse':
    return zo.sparse_zo(budget=FLAGS.budget, **common)
  return zo.curvzo(budget=FLAGS.budget, score_rule=FLAGS.score_rule,
                   uniform_mix=FLAGS.uniform_mix,
                   adaptive_budget=(method == 'curvzo'), **common)


def make_evaluate(model, task):
  xs = {k: jnp.asarray(v) for k, v in task['train'].items()}
  xt = {k: jnp.asarray(v) for k, v in task['test'].items()}

  @jax.jit
  def evaluate(params):
    out = {}
    for name, ex in (('train', xs), ('test', xt)):
      logits = model.apply({'params': params}, ex['x'], train=False)
      out[f'{name}_loss'] = jnp.mean(
          clients.per_example_cross_entropy(logits, ex['y']))
      out[f'{name}_accuracy'] = jnp.mean(
          (jnp.argmax(logits, -1) == ex['y']).astype(jnp.float32))
    return out

  return lambda p: {k: float(v) for k, v in evaluate(p).items()}


def batch_indices(rng, num_examples, steps, batch_size):
  return rng.integers(0, num_examples, size=(steps, batch_size))


def pretrain(model, loss_fn, params, task, steps, lr, seed):
  tx = optax.sgd(lr)
  train = {k: jnp.asarray(v) for k, v in task['train'].items()}

  @jax.jit
  def run(params, idx):
    def step(carry, ix):
      p, s = carry
      batch = {'x': train['x'][ix], 'y': train['y'][ix],
               'mask': jnp.ones(ix.shape, jnp.float32)}
      g = jax.grad(lambda q: loss_fn(q, batch, jax.random.key(0))[0])(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
    return p

  rng = np.random.default_rng([seed, 1])
  idx = batch_indices(rng, len(task['train']['y']), steps, FLAGS.batch_size)
  return run(params, jnp.asarray(idx))


def centralized(method, params0, loss_fn, task, evaluate, s, log, write):
  """Fine-tunes from params0 with one method; returns its eval lines."""
  train = {k: jnp.asarray(v) for k, v in task['train'].items()}
  if method == 'sgd':
    tx = optax.sgd(learning_rate(method))
  else:
    tx = optax.chain(zo_estimator(method, jax.random.key(FLAGS.seed + 7)),
                     optax.sgd(learning_rate(method)))

  def step(carry, ix):
    p, st = carry
    batch = {'x': train['x'][ix], 'y': train['y'][ix],
             'mask': jnp.ones(ix.shape, jnp.float32)}
    obj = lambda q: loss_fn(q, batch, jax.random.key(0))[0]
    if method == 'sgd':
      u, st = tx.update(jax.grad(obj)(p), st, p)
    else:
      u, st = tx.update(None, st, p, obj_fn=obj)
    return (optax.apply_updates(p, u), st), None

  def chunk(carry, idx):
    return jax.lax.scan(step, carry, idx)[0]

  carry = (params0, tx.init(params0))
  rng = np.random.default_rng([FLAGS.seed, 2])  # Same batches per method.
  n = len(task['train']['y'])
  idx0 = jnp.asarray(batch_indices(rng, n, s['eval_every'],
                                   FLAGS.batch_size))
  compiled = jax.jit(chunk).lower(carry, idx0).compile()
  rng = np.random.default_rng([FLAGS.seed, 2])
  lines, wall = [], 0.
  line = dict(mode='centralized', method=method, step=0, wall_s=0.,
              **evaluate(params0))
  write(line)
  lines.append(line)
  for start in range(0, s['steps'], s['eval_every']):
    idx = jnp.asarray(batch_indices(rng, n, s['eval_every'],
                                    FLAGS.batch_size))
    t0 = time.perf_counter()
    carry = jax.block_until_ready(compiled(carry, idx))
    wall += time.perf_counter() - t0
    line = dict(mode='centralized', method=method,
                step=start + s['eval_every'], wall_s=wall,
                **evaluate(carry[0]))
    if method in ('curvzo', 'curvzo_fixed', 'uniform_sparse'):
      line['budget'] = float(carry[1][0].budget)
    write(line)
    lines.append(line)
    log(f'[centralized {method}] step {line["step"]}: train_loss '
        f'{line["train_loss"]:.4f} test_acc {line["test_accuracy"]:.3f} '
        f'({wall:.1f}s)')
  return lines, (compiled, carry, idx)


def interleaved_step_times(runners, repeats, steps):
  """Median seconds per step of each method, its chunks run in turn.

  The CPU is shared, so each repeat runs one chunk of every method back to
  back: load changes hit all methods alike, and the median drops outliers.
  """
  times = {method: [] for method in runners}
  for _ in range(repeats):
    for method, (compiled, carry, idx) in runners.items():
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(carry, idx))
      times[method].append((time.perf_counter() - t0) / steps)
  return {method: float(np.median(t)) for method, t in times.items()}


def federated(method, params0, loss_fn, task, evaluate, s, log, write):
  """Federated fine-tuning from params0; returns its eval lines."""
  train = task['train']
  client_idx = data.partition('iid', train, s['num_clients'],
                              seed=FLAGS.seed)
  if method == 'sgd':
    algorithm = algorithms.fed_avg(loss_fn, optax.sgd(learning_rate(method)),
                                   optax.sgd(1.0), execution='sequential')
  else:
    tx = optax.chain(zo_estimator(method, jax.random.key(0)),
                     optax.sgd(learning_rate(method)))
    algorithm = zo.zo_fed_avg(loss_fn, tx, optax.sgd(1.0),
                              upload=FLAGS.upload,
                              carry_sampler=FLAGS.carry_sampler,
                              execution='sequential')
  state = algorithm.init(params0)
  apply = jax.jit(algorithm.apply)
  key = jax.random.key(FLAGS.seed)
  lines, wall = [], 0.
  line = dict(mode='federated', method=method, step=0, wall_s=0.,
              **evaluate(params0))
  write(line)
  lines.append(line)

  def cohort(r):
    ids = data.sample_clients(s['num_clients'], s['clients_per_round'],
                              seed=FLAGS.seed, round_num=r)
    c = data.pack_cohort(train, client_idx, ids,
                         batch_size=FLAGS.batch_size,
                         num_steps=s['local_steps'], seed=FLAGS.seed,
                         round_num=r)
    return jax.tree.map(jnp.asarray, c)

  apply = apply.lower(state, (), cohort(0), key).compile()
  for r in range(s['rounds']):
    c = cohort(r)
    t0 = time.perf_counter()
    state, _, metrics = apply(state, (), c, key)
    state = jax.block_until_ready(state)
    wall += time.perf_counter() - t0
    if (r + 1) % s['eval_every'] == 0 or r + 1 == s['rounds']:
      upload = metrics.get('upload_bytes_per_client')
      downlink = metrics.get('downlink_bytes_per_client')
      params_bytes = float(zo.upload_bytes(params0))
      line = dict(mode='federated', method=method, step=r + 1, wall_s=wall,
                  upload_bytes_per_client=(
                      float(upload) if upload is not None else params_bytes),
                  downlink_bytes_per_client=(
                      float(downlink) if downlink is not None
                      else params_bytes),
                  **evaluate(state.params))
      sampler = getattr(state.aggregator_state, 'sampler', None)
      if sampler is not None:
        line['budget'] = float(sampler.budget)
      write(line)
      lines.append(line)
      log(f'[federated {method}] round {r + 1}: train_loss '
          f'{line["train_loss"]:.4f} test_acc {line["test_accuracy"]:.3f} '
          f'upload {line["upload_bytes_per_client"]:.0f} B/client, '
          f'downlink {line["downlink_bytes_per_client"]:.0f} B/client '
          f'({wall:.1f}s)')
  return lines


def summarize(mode, results):
  """Steps to reach MeZO's final train loss, and time per step, by method.

  ``steps_ratio_vs_mezo`` divides by the step at which MeZO itself first
  reached its final loss (its whole run when its curve is monotone);
  ``steps_ratio_vs_mezo_run`` divides by MeZO's whole run.
  """
  out = []
  reference = results.get('mezo')
  target = reference[-1]['train_loss'] if reference else None
  mezo_steps = None
  if reference:
    mezo_steps = next(l['step'] for l in reference
                      if l['train_loss'] <= target)
  for method, lines in results.items():
    steps = lines[-1]['step']
    summary = dict(summary=True, mode=mode, method=method,
                   learning_rate=learning_rate(method),
                   final_train_loss=lines[-1]['train_loss'],
                   final_test_accuracy=lines[-1]['test_accuracy'],
                   wall_s_per_step=lines[-1]['wall_s'] / steps)
    if target is not None:
      hit = [l['step'] for l in lines if l['train_loss'] <= target]
      summary['mezo_final_train_loss'] = target
      summary['steps_to_mezo_final_loss'] = hit[0] if hit else None
      summary['steps_ratio_vs_mezo'] = (hit[0] / mezo_steps if hit
                                        else None)
      summary['steps_ratio_vs_mezo_run'] = (
          hit[0] / reference[-1]['step'] if hit else None)
      summary['step_time_ratio_vs_mezo'] = (
          summary['wall_s_per_step'] / (reference[-1]['wall_s'] /
                                        reference[-1]['step']))
    out.append(summary)
  return out


def cnn_bytes(local_steps):
  """Upload bytes of the EMNIST CNN (62 classes) per client per round."""
  model = models.create_model('cnn', num_classes=62)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))['params']
  delta = zo.upload_bytes(shapes)
  seeds = zo.seed_upload_bytes(local_steps, FLAGS.num_directions)
  return dict(cnn_upload=True, num_parameters=zo.num_parameters(shapes),
              local_steps=local_steps, delta_bytes=delta, seed_bytes=seeds,
              ratio=delta / seeds)


def plot(path, mode, results):
  fig = figure.Figure(figsize=(12, 8), layout='constrained')
  axes = fig.subplots(2, 2)
  unit = 'step' if mode == 'centralized' else 'round'
  for method, lines in results.items():
    steps = [l['step'] for l in lines]
    walls = [l['wall_s'] for l in lines]
    for row, key in ((0, 'train_loss'), (1, 'test_accuracy')):
      values = [l[key] for l in lines]
      axes[row, 0].plot(steps, values, label=method)
      axes[row, 1].plot(walls, values, label=method)
      axes[row, 0].set_ylabel(key)
      axes[row, 1].set_ylabel(key)
  for ax in axes[:, 0]:
    ax.set_xlabel(unit)
  for ax in axes[:, 1]:
    ax.set_xlabel('wall time (s, excluding compilation and evaluation)')
  axes[0, 0].legend()
  fig.suptitle(f'ZO fine-tuning, digits 0-4 -> 5-9 ({mode})')
  fig.savefig(path)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  hidden = check_flags()
  s = settings(hidden)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  log = lambda msg: print(msg, flush=True)
  try:
    dataset = data.load_dataset('digits', data_dir=FLAGS.data_dir)
  except data.DataError as e:
    fail(str(e))
  task_a, task_b = split_tasks(dataset)
  model = models.create_model('mlp', num_classes=5, hidden_sizes=s['hidden'])
  loss_fn = clients.classification_loss(model)
  params = model.init(jax.random.key(FLAGS.seed),
                      jnp.zeros((1,) + task_a['train']['x'].shape[1:]),
                      train=False)['params']
  log(f'pre-training on digits 0-4 ({s["pretrain_steps"]} SGD steps, '
      f'{zo.num_parameters(params)} params in {zo.num_blocks(params)} '
      'blocks)')
  params0 = pretrain(model, loss_fn, params, task_a, s['pretrain_steps'],
                     FLAGS.pretrain_lr, FLAGS.seed)
  eval_a = make_evaluate(model, task_a)(params0)
  log(f'pre-trained: task A test accuracy {eval_a["test_accuracy"]:.3f}')
  evaluate = make_evaluate(model, task_b)
  path = os.path.join(FLAGS.workdir, 'metrics.jsonl')
  with open(path, 'w') as f:
    def write(line):
      f.write(json.dumps(line) + '\n')
      f.flush()

    write(dict(pretrained=True, task_a_test_accuracy=eval_a['test_accuracy'],
               **{f'task_b_{k}': v for k, v in evaluate(params0).items()}))
    for mode in MODES:
      if mode not in FLAGS.modes:
        continue
      run = centralized if mode == 'centralized' else federated
      results, runners = {}, {}
      for method in METHODS:
        if method in FLAGS.methods:
          results[method] = run(method, params0, loss_fn, task_b, evaluate,
                                s, log, write)
          if mode == 'centralized':
            results[method], runners[method] = results[method]
      step_times = interleaved_step_times(runners, s['timing_repeats'],
                                          s['eval_every'])
      for summary in summarize(mode, results):
        if summary['method'] in step_times:
          summary['median_step_s'] = step_times[summary['method']]
          if 'mezo' in step_times:
            summary['median_step_time_ratio_vs_mezo'] = (
                step_times[summary['method']] / step_times['mezo'])
        write(summary)
        log(json.dumps(summary))
      plot(os.path.join(FLAGS.workdir, f'zo_{mode}.png'), mode, results)
    line = cnn_bytes(s['local_steps'])
    write(line)
    log(json.dumps(line))
  log(f'wrote {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
