"""`ExperimentConfig`: every knob of a federated training run, validated.

The absl flags of `experiments/train.py` map one to one onto these fields,
so a run is reproducible from its `config.json` alone, and the checks below
give every bad value a one-line message that names the flag and the range.
"""

import dataclasses
import json
import math
import os
from typing import Any


class ConfigError(ValueError):
  """A configuration value is out of range; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """A federated training run. Field names are the flag names."""
  # Data.
  dataset: str = 'digits'
  data_dir: str | None = None
  # None: 'natural' for datasets with natural clients (a client_id column:
  # leaf_synthetic, federated_emnist, shakespeare, stackoverflow), else
  # 'dirichlet' (data.default_partition).
  partition: str | None = None
  dirichlet_alpha: float = 0.5
  classes_per_client: int = 2
  quantity_alpha: float = 1.0
  # None: 20, or the dataset's natural number of clients for 'natural'.
  num_clients: int | None = None
  client_test_fraction: float = 0.2
  # Model.
  model: str = 'mlp'
  hidden_sizes: tuple[int, ...] = (200,)
  # Algorithm.
  algorithm: str = 'fedavg'
  clients_per_round: int = 10
  rounds: int = 200
  local_epochs: float = 1.0
  local_steps: int = 0  # > 0 replaces local_epochs.
  batch_size: int = 20
  client_lr: float = 0.1
  # None: the algorithm's default (algorithms.DEFAULT_SERVER_LEARNING_RATES).
  server_lr: float | None = None
  server_tau: float = 1e-3  # Adaptive server optimizers' epsilon (tau).
  server_momentum: float = 0.9
  prox_mu: float = 0.01
  # Aggregation weight: 'num_examples' (dataset size n_k, as McMahan et
  # al. and FedJAX), 'examples_processed' or 'uniform'.
  weighting: str = 'num_examples'
  execution: str = 'auto'
  # Composition: every transform of the library by name (training._compose).
  aggregator: str = 'mean'
  cc_radius: float = 1.0
  byzantine_fraction: float = 0.0
  attack: str = 'none'
  alie_z: float | None = None  # None: Baruch et al.'s z_max.
  ipm_epsilon: float = 0.1
  gaussian_scale: float = 1.0
  worker_momentum: float = 0.0  # 0: none.
  client_optimizer: str = 'sgd'  # Or a ZO optimizer: mezo, curvzo, ...
  zo_upload: str = 'delta'
  zo_budget: float = 0.4
  isr_points: tuple[str, ...] = ()  # Model submodules with ISR heads.
  isr_mi_weight: float = 0.3
  isr_ne_weight: float = 0.05
  drift_metrics: bool = False
  # Cohorts draw C / G clients from each of G groups (client_id % G);
  # 0: one group per process (see data.sample_clients).
  sampling_groups: int = 0
  # Run.
  seed: int = 0
  eval_every: int = 10
  checkpoint_every: int = 50
  eval_batch_size: int = 500
  workdir: str | None = None
  resume: bool = False
  # Resume from the checkpoint of this round (implies resume); later
  # checkpoints and metrics lines are deleted.
  resume_from: int | None = None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'ExperimentConfig':
    values = dict(values)
    for key in ('hidden_sizes', 'isr_points'):
      if key in values:
        values[key] = tuple(values[key])
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f'unknown config keys: {", ".join(unknown)}.')
    return cls(**values)


# Upper bounds of the numeric flags: beyond them a run is a typo, not an
# experiment (a memory estimate refuses cohorts that cannot fit, see
# `check_cohort_memory`).
MAX_ROUNDS = 10_000_000
MAX_CLIENTS = 10_000_000
MAX_BATCH = 1_000_000
MAX_CLASSES = 100_000
MAX_LOCAL_STEPS = 1_000_000
MAX_LOCAL_EPOCHS = 1_000
MAX_HIDDEN = 1_000_000
MAX_LEARNING_RATE = 1e6

# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ('rounds', 'eval_every', 'checkpoint_every', 'resume',
                     'resume_from', 'workdir', 'data_dir', 'eval_batch_size',
                     'execution')


def _require(ok: bool, flag: str, allowed: str, value: Any) -> None:
  if not ok:
    raise ConfigError(f'--{flag} must be {allowed}, got {value!r}.')


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f'--{flag}={value!r} is unknown; valid choices: '
                      f'{", ".join(choices)}.')


def _finite(x: float) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def validate(config: ExperimentConfig, *, datasets: tuple[str, ...],
             models: tuple[str, ...], algorithms: tuple[str, ...],
             partitions: tuple[str, ...], strategies: tuple[str, ...],
             weightings: tuple[str, ...],
             aggregators: tuple[str, ...] = ('mean',),
             attacks: tuple[str, ...] = ('none',),
             client_optimizers: tuple[str, ...] = ('sgd',),
             zo_uploads: tuple[str, ...] = ('delta',)) -> None:
  """Raises `ConfigError` for the first bad value, naming its flag."""
  c = config
  _choice(c.dataset.split('/')[0], 'dataset', datasets)
  _choice(c.model, 'model', models)
  _choice(c.algorithm, 'algorithm', algorithms)
  if c.partition is not None:
    _choice(c.partition, 'partition', partitions)
  _choice(c.execution, 'execution', strategies)
  _choice(c.weighting, 'weighting', weightings)
  _choice(c.aggregator, 'aggregator', aggregators)
  _choice(c.attack, 'attack', attacks)
  _choice(c.client_optimizer, 'client_optimizer', client_optimizers)
  _choice(c.zo_upload, 'zo_upload', zo_uploads)
  _require(_finite(c.byzantine_fraction) and 0 <= c.byzantine_fraction < 0.5,
           'byzantine_fraction', 'in [0, 0.5)', c.byzantine_fraction)
  _require(_finite(c.worker_momentum) and 0 <= c.worker_momentum < 1,
           'worker_momentum', 'in [0, 1) (0: none)', c.worker_momentum)
  _require(_finite(c.zo_budget) and 0 < c.zo_budget <= 1, 'zo_budget',
           'in (0, 1]', c.zo_budget)
  for flag in ('cc_radius', 'ipm_epsilon', 'gaussian_scale'):
    value = getattr(c, flag)
    _require(_finite(value) and value > 0, flag, 'a finite number > 0',
             value)
  _require(c.alie_z is None or (_finite(c.alie_z) and c.alie_z > 0),
           'alie_z', 'a finite number > 0 (unset: z_max)', c.alie_z)
  for flag in ('isr_mi_weight', 'isr_ne_weight'):
    value = getattr(c, flag)
    _require(_finite(value) and value >= 0, flag, 'a finite number >= 0',
             value)
  for flag, most in (('rounds', MAX_ROUNDS),
                     ('clients_per_round', MAX_CLIENTS),
                     ('batch_size', MAX_BATCH), ('eval_every', MAX_ROUNDS),
                     ('checkpoint_every', MAX_ROUNDS),
                     ('eval_batch_size', MAX_BATCH),
                     ('classes_per_client', MAX_CLASSES)):
    value = getattr(c, flag)
    _require(isinstance(value, int) and 1 <= value <= most, flag,
             f'an integer in [1, {most:,}]', value)
  _require(isinstance(c.seed, int) and 0 <= c.seed < 2**31, 'seed',
           f'an integer in [0, {2**31 - 1}]', c.seed)
  _require(c.resume_from is None or (isinstance(c.resume_from, int)
                                     and c.resume_from >= 1),
           'resume_from', 'a round >= 1 that has a checkpoint',
           c.resume_from)
  _require(c.num_clients is None or 1 <= c.num_clients <= MAX_CLIENTS,
           'num_clients', f'an integer in [1, {MAX_CLIENTS:,}]',
           c.num_clients)
  if c.num_clients is not None:
    _require(c.clients_per_round <= c.num_clients, 'clients_per_round',
             f'in [1, --num_clients={c.num_clients}]', c.clients_per_round)
  _require(c.sampling_groups >= 0, 'sampling_groups',
           '>= 0 (0: one group per process)', c.sampling_groups)
  _require(0 <= c.local_steps <= MAX_LOCAL_STEPS, 'local_steps',
           f'in [0, {MAX_LOCAL_STEPS:,}] (0: use --local_epochs)',
           c.local_steps)
  _require(_finite(c.local_epochs) and c.local_epochs <= MAX_LOCAL_EPOCHS,
           'local_epochs', f'a number in (0, {MAX_LOCAL_EPOCHS}]',
           c.local_epochs)
  for flag in ('client_lr', 'dirichlet_alpha', 'quantity_alpha',
               'local_epochs', 'server_tau'):
    value = getattr(c, flag)
    _require(_finite(value) and value > 0, flag, 'a finite number > 0',
             value)
  _require(_finite(c.prox_mu) and c.prox_mu >= 0, 'prox_mu',
           'a finite number >= 0', c.prox_mu)
  _require(_finite(c.server_momentum) and 0 <= c.server_momentum < 1,
           'server_momentum', 'in [0, 1)', c.server_momentum)
  _require(_finite(c.client_test_fraction)
           and 0 <= c.client_test_fraction < 1, 'client_test_fraction',
           'in [0, 1)', c.client_test_fraction)
  _require(bool(c.hidden_sizes) and all(
      isinstance(h, int) and 1 <= h <= MAX_HIDDEN for h in c.hidden_sizes),
           'hidden_sizes', f'a list of integers in [1, {MAX_HIDDEN:,}]',
           list(c.hidden_sizes))
  _require(c.server_lr is None or (_finite(c.server_lr) and c.server_lr > 0),
           'server_lr', 'a finite number > 0 (unset: per algorithm)',
           c.server_lr)
  for flag in ('client_lr', 'server_lr'):
    value = getattr(c, flag)
    _require(value is None or value <= MAX_LEARNING_RATE, flag,
             f'a finite number in (0, {MAX_LEARNING_RATE:g}]', value)


def check_cohort_memory(config: ExperimentConfig, *, num_steps: int,
                        example_bytes: int,
                        available_bytes: int | None = None) -> None:
  """Refuses a round whose packed cohort cannot fit in memory.

  A cohort is [C, S, B] examples of `example_bytes` each (plus the mask);
  it must fit in half the machine's memory, or the flags that size it are
  named with the estimate.
  """
  if available_bytes is None:
    try:
      available_bytes = (os.sysconf('SC_PAGE_SIZE')
                         * os.sysconf('SC_PHYS_PAGES'))
    except (ValueError, OSError, AttributeError):
      return
  c = config
  need = c.clients_per_round * num_steps * c.batch_size * (example_bytes + 4)
  if need > available_bytes // 2:
    steps = (f'--local_steps={c.local_steps}' if c.local_steps
             else f'--local_epochs={c.local_epochs} ({num_steps} steps)')
    raise ConfigError(
        f'one round packs {need / 2**30:.1f} GiB of examples '
        f'(--clients_per_round={c.clients_per_round} x {steps} x '
        f'--batch_size={c.batch_size}), more than half of this machine\'s '
        f'{available_bytes / 2**30:.1f} GiB; lower one of them.')
