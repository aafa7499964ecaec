"""The experiment loop: data, model and algorithm from a config; rounds,
evaluation, metrics.jsonl, plots and orbax checkpoints.

`run_experiment(config)` is what `python -m experiments.train` calls; tests
call it directly. The round itself is one jitted pure function
(`core.FederatedAlgorithm.apply`); everything here is host-side plumbing:

* clients and batch order come from (seed, round) (`data.sample_clients`,
  `data.pack_cohort`), and round keys from ``fold_in(key(seed), round)``,
  so 10 rounds straight and 5 + resume to 10 give the same parameters;
* every round's training loss and parameters are checked for finiteness
  before anything is evaluated or saved; a non-finite round stops the run
  with its number and leaves the last good checkpoint as it was.
"""

import dataclasses
import json
import os
import statistics
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext import models
from fedjax_ext.training import _config
from fedjax_ext.training import _distributed
from fedjax_ext.training import _evaluation
from fedjax_ext.training import _plots
from fedjax_ext.training import _prefetch
from fedjax_ext.training._checkpoint import Checkpointer
from fedjax_ext.training._config import ConfigError, ExperimentConfig

DEFAULT_NUM_CLIENTS = 20
METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'metrics.png'
CONFIG_FILE = 'config.json'


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or parameters."""


class Federation(NamedTuple):
  """A dataset split over clients, host-side."""
  train: core.Examples  # Pooled training columns 'x', 'y'.
  client_indices: list[np.ndarray]  # Client i's training rows of `train`.
  held_out: core.Examples | None  # Clients' held-out examples, if any.
  held_out_client: np.ndarray | None  # Client of each held-out example.
  test: core.Examples  # Centralized test set.
  num_classes: int

  @property
  def num_clients(self) -> int:
    return len(self.client_indices)


class RunResult(NamedTuple):
  state: core.ServerState
  client_store: core.PyTree
  metrics: list[dict[str, float]]  # The metrics.jsonl lines of this run.


def validate_config(config: ExperimentConfig) -> None:
  """`_config.validate` against the names this library knows."""
  _config.validate(
      config, datasets=data.DATASETS, models=models.MODELS,
      algorithms=algorithms.ALGORITHMS, partitions=data.PARTITIONS,
      strategies=core.STRATEGIES, weightings=clients.WEIGHTINGS)


def load_federation(config: ExperimentConfig) -> Federation:
  """Loads the dataset and splits it into clients as the config says."""
  dataset = data.load_dataset(config.dataset, data_dir=config.data_dir)
  train = {k: dataset.train[k] for k in ('x', 'y')}
  num_examples = len(train['y'])
  if config.partition == 'natural':
    if 'client_id' not in dataset.train:
      raise ConfigError(f'--partition=natural needs a dataset with a '
                        f'client_id column; {config.dataset} has none.')
    parts = data.natural_partition(dataset.train['client_id'])
    if config.num_clients not in (None, len(parts)):
      raise ConfigError(
          f'--num_clients={config.num_clients} disagrees with the '
          f'{len(parts)} natural clients of {config.dataset}; leave it unset.')
  else:
    num_clients = config.num_clients or DEFAULT_NUM_CLIENTS
    if num_clients > num_examples:
      raise ConfigError(f'--num_clients must be in [1, {num_examples}] (the '
                        f'training examples of {config.dataset}), got '
                        f'{num_clients}.')
    parts = data.partition(
        config.partition, train, num_clients, seed=config.seed,
        dirichlet_alpha=config.dirichlet_alpha,
        classes_per_client=config.classes_per_client,
        quantity_alpha=config.quantity_alpha)
  if config.clients_per_round > len(parts):
    raise ConfigError(f'--clients_per_round must be in [1, {len(parts)}] '
                      f'(--num_clients), got {config.clients_per_round}.')
  train_parts, held_parts = data.split_clients(
      parts, test_fraction=config.client_test_fraction, seed=config.seed)
  data.validate_partition(train_parts, num_examples)
  held_out = held_client = None
  if config.client_test_fraction > 0:
    rows = np.concatenate(held_parts)
    held_out = {k: v[rows] for k, v in train.items()}
    held_client = np.repeat(np.arange(len(held_parts)),
                            [len(p) for p in held_parts])
  return Federation(train, train_parts, held_out, held_client,
                    {k: dataset.test[k] for k in ('x', 'y')},
                    dataset.num_classes)


def build_model_and_algorithm(config: ExperimentConfig,
                              federation: Federation):
  """The flax model, initial params and the named algorithm."""
  model_kwargs = {}
  if config.model == 'mlp':
    model_kwargs['hidden_sizes'] = tuple(config.hidden_sizes)
  model = models.create_model(config.model,
                              num_classes=federation.num_classes,
                              **model_kwargs)
  init_key, _ = run_keys(config.seed)
  params = model.init(init_key, federation.train['x'][:1])['params']
  algorithm = algorithms.create_algorithm(
      config.algorithm, clients.classification_loss(model),
      client_learning_rate=config.client_lr,
      server_learning_rate=config.server_lr,
      num_clients=federation.num_clients, prox_mu=config.prox_mu,
      server_momentum=config.server_momentum, weighting=config.weighting,
      execution=config.execution)
  return model, params, algorithm


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(model-init key, round key) of a run: both fixed by the seed."""
  init_key, round_key = jax.random.split(jax.random.key(seed))
  return init_key, round_key


def default_workdir(config: ExperimentConfig) -> str:
  stamp = time.strftime('%Y%m%d-%H%M%S')
  name = config.dataset.replace('/', '_')
  return os.path.join('runs', f'{name}-{config.model}-{config.algorithm}-'
                      f'seed{config.seed}-{stamp}')


def _check_resume_compatible(workdir: str, config: ExperimentConfig) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = dataclasses.asdict(config)
  changed = [k for k in now if k not in _config.RESUMABLE_CHANGES
             and json.loads(json.dumps(now[k])) != saved.get(k)]
  if changed:
    raise ConfigError(
        f'--resume: {", ".join("--" + k for k in changed)} differ from the '
        f'run saved in {workdir}; resume with the same values.')


def _read_metrics(path: str, up_to_round: int) -> list[dict[str, float]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return [m for m in lines if m['round'] <= up_to_round]


def _write_metrics(path: str, lines: list[dict[str, float]]) -> None:
  with open(path, 'w') as f:
    for line in lines:
      f.write(json.dumps(line) + '\n')


def run_experiment(config: ExperimentConfig, *,
                   log: Callable[[str], None] = print) -> RunResult:
  """Trains, evaluates and checkpoints one federated run (module doc)."""
  validate_config(config)
  lead = jax.process_index() == 0  # Only process 0 writes files and logs.
  if not lead:
    log = lambda message: None
  if _distributed.is_multiprocess() and not config.workdir:
    raise ConfigError('--workdir is required with several processes (they '
                      'must share it).')
  workdir = config.workdir or default_workdir(config)
  os.makedirs(workdir, exist_ok=True)
  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  federation = load_federation(config)
  groups = config.sampling_groups or jax.process_count()
  if config.clients_per_round % groups:
    raise ConfigError(f'--clients_per_round ({config.clients_per_round}) '
                      f'must be a multiple of the {groups} sampling groups '
                      '(--sampling_groups, default: the process count).')
  devices = jax.device_count()
  if (core.resolve_strategy(config.execution, num_devices=devices) ==
      'sharded' and config.clients_per_round % devices):
    raise ConfigError(f'--clients_per_round ({config.clients_per_round}) '
                      f'must be a multiple of the {devices} devices the '
                      f'cohort is sharded over (--execution='
                      f'{config.execution}).')
  own_clients = _distributed.keep_own_clients(federation.client_indices)
  model, params, algorithm = build_model_and_algorithm(config, federation)
  local_epochs = None if config.local_steps else config.local_epochs
  num_steps = data.num_local_steps(
      [len(p) for p in federation.client_indices], config.batch_size,
      local_epochs=local_epochs, local_steps=config.local_steps or None)
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params),
                              federation.num_clients)
  evaluate = _evaluation.make_evaluate_fn(clients.predict_fn(model))
  test_set = _evaluation.make_eval_set(
      federation.test, batch_size=config.eval_batch_size)
  held_set = None
  if federation.held_out is not None:
    held_set = _evaluation.make_eval_set(
        federation.held_out, batch_size=config.eval_batch_size,
        segment_ids=federation.held_out_client,
        num_segments=federation.num_clients)
  metrics_path = os.path.join(workdir, METRICS_FILE)

  with Checkpointer(ckpt_dir) as checkpointer:
    start = checkpointer.latest_round()
    if start is not None and not config.resume:
      raise ConfigError(
          f'--workdir={workdir} already holds checkpoints up to round '
          f'{start}; pass --resume to continue it or choose another '
          '--workdir.')
    state, store = _distributed.to_global((state, store), sharded=False)
    if start is None:
      start, lines = 0, []
    else:
      _check_resume_compatible(workdir, config)
      state, store = checkpointer.restore(start, state, store)
      lines = _read_metrics(metrics_path, start)
      log(f'Resumed from the checkpoint of round {start} in {ckpt_dir}.')
    if lead:
      with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
        f.write(config.to_json())
      _write_metrics(metrics_path, lines)
    log(f'{config.algorithm} on {config.dataset}: {federation.num_clients} '
        f'clients, {config.clients_per_round} per round, {num_steps} local '
        f'steps of batch {config.batch_size}, {config.rounds} rounds, '
        f'{jax.device_count()} device(s) in {jax.process_count()} '
        f'process(es); workdir {workdir}')

    _, run_key = run_keys(config.seed)

    def train_round(state, store, cohort):
      state, store, metrics = algorithm.apply(state, store, cohort, run_key)
      metrics = dict(metrics)
      metrics['finite'] = (core.tree_all_finite(state.params)
                           & core.tree_all_finite(metrics['train_loss']))
      return state, store, metrics

    train_round = jax.jit(train_round, donate_argnums=(0, 1))

    def packed_cohorts():
      for r in range(start, config.rounds):
        ids = data.sample_clients(
            federation.num_clients, config.clients_per_round,
            seed=config.seed, round_num=r, num_groups=groups)
        yield r, data.pack_cohort(
            federation.train, own_clients, _distributed.local_block(ids),
            batch_size=config.batch_size, num_steps=num_steps,
            seed=config.seed, round_num=r, local_epochs=local_epochs)

    t_start = time.perf_counter()
    round_times, interval = [], []
    last_saved = start if start else None
    for r, cohort in _prefetch.prefetch(packed_cohorts()):
      cohort = _distributed.to_global(cohort, sharded=True)
      t0 = time.perf_counter()
      state, store, metrics = train_round(state, store, cohort)
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - t0
      if r == start:
        log(f'Round {r + 1} compiled and ran in {seconds:.2f} s.')
      else:
        round_times.append(seconds)
      if not metrics.pop('finite'):
        saved = (f'the last good checkpoint (round {last_saved}) in '
                 f'{ckpt_dir} is intact' if last_saved is not None
                 else 'no checkpoint had been saved yet')
        raise NonFiniteError(
            f'Round {r + 1}: non-finite training loss or parameters '
            f'(train_loss={float(metrics["train_loss"])}); stopping; '
            f'{saved}. Try a smaller --client_lr or --server_lr.')
      interval.append(metrics)
      done = r + 1
      if done % config.eval_every == 0 or done == config.rounds:
        line = {'round': done}
        line.update(_evaluation_line(
            evaluate, _distributed.local_copy(state.params), test_set,
            held_set))
        for key in ('train_loss', 'train_accuracy', 'update_norm'):
          line[key] = float(np.mean([m[key] for m in interval]))
        line['elapsed_s'] = time.perf_counter() - t_start
        recent = round_times[-len(interval):]
        if recent:
          line['round_time_s'] = statistics.median(recent)
        lines.append(line)
        if lead:
          _write_metrics(metrics_path, lines)
        rate = len(recent) / max(sum(recent), 1e-9)
        log(f'round {done}/{config.rounds} | {rate:.1f} rounds/s | '
            f'train_loss {line["train_loss"]:.4f} | test_accuracy '
            f'{line["test_accuracy"]:.4f} | elapsed {line["elapsed_s"]:.1f}s')
        interval = []
      if done % config.checkpoint_every == 0 or done == config.rounds:
        checkpointer.save(done, state, store)
        last_saved = done
  if lines and lead:
    _plots.plot_metrics(metrics_path, os.path.join(workdir, PLOT_FILE),
                        title=f'{config.algorithm} on {config.dataset}')
  return RunResult(state, store, lines)


def _evaluation_line(evaluate, params, test_set, held_set) -> dict:
  test = evaluate(params, test_set)
  line = {'test_accuracy': test['accuracy'], 'test_loss': test['loss']}
  if held_set is not None:
    held = evaluate(params, held_set)
    line['client_accuracy_mean'] = held['client_accuracy_mean']
    line['client_accuracy_p10'] = held['client_accuracy_p10']
  return line
