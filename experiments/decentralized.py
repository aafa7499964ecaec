r"""Decentralized (serverless) FL sweeps: first-order methods and LoRA gossip.

Issue 14, item 5. Two tasks (``--task``):

* ``digits``: an MLP on scikit-learn's digits, Dirichlet label skew over
  ``--nodes`` nodes; `decentralized.d_psgd`, ``dfedavg``, ``dfedavgm``,
  ``gradient_tracking`` (SGD, step ``--lr``).
* ``bbc_lora``: MiniLM + BBC News titles with rank-r LoRA on q, v of layers
  [--first_layer, 6) and a trained linear head, on `experiments.lora`'s exact
  frozen-prefix cache (`lora.load`, `CachedTop`, `top_params`); ``dec_lora``,
  ``rolora``, ``ffa_gossip`` and ``tad_lora`` with each switching interval
  of ``--intervals`` (ints, and ``auto``: T = round(c / sqrt(1 - rho))).
  Label skew: TAD-LoRA's recipe (arXiv 2602.00451; binary tasks 3 x [.9, .1],
  3 x [.1, .9], 4 x [.5, .5]; MNLI 4 x [.9, .05, .05], ...) has no 5-class
  form; our analogue (``--partition=dominant``) gives node i the dominant
  class i mod C with share ``--dominant_fraction`` (0.9) and spreads the rest
  evenly over the other classes: each class's examples are cut among the
  nodes in proportion to their target shares, so every example is used once.

Topologies (``--topologies``): ``er<p>`` (Erdos-Renyi edge activation on the
complete graph, redrawn every round), ``ring``, ``complete``, ``star``,
``exponential``, ``matching``; Metropolis-Hastings weights. Each run:
`training.run_rounds` into WORKDIR/<task>-<algorithm>-<topology>-seed<s>/,
evaluating the node-average model (``test_accuracy``) and every node's own
model on the test set (``node_accuracy_mean/std/min/max``,
`decentralized.node_accuracy_metrics`). Summary: WORKDIR/results.md (final
accuracies, mean +- std over seeds; consensus distance; LoRA cross-term
error; rho = lambda_2(E[W^T W]) and 1/sqrt(1 - rho) of each topology; the
best T of TAD-LoRA per topology) and accuracy.png, node_accuracy.png,
consensus.png, best_interval.png.
``python -m experiments.decentralized [--quick] --task=digits --workdir=runs/dec``
"""

import functools
import itertools
import math
import os
import re
import time
import types

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _cli
from experiments import lora as lora_experiment
from experiments._cli import parse_flags
from fedjax_ext import clients, data, decentralized, lora, models, topology, training

TASKS = {'digits': ('d_psgd', 'dfedavg', 'dfedavgm', 'gradient_tracking'),
         'bbc_lora': ('dec_lora', 'rolora', 'ffa_gossip', 'tad_lora')}
ALGORITHMS = TASKS['digits'] + TASKS['bbc_lora']
DEFAULT_LR = {'digits': 0.1, 'bbc_lora': 3e-3}  # SGD / Adam.
TOPOLOGY = re.compile(r'^(er(0?\.\d+|1|1\.0)|ring|complete|star|exponential|'
                      r'matching)$')
QUICK = dict(task='digits', algorithms=['d_psgd', 'dfedavg'], num_seeds=1,
             rounds=2, eval_every=1, topologies=['er0.5', 'ring'],
             local_steps=2, batch_size=8, hidden_sizes=['16'])
# --quick --task=bbc_lora: these replace QUICK's digits algorithms.
QUICK_LORA = dict(algorithms=['dec_lora', 'tad_lora'], intervals=['2'],
                  max_examples=100)
SWEEP_KEYS = ('resume', 'rounds', 'eval_every', 'data_dir', 'algorithms',
              'topologies', 'intervals', 'num_seeds', 'quick', 'workdir')


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This script's flags, on `fv` (a test passes a fresh `FlagValues`)."""
  define = functools.partial(_cli.define_checked, fv)
  define('string', 'workdir', None, 'Default: runs/decentralized-<time>.')
  define('string', 'data_dir', None, 'TFDS data dir.')
  define('string', 'task', 'digits', 'digits (MLP) or bbc_lora (MiniLM).',
         'digits or bbc_lora', lambda v: v in TASKS)
  define('list', 'algorithms', [], "Default: all of the task's: "
         f'{TASKS}.', f'among {", ".join(ALGORITHMS)}',
         lambda v: set(v) <= set(ALGORITHMS))
  define('list', 'topologies', ['er0.5', 'er0.1', 'er0.02', 'ring'],
         'er<p>, ring, complete, star, exponential, matching.',
         'er<p> (0 < p <= 1), ring, complete, star, exponential or matching',
         lambda v: bool(v) and all(TOPOLOGY.match(t) and (
             not t.startswith('er') or float(t[2:]) > 0) for t in v))
  define('list', 'intervals', ['1', '2', '3', '5', '10', '15', 'auto'],
         'TAD-LoRA switching intervals T (ints >= 1, or auto).',
         'ints >= 1 or auto', lambda v: bool(v) and all(
             t == 'auto' or (t.isdigit() and int(t) >= 1) for t in v))
  define('float', 'tad_c', 1., 'c of the automatic T = c / sqrt(1 - rho).',
         '> 0')
  define('integer', 'nodes', 10, 'Nodes of the topology.', '>= 1')
  define('string', 'partition', 'auto', 'auto (digits: dirichlet, bbc_lora: '
         'dominant), dirichlet or dominant.', 'auto, dirichlet or dominant',
         lambda v: v in ('auto', 'dirichlet', 'dominant'))
  define('float', 'dirichlet_alpha', 0.5, 'Label skew of dirichlet.', '> 0')
  define('float', 'dominant_fraction', 0.9, "Dominant: a node's share of its "
         'class.', 'in [0, 1]')
  define('integer', 'num_seeds', 3, 'Seeds per configuration.', '>= 1')
  define('integer', 'seed', 0, 'Runs use seed, seed + 1, ...', '>= 0')
  define('integer', 'rounds', 100, 'Rounds per run.', '>= 1')
  define('integer', 'eval_every', 5, 'Evaluate every N rounds.', '>= 1')
  define('integer', 'local_steps', 5, 'Local steps (batches) per round.',
         'in [1, 100000]')
  define('integer', 'batch_size', 16, 'Local batch size.', '>= 1')
  define('float', 'lr', 0., f'Step size; 0: {DEFAULT_LR} (SGD / Adam).',
         '>= 0')
  define('float', 'momentum', 0.9, 'beta of dfedavgm.', 'in [0, 1)',
         lambda v: 0 <= v < 1)
  define('list', 'hidden_sizes', ['200'], 'digits MLP hidden layers.',
         'sizes >= 1', lambda v: bool(v) and all(h.isdigit() and int(h)
                                                 for h in v))
  define('integer', 'rank', 4, 'LoRA rank r.', '>= 1')
  define('float', 'lora_alpha', 8., "LoRA's alpha (scale alpha / r).", '> 0')
  define('integer', 'first_layer', 4, 'Adapt layers [this, 6).', 'in [1, 5]')
  define('integer', 'max_examples', 0, 'Cap each bbc split (0: all).', '>= 0')
  define('bool', 'resume', False, 'Continue the runs with checkpoints.')
  define('bool', 'quick', False, f'Tiny: {QUICK}; explicit flags win.')


def settings_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """The flag values as attributes (--quick fills the flags not given)."""
  v = {f.name: f.value for f in fv.get_flags_for_module(
      fv.find_module_defining_flag('rounds'))}
  quick = dict(QUICK, **(QUICK_LORA if fv['task'].value == 'bbc_lora' else {}))
  v.update({k: q for k, q in quick.items() if v['quick'] and not fv[k].present})
  task = v['task']
  v['algorithms'] = list(v['algorithms'] or TASKS[task])
  wrong = [a for a in v['algorithms'] if a not in TASKS[task]]
  if wrong:
    raise training.ConfigError(f'--algorithms {",".join(wrong)} not of '
                               f'--task={task}: among {", ".join(TASKS[task])}.')
  v.update(hidden_sizes=tuple(map(int, v['hidden_sizes'])),
           lr=v['lr'] or DEFAULT_LR[task], partition=v['partition'] if v[
               'partition'] != 'auto' else ('dirichlet' if task == 'digits'
                                            else 'dominant'),
           workdir=v['workdir'] or time.strftime('runs/decentralized-%Y%m%d-'
                                                 '%H%M%S'))
  return types.SimpleNamespace(**v)


def make_topology(name: str, n: int) -> topology.Topology:
  if name.startswith('er'):
    return topology.erdos_renyi(n, float(name[2:]))
  return {'ring': topology.ring, 'complete': topology.complete,
          'star': topology.star, 'exponential': topology.exponential,
          'matching': topology.random_matching}[name](n)


def dominant_partition(labels, num_nodes: int, fraction: float, seed: int,
                       num_classes: int) -> list[np.ndarray]:
  """Node i: share `fraction` of class i mod C, the rest spread evenly.

  Class c's shuffled examples are cut among the nodes in proportion to their
  target shares p_i(c) (module docstring); every example is used once.
  """
  rng = np.random.default_rng(seed)
  rest = (1 - fraction) / max(num_classes - 1, 1)
  mix = np.full((num_nodes, num_classes), rest)
  mix[np.arange(num_nodes), np.arange(num_nodes) % num_classes] = fraction
  parts = [[] for _ in range(num_nodes)]
  for c in range(num_classes):
    rows = rng.permutation(np.flatnonzero(labels == c))
    share = mix[:, c] / mix[:, c].sum()
    cuts = np.floor(np.cumsum(share)[:-1] * len(rows)).astype(int)
    for i, chunk in enumerate(np.split(rows, cuts)):
      parts[i].append(chunk)
  return [np.sort(np.concatenate(p)) for p in parts]


def load_task(s, log):
  """(model, params_fn(seed key), train, test, num_classes, lora config fn)."""
  if s.task == 'digits':
    ds = data.load_dataset('digits', data_dir=s.data_dir)
    model = models.create_model('mlp', num_classes=ds.num_classes,
                                hidden_sizes=s.hidden_sizes)
    init = lambda key: model.init(key, ds.train['x'][:1])['params']
    return model, init, ds.train, ds.test, ds.num_classes
  encoder, variables, train, test, num_classes = lora_experiment.load(s, log)
  model = lora_experiment.CachedTop(encoder, s.first_layer)
  init = lambda key: lora_experiment.top_params(variables, s.first_layer,
                                                num_classes, key)
  return model, init, train, test, num_classes


def lora_config(s, key) -> lora.LoRAConfig:
  """`experiments.lora`'s adapters: q, v of layers [first_layer, 6), head."""
  return lora.LoRAConfig(lora_experiment.adapter_targets(s.first_layer),
                         s.rank, s.lora_alpha, key,
                         dense_targets=lora_experiment.HEAD)


def labels_of(s) -> list[str]:
  """Run labels: algorithms, TAD-LoRA once per interval (tad_lora_T<T>)."""
  return [f'tad_lora_T{t}' if a == 'tad_lora' else a for a in s.algorithms
          for t in (s.intervals if a == 'tad_lora' else [None])]


def build(s, label, loss_fn, topo, key):
  """The `core.FederatedAlgorithm` of a run label on `topo`."""
  sgd, adam = optax.sgd(s.lr), optax.adam(s.lr)
  if label.startswith('tad_lora'):
    t = label[len('tad_lora_T'):]
    return decentralized.tad_lora(
        loss_fn, adam, lora_config(s, key), topo, c=s.tad_c,
        interval='auto' if t == 'auto' else int(t))
  return {
      'd_psgd': lambda: decentralized.d_psgd(loss_fn, s.lr, topo),
      'dfedavg': lambda: decentralized.dfedavg(loss_fn, sgd, topo),
      'dfedavgm': lambda: decentralized.dfedavgm(loss_fn, s.lr, topo,
                                                 beta=s.momentum),
      'gradient_tracking': lambda: decentralized.gradient_tracking(
          loss_fn, s.lr, topo),
      'dec_lora': lambda: decentralized.dec_lora(loss_fn, adam, lora_config(
          s, key), topo),
      'rolora': lambda: decentralized.rolora(loss_fn, adam, lora_config(
          s, key), topo),
      'ffa_gossip': lambda: decentralized.ffa_gossip(loss_fn, adam,
                                                     lora_config(s, key), topo),
  }[label]()


@functools.lru_cache(maxsize=None)
def _node_metrics(model, lora_alpha, part):
  """Jitted node accuracies; `part`: 'lora', 'x' (tracking rows) or ''."""
  predict = clients.predict_fn(model)

  def fn(state, store, examples):
    if part == 'lora':
      row_predict = lambda row, x: predict(decentralized.lora_node_params(
          state, row, alpha=lora_alpha), x)
    else:
      row_predict = lambda row, x: predict(row[part] if part else row, x)
    return decentralized.node_accuracy_metrics(
        row_predict, store, examples,
        execution='sequential' if part == 'lora' else 'vmap')

  return jax.jit(fn)


def node_evaluator(s, model, label, test):
  """Every node's own model on the test set: node_accuracy_{mean,std,...}."""
  part = ('lora' if s.task == 'bbc_lora' else
          'x' if label == 'gradient_tracking' else '')
  fn = _node_metrics(model, s.lora_alpha, part)
  examples = {k: jnp.asarray(test[k]) for k in ('x', 'y')}
  return lambda params, state, store: {
      k: float(v) for k, v in fn(state, store, examples).items()}


def topology_stats(s) -> dict:
  """{name: (rho, 1/sqrt(1 - rho), automatic T or None)}."""
  out = {}
  for name in s.topologies:
    rho = topology.contraction(make_topology(name, s.nodes),
                               jax.random.key(0))
    out[name] = (rho, 1 / math.sqrt(1 - rho) if rho < 1 else math.inf,
                 topology.tad_lora_interval(rho, s.tad_c) if rho < 1 else None)
  return out


def _stat(runs, key, fmt='.4f'):
  vals = [ls[-1][key] for ls in runs if key in ls[-1]]
  if not vals:
    return '-'
  return f'{np.mean(vals):{fmt}} +- {np.std(vals):{fmt}}'


def best_intervals(s, runs) -> dict:
  """{topology: (best fixed T, its mean node accuracy)} of tad_lora runs."""
  best = {}
  for topo in s.topologies:
    scores = {int(label[10:]): np.mean([ls[-1]['node_accuracy_mean']
                                        for ls in r])
              for (label, t), r in runs.items()
              if t == topo and label.startswith('tad_lora_T')
              and label[10:].isdigit()}
    if scores:
      t = max(scores, key=scores.get)
      best[topo] = (t, scores[t])
  return best


def summarize(s, runs, stats, seconds) -> None:
  """results.md and the PNGs from {(label, topology): [lines of seeds]}."""
  md = [f'# Decentralized FL, task {s.task} ({s.num_seeds} seeds, {s.rounds} '
        f'rounds, {s.nodes} nodes, {s.local_steps} local steps of batch '
        f'{s.batch_size}, lr {s.lr:g}, partition {s.partition}, '
        f'{seconds:.0f} s)', '',
        'Final evaluation, mean +- std over seeds. averaged model: the node '
        'average x̄ on the test set; node accuracy: mean (and spread: std over '
        'nodes) of every node\'s own model on the test set; consensus: '
        '(1/N) sum_i ||x_i - x̄||^2 after mixing; cross-term error (LoRA): '
        'sum_targets ||mean(B_i A_i) - mean(B) mean(A)||_F.', '',
        '## Topologies', '', '| topology | rho = lambda_2(E[W^T W]) | '
        '1/sqrt(1 - rho) | auto T (c = ' f'{s.tad_c:g}) |', '|---' * 4 + '|']
  md += [f'| {t} | {r:.4f} | {q:.3f} | {a} |' for t, (r, q, a) in
         stats.items()]
  md += ['', '## Runs', '', '| algorithm | topology | averaged-model accuracy '
         '| node accuracy | node spread (std) | consensus | cross-term error '
         '| s/round |', '|---' * 8 + '|']
  for (label, topo), r in runs.items():
    sec = np.nanmean([l.get('round_time_s', np.nan) for ls in r for l in ls]
                     + [np.nan])
    md.append(f'| {label} | {topo} | {_stat(r, "test_accuracy")} | '
              f'{_stat(r, "node_accuracy_mean")} | '
              f'{_stat(r, "node_accuracy_std")} | '
              f'{_stat(r, "consensus_after_mix", ".3g")} | '
              f'{_stat(r, "cross_term_error", ".3g")} | {sec:.3g} |')
  best = best_intervals(s, runs)
  if best:
    md += ['', '## TAD-LoRA: best fixed T per topology (by mean node '
           'accuracy)', '', '| topology | 1/sqrt(1 - rho) | best T | node '
           'accuracy | auto T |', '|---' * 5 + '|']
    md += [f'| {t} | {stats[t][1]:.3f} | {b} | {acc:.4f} | {stats[t][2]} |'
           for t, (b, acc) in best.items()]
    from matplotlib import figure  # pylint: disable=g-import-not-at-top
    fig = figure.Figure(figsize=(4.5, 3.6), layout='constrained')
    ax = fig.subplots()
    ax.plot([stats[t][1] for t in best], [b for b, _ in best.values()], 'o')
    for t, (b, _) in best.items():
      ax.annotate(t, (stats[t][1], b))
    ax.set(xlabel='1/sqrt(1 - rho)', ylabel='best T', title='TAD-LoRA')
    fig.savefig(os.path.join(s.workdir, 'best_interval.png'))
  with open(os.path.join(s.workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  labels = labels_of(s)
  for png, key in (('accuracy', 'test_accuracy'),
                   ('node_accuracy', 'node_accuracy_mean'),
                   ('consensus', 'consensus_after_mix')):
    training.plot_runs({t: {a: runs[(a, t)] for a in labels}
                        for t in s.topologies},
                       os.path.join(s.workdir, f'{png}.png'), key=key,
                       title=f'Decentralized {s.task}')


def run(s, log=print) -> dict:
  """Every configuration and seed, then the summary: {(label, topo): lines}."""
  _cli.check_fresh_sweep(s)
  t0, seeds = time.time(), range(s.seed, s.seed + s.num_seeds)
  model, init_params, train, test, num_classes = load_task(s, log)
  parts = {seed: (dominant_partition(train['y'], s.nodes, s.dominant_fraction,
                                     seed, num_classes)
                  if s.partition == 'dominant' else data.partition(
                      'dirichlet', train, s.nodes, seed=seed,
                      dirichlet_alpha=s.dirichlet_alpha)) for seed in seeds}
  if min(len(p) for part in parts.values() for p in part) < 1:
    raise training.ConfigError('A node got no data; lower --nodes.')
  stats = topology_stats(s)
  loss_fn = clients.classification_loss(model)
  evaluator = training.classification_evaluator(  # Compiled once.
      clients.predict_fn(model), test, batch_size=128)
  node_ids = np.arange(s.nodes, dtype=np.int32)
  runs = {k: [] for k in itertools.product(labels_of(s), s.topologies)}
  keys = {seed: jax.random.split(jax.random.key(seed)) for seed in seeds}
  initial = {seed: init_params(keys[seed][0]) for seed in seeds}
  for (label, topo), seed in itertools.product(runs, seeds):
    (init_key, run_key), params = keys[seed], initial[seed]
    algorithm = build(s, label, loss_fn, make_topology(topo, s.nodes),
                      init_key)
    cohorts = lambda r, part=parts[seed], seed=seed: data.pack_cohort(
        train, part, node_ids, batch_size=s.batch_size,
        num_steps=s.local_steps, seed=seed, round_num=r)
    runs[(label, topo)].append(_cli.sweep_run(
        s, algorithm, params, name=f'{s.task}-{label}-{topo}-seed{seed}',
        config=dict(label=label, topology=topo, seed=seed),
        title=f'{label} {topo} seed {seed}', may_differ=SWEEP_KEYS,
        num_clients=s.nodes, cohorts=cohorts, key=run_key,
        evaluators=[evaluator, node_evaluator(s, model, label, test)]))
    last = runs[(label, topo)][-1][-1]
    log(f'  {label} {topo} seed {seed} ({time.time() - t0:.0f} s): averaged '
        f'{last["test_accuracy"]:.4f}, nodes {last["node_accuracy_mean"]:.4f}'
        f' +- {last["node_accuracy_std"]:.4f}')
  summarize(s, runs, stats, time.time() - t0)
  log(f'Tables in {s.workdir}/results.md.')
  return runs


def main(argv):
  _cli.sweep_main(argv, lambda: run(settings_from_flags()))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
