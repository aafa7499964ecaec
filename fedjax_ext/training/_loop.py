"""`run_experiment(config)`: a federated run from an `ExperimentConfig`.

What `python -m experiments.train` calls; tests call it directly. It loads
and splits the data (`load_federation`), builds the model and the
algorithm the config names (`build_model_and_algorithm`: the named
algorithm with its aggregator, attack, drift metrics and execution policy
composed in), and hands both to the one experiment loop,
`training.run_rounds`, which owns rounds, evaluation, outputs, checkpoints
and resume. Clients and batch order come from (seed, round)
(`data.sample_clients`, `data.pack_cohort`), so 10 rounds straight and
5 + resume to 10 give the same parameters.
"""

import dataclasses
import os
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext import isr
from fedjax_ext import models
from fedjax_ext import zo
from fedjax_ext.data._tfds import resolve_data_dir
from fedjax_ext.training import _compose
from fedjax_ext.training import _config
from fedjax_ext.training import _distributed
from fedjax_ext.training import _evaluation
from fedjax_ext.training import _runner
from fedjax_ext.training._config import ConfigError, ExperimentConfig

DEFAULT_NUM_CLIENTS = 20


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


def validate_config(config: ExperimentConfig) -> None:
  """`_config.validate` against the names this library knows."""
  _config.validate(
      config, datasets=data.DATASETS, models=models.MODELS,
      algorithms=algorithms.ALGORITHMS, partitions=data.PARTITIONS,
      strategies=core.STRATEGIES, weightings=core.WEIGHTINGS,
      aggregators=_compose.AGGREGATORS, attacks=byzantine.ATTACKS,
      client_optimizers=_compose.CLIENT_OPTIMIZERS, zo_uploads=zo.UPLOADS)
  _compose.check_combination(config)


def load_federation(config: ExperimentConfig) -> Federation:
  """Loads the dataset and splits it into clients as the config says.

  An unset ``partition`` is the dataset's default (`data.default_partition`:
  its natural clients when it has them).
  """
  if config.partition is None:
    config = dataclasses.replace(
        config, partition=data.default_partition(config.dataset))
  if config.dataset.split('/')[0] in data.TEXT_DATASETS:
    raise ConfigError(f'--dataset={config.dataset} is text: it needs a '
                      'tokenizer and a pretrained model (fedjax_ext.pretrained'
                      ', data.tokenize_examples), not experiments.train.')
  if config.data_dir and os.path.exists(config.data_dir) and not (
      os.path.isdir(config.data_dir)):
    raise ConfigError(f'--data_dir={config.data_dir} is a file, not a '
                      'directory.')
  try:
    dataset = data.load_dataset(config.dataset, data_dir=config.data_dir)
  except data.DataError:
    raise
  except (ValueError, OSError) as e:
    raise ConfigError(f'--dataset={config.dataset}: {e}') from None
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
    if (config.partition == 'shards'
        and config.classes_per_client > dataset.num_classes):
      raise ConfigError(f'--classes_per_client must be in [1, '
                        f'{dataset.num_classes}] (the classes of '
                        f'{config.dataset}), got {config.classes_per_client}.')
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
  """The flax model, initial params, the algorithm and its predict fn.

  With ``isr_points`` the params are ``{'model', 'aux'}`` (OmniISR heads),
  the loss is `isr.isr_loss` and drift is measured on the backbone.
  """
  model_kwargs = {}
  if config.model == 'mlp':
    model_kwargs['hidden_sizes'] = tuple(config.hidden_sizes)
  model = models.create_model(config.model,
                              num_classes=federation.num_classes,
                              **model_kwargs)
  init_key, _ = run_keys(config.seed)
  x = federation.train['x'][:1]
  select = None
  if config.isr_points:
    points = isr.isr_points(config.isr_points,
                            mi_weight=config.isr_mi_weight,
                            ne_weight=config.isr_ne_weight)
    try:
      params = isr.init_isr(model, init_key, x, points,
                            num_classes=federation.num_classes)
    except (KeyError, ValueError) as e:
      raise ConfigError(f'--isr_points={",".join(config.isr_points)}: '
                        f'{e}') from None
    loss_fn = isr.isr_loss(model, points)
    predict = isr.predict_fn(model)
    select = isr.backbone
  else:
    params = model.init(init_key, x)['params']
    loss_fn = clients.classification_loss(model)
    predict = clients.predict_fn(model)
  algorithm = _compose.compose_algorithm(
      config, loss_fn, num_clients=federation.num_clients,
      num_classes=federation.num_classes, drift_select=select)
  return predict, params, algorithm


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(model-init key, round key) of a run: both fixed by the seed."""
  init_key, round_key = jax.random.split(jax.random.key(seed))
  return init_key, round_key


def default_workdir(config: ExperimentConfig) -> str:
  stamp = time.strftime('%Y%m%d-%H%M%S')
  name = config.dataset.replace('/', '_')
  return os.path.join('runs', f'{name}-{config.model}-{config.algorithm}-'
                      f'seed{config.seed}-{stamp}')


def run_experiment(config: ExperimentConfig, *,
                   log: Callable[[str], None] = print) -> _runner.RunResult:
  """Trains, evaluates and checkpoints one federated run (module doc)."""
  validate_config(config)
  if _distributed.is_multiprocess() and not config.workdir:
    raise ConfigError('--workdir is required with several processes (they '
                      'must share it).')
  config = dataclasses.replace(
      config, partition=config.partition or data.default_partition(
          config.dataset))
  federation = load_federation(config)
  sequence_model = config.model in models.SEQUENCE_MODELS
  if sequence_model != (federation.train['y'].ndim == 2):
    raise ConfigError(
        f'--model={config.model} '
        + ('predicts a label per token; ' if sequence_model else
           'predicts one label per example; ')
        + f'--dataset={config.dataset} has '
        + ('one label per token' if federation.train['y'].ndim == 2 else
           'one label per example')
        + f' (sequence models: {", ".join(models.SEQUENCE_MODELS)}).')
  # Every value the run uses, written to config.json: a run is reproduced
  # by --config=<workdir>/config.json.
  config = dataclasses.replace(
      config, workdir=config.workdir or default_workdir(config),
      data_dir=resolve_data_dir(config.data_dir),
      num_clients=federation.num_clients,
      server_lr=(config.server_lr if config.server_lr is not None else
                 algorithms.DEFAULT_SERVER_LEARNING_RATES[config.algorithm]))
  workdir = config.workdir
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
  local_epochs = None if config.local_steps else config.local_epochs
  sizes = [len(p) for p in federation.client_indices]
  if config.batch_size > max(sizes):
    raise ConfigError(f'--batch_size must be in [1, {max(sizes)}] (the '
                      'largest client\'s training examples), got '
                      f'{config.batch_size}.')
  num_steps = data.num_local_steps(
      sizes, config.batch_size, local_epochs=local_epochs,
      local_steps=config.local_steps or None)
  x = federation.train['x']
  _config.check_cohort_memory(
      config, num_steps=num_steps,
      example_bytes=x.dtype.itemsize * int(np.prod(x.shape[1:])))
  predict, params, algorithm = build_model_and_algorithm(config,
                                                         federation)
  evaluators = [_evaluation.classification_evaluator(
      predict, federation.test, batch_size=config.eval_batch_size)]
  if federation.held_out is not None:
    evaluators.append(_evaluation.classification_evaluator(
        predict, federation.held_out, batch_size=config.eval_batch_size,
        client_of_example=federation.held_out_client,
        num_clients=federation.num_clients))
  extra_info = _compose.byzantine_info(config, federation.num_clients)

  def cohorts(r: int) -> core.Cohort:
    ids = data.sample_clients(
        federation.num_clients, config.clients_per_round, seed=config.seed,
        round_num=r, num_groups=groups)
    cohort = data.pack_cohort(
        federation.train, own_clients, _distributed.local_block(ids),
        batch_size=config.batch_size, num_steps=num_steps, seed=config.seed,
        round_num=r, local_epochs=local_epochs)
    return cohort._replace(info=extra_info(cohort.client_ids))

  log(f'{config.algorithm} on {config.dataset}: {federation.num_clients} '
      f'clients, {config.clients_per_round} per round, {num_steps} local '
      f'steps of batch {config.batch_size}, {config.rounds} rounds, '
      f'{jax.device_count()} device(s) in {jax.process_count()} '
      f'process(es); workdir {workdir}')
  _, run_key = run_keys(config.seed)
  strategy = core.resolve_strategy(config.execution, [params])
  return _runner.run_rounds(
      algorithm, params, num_clients=federation.num_clients,
      cohorts=cohorts, rounds=config.rounds, key=run_key, workdir=workdir,
      evaluators=evaluators, eval_every=config.eval_every,
      checkpoint_every=config.checkpoint_every, resume=config.resume,
      resume_from=config.resume_from, config=dataclasses.asdict(config),
      config_may_differ=_config.RESUMABLE_CHANGES,
      title=f'{config.algorithm} on {config.dataset}',
      alarms=[_runner.training_alarms(federation.num_classes)],
      description=(f'{config.model}, {strategy} clients, '
                   f'{config.clients_per_round} per round, {num_steps} local '
                   'steps'), log=log)
