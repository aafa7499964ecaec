"""Library pieces by name: what `experiments.train`'s flags compose.

Every transform of the library is reachable from one set of names, so any
combination the stages allow is one command line: a robust aggregator
(with its pre-aggregators), an attack on a Byzantine fraction of the
clients, worker momentum, a ZO client optimizer, OmniISR's auxiliary
losses, drift metrics and any server optimizer. `compose_algorithm` builds
the `core.FederatedAlgorithm`; combinations that have no meaning raise a
`ConfigError` naming both flags.
"""

from typing import Callable

import jax
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import drift
from fedjax_ext import server
from fedjax_ext import zo
from fedjax_ext.training._config import ConfigError

# Robust rules by name; ``b`` is the number of Byzantine clients the rule
# is configured for.
AGGREGATORS = ('mean', 'mean_guarded', 'median', 'trimmed_mean', 'krum',
               'multi_krum', 'geometric_median', 'centered_clipping',
               'nnm_trimmed_mean', 'nnm_median', 'bucketing_trimmed_mean',
               'bulyan', 'arc_trimmed_mean', 'arc_nnm_trimmed_mean')
CLIENT_OPTIMIZERS = ('sgd', 'mezo', 'uniform_sparse', 'curvzo')


def create_aggregator(name: str, num_byzantine: int, *,
                      cc_radius: float = 1.0,
                      seed: int = 0) -> core.Aggregator:
  """A robust rule (or chain) by name (`AGGREGATORS`)."""
  a, b = aggregators, num_byzantine
  factories: dict[str, Callable[[], core.Aggregator]] = {
      'mean': a.weighted_mean,
      'mean_guarded': lambda: a.mean(reject_non_finite=True),
      'median': a.coordinate_median,
      'trimmed_mean': lambda: a.trimmed_mean(b),
      'krum': lambda: a.krum(b),
      'multi_krum': lambda: a.multi_krum(b),
      'geometric_median': a.geometric_median,
      'centered_clipping': lambda: a.centered_clipping(cc_radius),
      'nnm_trimmed_mean': lambda: a.process(a.nnm(b), a.trimmed_mean(b)),
      'nnm_median': lambda: a.process(a.nnm(b), a.coordinate_median()),
      'bucketing_trimmed_mean': lambda: a.process(
          a.bucketing(2, key=jax.random.key(seed)), a.trimmed_mean(b // 2)),
      'bulyan': lambda: a.bulyan(b),
      'arc_trimmed_mean': lambda: a.process(a.arc(b), a.trimmed_mean(b)),
      'arc_nnm_trimmed_mean': lambda: a.process(a.arc(b), a.nnm(b),
                                                a.trimmed_mean(b)),
  }
  if name not in factories:
    raise ValueError(f'Unknown aggregator {name!r}; valid choices: '
                     f'{", ".join(AGGREGATORS)}.')
  return factories[name]()


def create_attack(name: str, aggregator: core.Aggregator, *,
                  alie_z: float | None = None, ipm_epsilon: float = 0.1,
                  gaussian_scale: float = 1.0,
                  optimal_factors=None) -> byzantine.Attack:
  """The attack `name`; the ``*_optimal`` ones target `aggregator`."""
  kwargs = {
      'alie': dict(z=alie_z),
      'ipm': dict(epsilon=ipm_epsilon),
      'gaussian': dict(scale=gaussian_scale),
      'alie_optimal': dict(aggregator=aggregator),
      'ipm_optimal': dict(aggregator=aggregator),
  }.get(name, {})
  if name.endswith('_optimal') and optimal_factors is not None:
    kwargs['factors'] = optimal_factors
  return byzantine.create_attack(name, **kwargs)


def zo_optimizer(name: str, learning_rate: float, *, budget: float = 0.4,
                 epsilon: float = 1e-3, seed: int = 0
                 ) -> optax.GradientTransformationExtraArgs:
  """A ZO client optimizer: estimator `name` then SGD at `learning_rate`."""
  common = dict(epsilon=epsilon, key=seed)
  estimator = {
      'mezo': lambda: zo.mezo(**common),
      'uniform_sparse': lambda: zo.sparse_zo(budget=budget, **common),
      'curvzo': lambda: zo.curvzo(budget=budget, **common),
  }[name]()
  return optax.chain(estimator, optax.sgd(learning_rate))


def num_byzantine_clients(config, num_clients: int) -> int:
  """b of the robust rules: Byzantine clients expected in a cohort."""
  return int(np.floor(config.byzantine_fraction * config.clients_per_round))


def check_combination(config) -> None:
  """`ConfigError` for flag combinations the composition cannot honour."""
  c = config
  if c.attack != 'none' and c.byzantine_fraction == 0:
    raise ConfigError(f'--attack={c.attack} needs --byzantine_fraction > 0.')
  if c.byzantine_fraction > 0 and c.attack == 'none':
    raise ConfigError('--byzantine_fraction > 0 needs an --attack (none '
                      'of the Byzantine clients would misbehave).')
  zo_client = c.client_optimizer != 'sgd'
  if zo_client and c.algorithm in ('scaffold', 'fedprox'):
    raise ConfigError(f'--client_optimizer={c.client_optimizer} runs '
                      f'FedAvg-family ZO clients; --algorithm={c.algorithm} '
                      'needs first-order clients.')
  if zo_client and (c.attack != 'none' or c.worker_momentum > 0):
    raise ConfigError(f'--client_optimizer={c.client_optimizer} does not '
                      'compose with --attack / --worker_momentum (the '
                      'Byzantine clients wrap first-order clients).')
  if (c.attack != 'none' or c.worker_momentum > 0) and (
      c.algorithm == 'scaffold'):
    raise ConfigError('--algorithm=scaffold does not compose with --attack '
                      '/ --worker_momentum (its clients keep controls, not '
                      'momentum).')
  if zo_client and c.isr_points:
    raise ConfigError('--isr_points needs --client_optimizer=sgd (the '
                      'auxiliary losses train through gradients).')


def compose_algorithm(config, loss_fn: clients.LossFn, *, num_clients: int,
                      num_classes: int,
                      drift_select=None) -> core.FederatedAlgorithm:
  """The `core.FederatedAlgorithm` that `config` describes.

  Args:
    config: an `ExperimentConfig`.
    loss_fn: the clients' loss (with ISR, the ISR loss).
    num_clients: N, clients of the federation.
    num_classes: classes of the labels (label flipping).
    drift_select: optional part of the params that drift is measured on
      (`isr.backbone` with ISR).

  Returns:
    The algorithm, every hook composed in.
  """
  check_combination(config)
  c = config
  execution = core.Execution(strategy=c.execution)
  b = num_byzantine_clients(c, num_clients)
  aggregator = create_aggregator(c.aggregator, b, cc_radius=c.cc_radius,
                                 seed=c.seed)
  extra_metrics = None
  if c.drift_metrics:
    extra_metrics = drift.drift_metrics(select=drift_select)
  server_name = ('fedavg' if c.algorithm in ('fedprox', 'scaffold')
                 else c.algorithm)
  server_lr = (c.server_lr if c.server_lr is not None else
               algorithms.DEFAULT_SERVER_LEARNING_RATES[c.algorithm])
  server_opt = server.server_optimizer(server_name, server_lr,
                                       momentum=c.server_momentum,
                                       tau=c.server_tau)
  if c.client_optimizer != 'sgd':
    return zo.zo_fed_avg(
        loss_fn, zo_optimizer(c.client_optimizer, c.client_lr,
                              budget=c.zo_budget, seed=c.seed),
        server_opt, upload=c.zo_upload, aggregator=aggregator,
        weighting=c.weighting, extra_metrics=extra_metrics,
        execution=execution)
  if c.attack != 'none' or c.worker_momentum > 0:
    attack = None
    if c.attack != 'none':
      attack = create_attack(c.attack, aggregator, alie_z=c.alie_z,
                             ipm_epsilon=c.ipm_epsilon,
                             gaussian_scale=c.gaussian_scale)
    return byzantine.robust_algorithm(
        loss_fn, aggregator, server_opt, mode='fedavg',
        client_optimizer=optax.sgd(c.client_lr),
        prox_mu=c.prox_mu if c.algorithm == 'fedprox' else 0.,
        attack=attack, num_classes=num_classes,
        momentum=c.worker_momentum if c.worker_momentum > 0 else None,
        weighting=c.weighting, extra_metrics=extra_metrics,
        execution=execution)
  algorithm = algorithms.create_algorithm(
      c.algorithm, loss_fn, client_learning_rate=c.client_lr,
      server_learning_rate=server_lr, num_clients=num_clients,
      prox_mu=c.prox_mu, server_momentum=c.server_momentum, tau=c.server_tau,
      aggregator=aggregator, weighting=c.weighting,
      extra_metrics=extra_metrics, execution=execution)
  if c.drift_metrics:
    algorithm = drift.instrument(algorithm, loss_fn,
                                 learning_rate=c.client_lr,
                                 weighting=c.weighting, select=drift_select,
                                 execution=execution)
  return algorithm


def byzantine_info(config, num_clients: int
                  ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """``fn(cohort ids) -> Cohort.info`` columns the composition needs.

  With a Byzantine fraction, ``'byzantine'`` flags the cohort's members of
  the fixed Byzantine set `byzantine.byzantine_ids(N, fraction, seed)`.
  """
  if config.byzantine_fraction == 0:
    return lambda ids: {}
  ids = byzantine.byzantine_ids(num_clients, config.byzantine_fraction,
                                seed=config.seed)
  return lambda cohort_ids: {'byzantine': np.isin(
      np.asarray(cohort_ids), ids).astype(np.float32)}
