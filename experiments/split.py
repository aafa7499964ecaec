r"""Split learning on the digits CNN (issue 15, items 4-5).

Methods (`fedjax_ext.split`) x cut layer x Dirichlet alpha x seeds, with
FedAvg of the unsplit model (the same local steps, batch and client SGD step)
as the reference row. Every split method trains the client part with SGD
(--client_lr, fresh each round) and the server part with SGD (--server_lr);
U-shaped PSL keeps the logits layer on the client (tail cut L - 1), EPSL uses
--phi, unstable SFL drops activation uploads with --drop_prob (inverse-
probability compensation) and GAPSL uses its defaults.

Each run: `training.run_rounds` into WORKDIR/<method>-cut<c>-a<alpha>-seed<s>/
(FedAvg: cut0). Summary: WORKDIR/results.md (test accuracy mean +- std over
seeds; bytes up / down per client per round, from the rounds' metrics;
client FLOPs per step and server FLOPs per step on the cohort, from
`split.step_costs`; simulated latency per round under a `split.Profile` of
the --*_per_s flags; measured seconds per round) and accuracy.png.
``python -m experiments.split [--quick] --workdir=runs/split``
"""

import functools
import itertools
import os
import time
import types

from absl import app, flags
import jax
import numpy as np
import optax

from experiments import _cli
from experiments._cli import parse_flags
from fedjax_ext import algorithms, clients, data, models, split, training

METHODS = ('fedavg', 'sl', 'sfl_v1', 'sfl_v2', 'psl', 'epsl', 'local_loss',
           'ushaped', 'unstable', 'gapsl')
MODELS = ('cnn', 'mlp')
QUICK = dict(methods=['psl', 'local_loss'], cuts=['2'], alphas=['0.5'],
             num_seeds=1, rounds=2, eval_every=1, num_clients=4,
             clients_per_round=2, local_steps=2, batch_size=8)
SWEEP_KEYS = ('resume', 'rounds', 'eval_every', 'data_dir', 'methods', 'cuts',
              'alphas', 'num_seeds', 'quick', 'workdir')
# step_costs arguments of each split method (as its `split` variant runs).
COSTS = {'sl': dict(schedule='sequential'), 'sfl_v1': dict(
    aggregate_clients=True), 'sfl_v2': dict(aggregate_clients=True),
         'psl': {}, 'epsl': {}, 'local_loss': dict(
             client_side='local', aggregate_clients=True),
         'ushaped': dict(client_side='tail'), 'unstable': dict(
             aggregate_clients=True), 'gapsl': {}}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This script's flags, on `fv` (a test passes a fresh `FlagValues`)."""
  define = functools.partial(_cli.define_checked, fv)
  numbers = _cli.numbers
  define('string', 'workdir', None, 'Default: runs/split-<time>.')
  define('string', 'data_dir', None, 'TFDS data dir.')
  define('list', 'methods', list(METHODS), 'Methods (fedavg: reference).',
         f'among {", ".join(METHODS)}', lambda v: bool(v) and set(v) <= set(
             METHODS))
  define('string', 'model', 'cnn', 'The digits classifier.',
         f'one of {", ".join(MODELS)}', lambda v: v in MODELS)
  define('list', 'hidden_sizes', ['64', '64'], 'MLP hidden layers.',
         *numbers('int', '>= 1'))
  define('list', 'cuts', ['1', '2'], 'Cut layers (client keeps [0, cut)).',
         *numbers('int', '>= 1'))
  define('list', 'alphas', ['0.1', '1.0'], 'Dirichlet alphas.',
         *numbers('float', '> 0'))
  define('integer', 'num_seeds', 3, 'Seeds per configuration.', '>= 1')
  define('integer', 'seed', 0, 'Runs use seed, seed + 1, ...', '>= 0')
  define('integer', 'rounds', 30, 'Rounds per run.', '>= 1')
  define('integer', 'eval_every', 5, 'Evaluate every N rounds.', '>= 1')
  define('integer', 'num_clients', 10, 'Clients (Dirichlet split).', '>= 1')
  define('integer', 'clients_per_round', 5, 'Clients per round.', '>= 1')
  define('integer', 'local_steps', 5, 'Local steps per round.',
         'in [1, 100000]')
  define('integer', 'batch_size', 16, 'Local batch size.', '>= 1')
  define('float', 'client_lr', 0.05, 'Client SGD step (and FedAvg).', '> 0')
  define('float', 'server_lr', 0.05, 'Server SGD step.', '> 0')
  define('float', 'phi', 0.5, "EPSL's aggregation ratio.", 'in [0, 1]')
  define('float', 'drop_prob', 0.2, 'Unstable SFL: upload drop rate.',
         'in [0, 1)', lambda v: 0 <= v < 1)
  for name, default, what in (
      ('client_flops_per_s', 1e9, 'Client compute'),
      ('server_flops_per_s', 1e11, 'Server compute'),
      ('uplink_bytes_per_s', 1e6, 'Client uplink'),
      ('downlink_bytes_per_s', 1e7, 'Client downlink')):
    define('float', name, default, f'{what} of the latency profile.', '> 0')
  define('bool', 'resume', False, 'Continue the runs with checkpoints.')
  define('bool', 'quick', False, f'Tiny: {QUICK}; explicit flags win.')


def settings_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """The flag values as attributes (--quick fills the flags not given)."""
  v = {f.name: f.value for f in fv.get_flags_for_module(
      fv.find_module_defining_flag('rounds'))}
  v.update({k: q for k, q in QUICK.items() if v['quick'] and not fv[k].present})
  v.update(alphas=[float(a) for a in v['alphas']], cuts=sorted({int(c) for c in
      v['cuts']}), hidden_sizes=tuple(int(h) for h in v['hidden_sizes']),
           workdir=v['workdir'] or time.strftime('runs/split-%Y%m%d-%H%M%S'))
  if v['clients_per_round'] > v['num_clients']:
    raise training.ConfigError(f'--clients_per_round ({v["clients_per_round"]}'
                               f') must be <= --num_clients ({v["num_clients"]}'
                               ').')
  layers = len(split.model_layers(_model(types.SimpleNamespace(**v), 10)))
  high = layers - 2 if 'ushaped' in v['methods'] else layers - 1
  if max(v['cuts']) > high:
    raise training.ConfigError(
        f'--cuts must be in [1, {high}] for --model={v["model"]} ({layers} '
        'layers' + (', ushaped keeps the last on the client' if 'ushaped' in
                    v['methods'] else '') + f'), got {max(v["cuts"])}.')
  return types.SimpleNamespace(**v)


def _model(s, num_classes):
  if s.model == 'mlp':
    return models.create_model('mlp', num_classes=num_classes,
                               hidden_sizes=s.hidden_sizes)
  return models.create_model('cnn', num_classes=num_classes)


def build(s, method, net, cut):
  """(algorithm, split model or None, step_costs kwargs) of one method."""
  if method == 'fedavg':
    return algorithms.fed_avg(clients.classification_loss(net), optax.sgd(
        s.client_lr), optax.sgd(1.)), (None, None)
  layers = len(split.model_layers(net))
  model = split.split_model(net, cut, tail_cut=layers - 1 if method ==
                            'ushaped' else None)
  opts = (model, optax.sgd(s.client_lr), optax.sgd(s.server_lr))
  algorithm = {
      'sl': lambda: split.vanilla_sl(*opts),
      'sfl_v1': lambda: split.sfl_v1(*opts),
      'sfl_v2': lambda: split.sfl_v2(*opts),
      'psl': lambda: split.psl(*opts),
      'epsl': lambda: split.epsl(*opts, phi=s.phi),
      'local_loss': lambda: split.local_loss_sl(*opts),
      'ushaped': lambda: split.ushaped_psl(*opts),
      'unstable': lambda: split.unstable_sfl(*opts, drop_prob=s.drop_prob),
      'gapsl': lambda: split.gapsl(*opts),
  }[method]()
  kwargs = dict(COSTS[method], phi=s.phi if method == 'epsl' else 0.)
  return algorithm, (model, kwargs)


def flops(fn, *args) -> float:
  """FLOPs of the compiled `fn` (NaN when the backend reports none)."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get('flops', np.nan))


def costs(s, method, net, model, kwargs, params, cohort) -> dict:
  """Per-step FLOPs and the simulated round latency of one configuration."""
  profile = split.Profile(s.client_flops_per_s, s.uplink_bytes_per_s,
                          s.downlink_bytes_per_s, s.server_flops_per_s)
  if model is None:  # FedAvg: the whole model's step, the model both ways.
    loss = clients.classification_loss(net)
    batch = jax.tree.map(lambda v: v[0, 0], cohort.batches)
    size = float(sum(x.nbytes for x in jax.tree.leaves(params)))
    c = split.StepCosts(flops(jax.grad(lambda p, b: loss(
        p, b, jax.random.key(0))[0]), params, batch), 0., 0., 0., size, size,
                        *cohort.batches['mask'].shape[:2])
  else:
    c = split.step_costs(model, params, cohort, **kwargs)
  latency = split.simulated_latency(c, profile, schedule=kwargs.get(
      'schedule', 'parallel') if kwargs else 'parallel')
  return dict(client_flops=c.client_flops, server_flops=c.server_flops,
              latency_s=latency['round_latency_s'],
              model_bytes=c.model_upload_bytes)


def summarize(s, runs, cost, seconds) -> None:
  """results.md and accuracy.png from {(method, cut, alpha): [lines]}."""
  md = [f'# Split learning on digits ({s.model}; {s.num_seeds} seeds, '
        f'{s.rounds} rounds, {s.clients_per_round}/{s.num_clients} clients, '
        f'{s.local_steps} steps of batch {s.batch_size}; {seconds:.0f} s)', '',
        'Bytes per client per round (measured: the steps each client sent; '
        'up includes the client part when it is aggregated or relayed, '
        'grad down is what the server sends per step (activation gradients, '
        'U-shaped: server outputs too), model down the client part); '
        'FLOPs of ONE client step and of the server step on the whole '
        'cohort (compiled cost analysis); latency: simulated round under '
        f'client {s.client_flops_per_s:.3g} FLOP/s, server '
        f'{s.server_flops_per_s:.3g} FLOP/s, up {s.uplink_bytes_per_s:.3g} '
        f'B/s, down {s.downlink_bytes_per_s:.3g} B/s; s/round: measured '
        '(median, after compilation). fedavg: the unsplit model (cut 0), '
        'the same local steps.', '',
        '| method | cut | alpha | test accuracy | up B/round | grad down '
        'B/round | model down B/round | client FLOPs/step | server FLOPs/step '
        '| sim. latency s/round | s/round |', '|---' * 11 + '|']
  for (method, cut, alpha), seeds in runs.items():
    acc = [ls[-1]['test_accuracy'] for ls in seeds]
    lines = [l for ls in seeds for l in ls]
    mean = lambda k, d=np.nan: float(np.mean([l.get(k, d) for l in lines]))
    c = cost[(method, cut, alpha)]
    up, model = (mean(k, c['model_bytes']) for k in (
        'upload_bytes_per_client', 'model_download_bytes_per_client'))
    down = mean('downlink_bytes_per_client', model) - model  # Per step.
    sec = np.nanmean([l.get('round_time_s', np.nan) for l in lines] + [np.nan])
    md.append(f'| {method} | {cut} | {alpha:g} | {np.mean(acc):.4f} +- '
              f'{np.std(acc):.4f} | {up:.4g} | {down:.4g} | {model:.4g} | '
              f'{c["client_flops"]:.4g} | {c["server_flops"]:.4g} | '
              f'{c["latency_s"]:.4g} | {sec:.3g} |')
  with open(os.path.join(s.workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  training.plot_runs(
      {f'cut {c}, alpha {a:g}': {m: runs[(m, 0 if m == 'fedavg' else c, a)]
                                 for m in s.methods}
       for c, a in itertools.product(s.cuts, s.alphas)},
      os.path.join(s.workdir, 'accuracy.png'), key='test_accuracy',
      title=f'Split learning on digits ({s.model})')


def run(s, log=print) -> dict:
  """Every configuration and seed, then the summary: {config: [lines]}."""
  _cli.check_fresh_sweep(s)
  t0, seeds = time.time(), range(s.seed, s.seed + s.num_seeds)
  feds = {(a, seed): training.load_federation(training.ExperimentConfig(
      dataset='digits', data_dir=s.data_dir, seed=seed, partition='dirichlet',
      num_clients=s.num_clients, clients_per_round=s.clients_per_round,
      dirichlet_alpha=a)) for a, seed in itertools.product(s.alphas, seeds)}
  fed = next(iter(feds.values()))
  if min(len(c) for f in feds.values() for c in f.client_indices) < 1:
    raise training.ConfigError('A client got no data; lower --num_clients.')
  net = _model(s, fed.num_classes)
  evaluator = training.classification_evaluator(  # Compiled once.
      clients.predict_fn(net), fed.test, batch_size=500)
  configs = [(m, 0 if m == 'fedavg' else c, a) for m in s.methods
             for c in ([0] if m == 'fedavg' else s.cuts) for a in s.alphas]
  runs, cost = {k: [] for k in configs}, {}
  for (method, cut, alpha), seed in itertools.product(configs, seeds):
    f = feds[(alpha, seed)]
    init_key, run_key = jax.random.split(jax.random.key(seed))
    params = net.init(init_key, f.train['x'][:1])['params']
    algorithm, (model, kwargs) = build(s, method, net, cut)
    cohorts = lambda r, f=f, seed=seed: data.pack_cohort(
        f.train, f.client_indices, data.sample_clients(
            s.num_clients, s.clients_per_round, seed=seed, round_num=r),
        batch_size=s.batch_size, num_steps=s.local_steps, seed=seed,
        round_num=r)
    if (method, cut, alpha) not in cost:
      cost[(method, cut, alpha)] = costs(s, method, net, model, kwargs,
                                         params, cohorts(0))
    runs[(method, cut, alpha)].append(_cli.sweep_run(
        s, algorithm, params, name=f'{method}-cut{cut}-a{alpha:g}-seed{seed}',
        config=dict(method=method, cut=cut, alpha=alpha, seed=seed),
        title=f'{method} cut {cut} alpha {alpha:g} seed {seed}',
        may_differ=SWEEP_KEYS, num_clients=s.num_clients, cohorts=cohorts,
        key=run_key, evaluators=[evaluator]))
    last = runs[(method, cut, alpha)][-1][-1]
    log(f'  {method} cut {cut} alpha {alpha:g} seed {seed} '
        f'({time.time() - t0:.0f} s): test accuracy '
        f'{last["test_accuracy"]:.4f}, '
        f'{last.get("round_time_s", np.nan):.3g} s/round')
  summarize(s, runs, cost, time.time() - t0)
  log(f'Tables in {s.workdir}/results.md.')
  return runs


def main(argv):
  _cli.sweep_main(argv, lambda: run(settings_from_flags()))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
