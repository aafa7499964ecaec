r"""Federated LoRA on MiniLM + BBC News titles (issue 13, item 5).

Methods (`fedjax_ext.lora`) x Dirichlet alpha x ranks x seeds. The model is
all-MiniLM-L6-v2 with rank-r adapters on the query and value kernels of
layers [--first_layer, 6) and a linear head (trained in full: `LoRAParams`
``dense``) on the mean-pooled last hidden states. FlexLoRA and HetLoRA give
client k the rank ``min(het_ranks[k % len], r)`` (``Cohort.info['rank']``)
with factors padded to r; ``florg`` truncates to r before aligning,
``florg_all`` aligns all r' = C r components. Reference rows: centralized
LoRA (all of a round's batches in one client), local-only LoRA and
``frozen`` (pretrained MiniLM + a linear head trained centrally). Besides
``test_accuracy`` (FedSA-LoRA and local-only: the merged mean adapters)
every run reports ``personal_accuracy`` (`label_mix_evaluator`: each
client's own model where the method keeps one, scored on the test set
weighted by that client's label mix).

Exact frozen-prefix cache: the embeddings and layers below --first_layer are
frozen and deterministic (no dropout), so their output does not depend on
anything that trains; it is computed ONCE per example (train and test) and
stored as the dataset's 'x': float32 [N, 32, 385], the hidden states [.., :384]
with the attention mask as the last channel (so the library's packing and
evaluation carry it). The trained model is ``forward_from(first_layer)`` +
mean pool + head; its params are layers [first_layer, 6) and ``head`` only,
so the frozen prefix is never broadcast nor checkpointed.

Each run: `training.run_rounds` into WORKDIR/<method>-a<alpha>-r<rank>-seed<s>/.
Summary: WORKDIR/results.md (test accuracy mean +- std over seeds, bytes per
client to reach --target_accuracy: cumulative upload + per-round downlink, the
one-time broadcast of the base excluded, '-' if a seed never reaches it;
upload per round as % of full fine-tuning of MiniLM; seconds per round) and
accuracy.png. ``python -m experiments.lora [--quick] --workdir=runs/lora``
"""

import functools
import itertools
import os
import time
import types

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _cli
from experiments._cli import parse_flags
from fedjax_ext import aggregators, clients, core, data, lora, pretrained, training
from fedjax_ext.pretrained import MiniLM

METHODS = ('fedit', 'ffa', 'fedsa', 'flexlora', 'hetlora', 'florg',
           'florg_all', 'centralized', 'local', 'frozen')
PERSONAL = {'fedsa': lora.fed_sa_personal_params,  # Models kept per client.
            'local': lora.local_only_personal_params}
MAX_LENGTH = 32  # Titles: at most 17 word pieces.
HEAD = r'head/(kernel|bias)'
QUICK = dict(methods=['fedit', 'florg'], ranks=['4'], num_seeds=1, rounds=2,
             eval_every=1, clients=4, clients_per_round=2, local_steps=2,
             batch_size=8, max_examples=160)
SWEEP_KEYS = ('resume', 'rounds', 'eval_every', 'data_dir', 'methods',
              'alphas', 'ranks', 'num_seeds', 'quick', 'workdir',
              'target_accuracy')


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This script's flags, on `fv` (a test passes a fresh `FlagValues`)."""
  define = functools.partial(_cli.define_checked, fv)
  numbers = _cli.numbers
  define('string', 'workdir', None, 'Default: runs/lora-<time>.')
  define('string', 'data_dir', None, 'TFDS data dir.')
  define('list', 'methods', list(METHODS), 'LoRA methods.',
         f'among {", ".join(METHODS)}', lambda v: bool(v) and set(v) <= set(
             METHODS))
  define('list', 'alphas', ['0.5'], 'Dirichlet alphas.', *numbers('float',
                                                                  '> 0'))
  define('list', 'ranks', ['4', '8'], 'LoRA ranks r.', *numbers('int', '>= 1'))
  define('list', 'het_ranks', ['2', '4', '8'], 'FlexLoRA/HetLoRA client '
         'ranks, round-robin, each capped at r.', *numbers('int', '>= 1'))
  define('integer', 'first_layer', 4, 'Adapt layers [this, 6); cache below.',
         'in [1, 5]')
  define('float', 'lora_alpha', 8., "LoRA's alpha (scale alpha / r).", '> 0')
  define('integer', 'num_seeds', 3, 'Seeds per configuration.', '>= 1')
  define('integer', 'seed', 0, 'Runs use seed, seed + 1, ...', '>= 0')
  define('integer', 'rounds', 50, 'Rounds per run.', '>= 1')
  define('integer', 'eval_every', 5, 'Evaluate every N rounds.', '>= 1')
  define('integer', 'clients', 10, 'Clients (Dirichlet split).', '>= 1')
  define('integer', 'clients_per_round', 5, 'Clients per round.', '>= 1')
  define('integer', 'local_steps', 5, 'Local Adam steps per round.', '>= 1')
  define('integer', 'batch_size', 16, 'Local batch size.', '>= 1')
  define('float', 'lr', 3e-3, 'Client (and centralized) Adam step.', '> 0')
  define('float', 'target_accuracy', 0.85, 'For bytes-to-target.',
         'in [0, 1]')
  define('integer', 'max_examples', 0, 'Cap each split (0: all).', '>= 0')
  define('bool', 'resume', False, 'Continue the runs with checkpoints.')
  define('bool', 'quick', False, f'Tiny: {QUICK}; explicit flags win.')


def settings_from_flags(fv: flags.FlagValues = flags.FLAGS):
  """The flag values as attributes (--quick fills the flags not given)."""
  v = {f.name: f.value for f in fv.get_flags_for_module(
      fv.find_module_defining_flag('rounds'))}
  v.update({k: q for k, q in QUICK.items() if v['quick'] and not fv[k].present})
  v.update(alphas=[float(a) for a in v['alphas']], ranks=[int(r) for r in v[
      'ranks']], het_ranks=[int(r) for r in v['het_ranks']], workdir=v[
          'workdir'] or time.strftime('runs/lora-%Y%m%d-%H%M%S'))
  if v['clients_per_round'] > v['clients']:
    raise training.ConfigError(f'--clients_per_round ({v["clients_per_round"]}'
                               f') must be <= --clients ({v["clients"]}).')
  return types.SimpleNamespace(**v)


class CachedTop:
  """Layers [first, 6) of MiniLM on cached features, mean pool, linear head.

  A flax-like model for `clients.classification_loss` / `predict_fn`:
  ``apply({'params': {'layer_i': ..., 'head': ...}}, x)`` with x
  [B, T, 385] = cached hidden states and the attention mask.
  """

  def __init__(self, encoder: MiniLM, first: int):
    self.encoder, self.first = encoder, first

  def apply(self, variables, x, train=False, rngs=None):
    del train, rngs  # No dropout.
    params = dict(variables['params'])
    head, mask = params.pop('head'), x[..., -1]
    hidden = self.encoder.apply({'params': params}, self.first, x[..., :-1],
                                mask, method=MiniLM.forward_from)
    return pretrained.mean_pool(hidden, mask) @ head['kernel'] + head['bias']


def prefix_features(encoder, variables, ids, mask, first, chunk=256):
  """The exact frozen-prefix cache: float32 [N, T, H + 1] (mask last)."""
  fn = jax.jit(lambda i, m: encoder.apply(
      variables, first, i, m, method=MiniLM.hidden_states_up_to))
  out = [np.asarray(fn(ids[i:i + chunk], mask[i:i + chunk]))
         for i in range(0, len(ids), chunk)]
  return np.concatenate([np.concatenate(out), mask[..., None]], -1).astype(
      np.float32)


def top_params(variables, first, num_classes, key):
  """The trained model's params: layers [first, 6) and a fresh head."""
  p = variables['params']
  d = p['embeddings']['norm']['scale'].shape[0]
  head = {'kernel': jax.random.normal(key, (d, num_classes)) / np.sqrt(d),
          'bias': jnp.zeros((num_classes,))}
  return {**{k: v for k, v in p.items() if k.startswith('layer_') and int(
      k[6:]) >= first}, 'head': head}


def load(s, log=print):
  """(encoder, variables, train, test, num_classes), features cached."""
  ds = data.load_dataset('bbc_news', data_dir=s.data_dir)
  encoder, variables = pretrained.load_minilm()
  splits = []
  for i, split in enumerate((ds.train, ds.test)):
    if s.max_examples and s.max_examples < len(split['y']):
      rows = np.sort(np.random.default_rng(i).permutation(len(split['y']))[
          :s.max_examples])
      split = {k: v[rows] for k, v in split.items()}
    t = data.tokenize_examples(split, pretrained.encode, MAX_LENGTH)
    splits.append({'x': prefix_features(encoder, variables, t['x'], t[
        'attention_mask'], s.first_layer), 'y': t['y']})
  log(f'Cached layers [0, {s.first_layer}) of {sum(len(x["y"]) for x in splits)}'
      ' titles.')
  return encoder, variables, splits[0], splits[1], ds.num_classes


def adapter_targets(first_layer: int) -> str:
  """The adapted kernels: q and v of layers [first_layer, 6)."""
  return rf'layer_[{first_layer}-5]/attention/(query|value)/kernel'


def build(s, method, rank, loss_fn, key, params):
  """(algorithm, cohort transform) of one method."""
  adam = optax.adam(s.lr)
  targets = adapter_targets(s.first_layer)
  cfg = lora.LoRAConfig(targets, rank, s.lora_alpha, key, dense_targets=HEAD)
  ranks = lambda c: c._replace(info={'rank': np.minimum(np.asarray(
      s.het_ranks)[np.asarray(c.client_ids) % len(s.het_ranks)], rank).astype(
          np.int32)})
  same = lambda c: c
  return {
      'fedit': lambda: (lora.fed_it(loss_fn, adam, cfg), same),
      'ffa': lambda: (lora.ffa_lora(loss_fn, adam, cfg), same),
      'fedsa': lambda: (lora.fed_sa_lora(loss_fn, adam, cfg), same),
      'flexlora': lambda: (lora.flex_lora(loss_fn, adam, cfg, max_rank=rank),
                           ranks),
      'hetlora': lambda: (lora.het_lora(loss_fn, adam, cfg, max_rank=rank),
                          ranks),
      'florg': lambda: (lora.florg(loss_fn, adam, lora.FLoRGConfig(
          targets, rank, s.lora_alpha, key, dense_targets=HEAD)), same),
      'florg_all': lambda: (lora.florg(loss_fn, adam, lora.FLoRGConfig(
          targets, rank, s.lora_alpha, key, dense_targets=HEAD,
          alignment='align_all')), same),
      'centralized': lambda: (lora.centralized_lora(loss_fn, adam, cfg),
                              lora.centralized_cohort),
      'local': lambda: (lora.local_only_lora(loss_fn, adam, cfg), same),
      'frozen': lambda: (frozen_head(loss_fn, adam, params),
                         lora.centralized_cohort),
  }[method]()


def frozen_head(loss_fn, optimizer, params):
  """Reference row: frozen MiniLM + a linear head trained centrally.

  Only ``head`` is trained (all data in one client, as ``centralized``);
  the layers stay the pretrained ones: logistic regression on the frozen
  mean-pooled features.
  """
  layers = {k: v for k, v in params.items() if k != 'head'}
  algorithm = core.federated_algorithm(
      clients.local_sgd(lambda head, batch, key: loss_fn(
          {**layers, 'head': head}, batch, key), optimizer),
      aggregators.weighted_mean(), optax.sgd(1.), weighting='uniform')
  return algorithm._replace(
      init=lambda p: algorithm.init(p['head']),
      model_params=lambda state, store: {**layers, 'head': state.params})


def label_mix_evaluator(correct, labels, label_mix, personal=None, alpha=1.):
  """``personal_accuracy``: mean over clients k of sum_c p_k(c) acc_k(c).

  p_k is client k's training label mix and acc_k(c) the class-c test
  accuracy of its model: the accuracy on a test set distributed like its
  own data [I]. ``correct(params)`` is the [N] hit vector on the test
  set of ``labels``; client k's model is ``personal(state, store, k)`` for
  methods that keep models per client, else the global model.
  """
  num_classes = label_mix.shape[1]
  counts = np.maximum(np.bincount(labels, minlength=num_classes), 1)

  def class_accuracy(params):
    hits = np.asarray(correct(params), np.float64)
    return np.bincount(labels, hits, num_classes) / counts

  def evaluator(params, state, store):
    if personal is None:
      acc = np.broadcast_to(class_accuracy(params), label_mix.shape)
    else:
      acc = np.stack([class_accuracy(personal(state, store, k, alpha=alpha))
                      for k in range(len(label_mix))])
    return {'personal_accuracy': float(np.mean(np.sum(label_mix * acc, 1)))}

  return evaluator


def bytes_to_target(lines, target):
  """Cumulative (upload + downlink) bytes per client at the first line whose
  test accuracy reaches `target` (None if none does)."""
  total, previous = 0., 0
  for l in lines:
    total += (l['round'] - previous) * (l.get('upload_bytes_per_client', 0.)
                                        + l.get('downlink_bytes_per_client', 0.))
    previous = l['round']
    if l['test_accuracy'] >= target:
      return total
  return None


def summarize(s, runs, full_bytes, seconds) -> None:
  """results.md and accuracy.png from {(method, alpha, rank): [lines]}."""
  md = [f'# Federated LoRA, MiniLM + BBC titles ({s.num_seeds} seeds, '
        f'{s.rounds} rounds, {s.clients} clients, {seconds:.0f} s)', '',
        f'Adapters on q, v of layers {s.first_layer}-5; bytes per client to '
        f'reach test accuracy {s.target_accuracy} (median over the seeds that '
        'reach it, of how many); upload % of full fine-tuning '
        f'({full_bytes / 1e6:.1f} MB). Test accuracy of fedsa and local: '
        'the merged mean adapters; personal accuracy: each client\'s own model '
        '(fedsa, local) or the global one, scored on the test set weighted by '
        'the client\'s label mix, mean over clients. frozen: pretrained '
        'MiniLM + linear head (no LoRA).', '',
        '| method | alpha | rank | test accuracy | personal accuracy | bytes '
        'to target | upload B/round | upload % full | s/round |',
        '|---' * 9 + '|']
  for (method, alpha, rank), seeds in runs.items():
    acc = [ls[-1]['test_accuracy'] for ls in seeds]
    own = [ls[-1]['personal_accuracy'] for ls in seeds]
    hit = [b for b in (bytes_to_target(ls, s.target_accuracy) for ls in seeds)
           if b is not None]
    up = np.mean([l.get('upload_bytes_per_client', 0.) for ls in seeds
                  for l in ls])
    sec = np.nanmean([l.get('round_time_s', np.nan) for ls in seeds
                      for l in ls] + [np.nan])
    md.append(f'| {method} | {alpha:g} | {rank} | {np.mean(acc):.4f} +- '
              f'{np.std(acc):.4f} | {np.mean(own):.4f} +- {np.std(own):.4f} | '
              + (f'{np.median(hit):.4g} ({len(hit)}/'
              f'{len(seeds)})' if hit and up else '-') + f' | {up:.4g} | '
              f'{100 * up / full_bytes:.3f} | {sec:.3g} |')
  with open(os.path.join(s.workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  training.plot_runs(
      {f'alpha {a:g}, r {r}': {m: runs[(m, a, r)] for m in s.methods}
       for a, r in itertools.product(s.alphas, s.ranks)},
      os.path.join(s.workdir, 'accuracy.png'), key='test_accuracy',
      title='Federated LoRA on BBC titles')


def run(s, log=print) -> dict:
  """Every configuration and seed, then the summary: {config: [lines]}."""
  _cli.check_fresh_sweep(s)
  t0, seeds = time.time(), range(s.seed, s.seed + s.num_seeds)
  encoder, variables, train, test, num_classes = load(s, log)
  parts = {(a, seed): data.partition('dirichlet', train, s.clients, seed=seed,
                                     dirichlet_alpha=a)
           for a, seed in itertools.product(s.alphas, seeds)}
  smallest = min(len(c) for p in parts.values() for c in p)
  if smallest < 1:  # Before the first run writes.
    raise training.ConfigError('A client got no data; lower --clients.')
  model = CachedTop(encoder, s.first_layer)
  loss_fn = clients.classification_loss(model)
  evaluator = training.classification_evaluator(  # Compiled once.
      clients.predict_fn(model), test, batch_size=128)
  full_bytes = lora.full_update_bytes(variables['params'])
  test_x, test_y = jnp.asarray(test['x']), np.asarray(test['y'])
  correct = jax.jit(lambda p: jnp.argmax(clients.predict_fn(model)(
      p, test_x), -1) == test_y)
  mixes = {k: np.stack([np.bincount(train['y'][rows], minlength=num_classes)
                        / max(len(rows), 1) for rows in part])
           for k, part in parts.items()}
  runs = {k: [] for k in itertools.product(s.methods, s.alphas, s.ranks)}
  for (method, alpha, rank), seed in itertools.product(runs, seeds):
    init_key, run_key = jax.random.split(jax.random.key(seed))
    params = top_params(variables, s.first_layer, num_classes, init_key)
    algorithm, transform = build(s, method, rank, loss_fn, init_key, params)
    part = parts[(alpha, seed)]
    cohorts = lambda r, part=part, seed=seed, transform=transform: transform(
        data.pack_cohort(train, part, data.sample_clients(
            s.clients, s.clients_per_round, seed=seed, round_num=r),
            batch_size=s.batch_size, num_steps=s.local_steps, seed=seed,
            round_num=r))
    runs[(method, alpha, rank)].append(_cli.sweep_run(
        s, algorithm, params, name=f'{method}-a{alpha:g}-r{rank}-seed{seed}',
        config=dict(method=method, alpha=alpha, rank=rank, seed=seed),
        title=f'{method} alpha {alpha:g} r {rank} seed {seed}',
        may_differ=SWEEP_KEYS, num_clients=s.clients, cohorts=cohorts,
        key=run_key, evaluators=[evaluator, label_mix_evaluator(
            correct, test_y, mixes[(alpha, seed)], PERSONAL.get(method),
            s.lora_alpha)]))
    last = runs[(method, alpha, rank)][-1][-1]
    log(f'  {method} alpha {alpha:g} r {rank} seed {seed} '
        f'({time.time() - t0:.0f} s): test accuracy {last["test_accuracy"]:.4f}')
  summarize(s, runs, full_bytes, time.time() - t0)
  log(f'Tables in {s.workdir}/results.md.')
  return runs


def main(argv):
  _cli.sweep_main(argv, lambda: run(settings_from_flags()))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
