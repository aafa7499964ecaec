r"""Byzantine-robust federated training as one `core.federated_algorithm`.

`robust_algorithm` composes an honest client (multi-step FedAvg or the
one-gradient DSGD worker of Ruan, Wang and Liu, arXiv 2604.10179, 2026),
optional worker momentum, the Byzantine wrapper (flags, label flipping), an
attack run as ``transform_outputs`` inside the jitted round (so omniscient
attacks see the round's honest updates), a robust aggregator and a server
optimizer. Round metrics gain ``'rejected_updates'`` (clients whose update
or weight was non-finite, which every robust aggregator ignores) and
``'byzantine_clients'``.

Who is Byzantine: `byzantine_ids` draws a fixed set of client ids of the
federation from (fraction, seed); in each round the Byzantine clients are
the sampled ones in that set (`mark_cohort` adds their flags to the
cohort).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext.byzantine import _attacks
from fedjax_ext.byzantine import _clients

MODES = ('fedavg', 'dsgd')


def byzantine_ids(num_clients: int, fraction: float, *,
                  seed: int) -> np.ndarray:
  """The fixed Byzantine clients: ``round(fraction * N)`` ids, sorted.

  For one seed the sets are nested: a larger fraction adds clients to a
  smaller one's set.

  Args:
    num_clients: N, clients of the federation.
    fraction: in [0, 0.5).
    seed: fixes which clients.

  Returns:
    int32 sorted client ids.
  """
  if not 0 <= fraction < 0.5:
    raise ValueError(f'Byzantine fraction must be in [0, 0.5), got '
                     f'{fraction}.')
  count = int(round(fraction * num_clients))
  order = np.random.default_rng([seed, 0xB12]).permutation(num_clients)
  return np.sort(order[:count]).astype(np.int32)


def mark_cohort(cohort: core.Cohort, ids: np.ndarray) -> core.Cohort:
  """The cohort with a ``'byzantine'`` column [C]: 1. for ids in `ids`."""
  flags = np.isin(np.asarray(cohort.client_ids), ids).astype(np.float32)
  batches = dict(cohort.batches)
  batches[_clients.BYZANTINE] = flags
  return cohort._replace(batches=batches)


def attack_outputs(attack: _attacks.Attack):
  """``transform_outputs`` that applies `attack` to the Byzantine rows.

  Optimised attacks (`Attack.choose_factor`) also report the factor they
  chose as the client metric ``'attack_factor'`` (the round metric is then
  that factor).
  """

  def transform(outputs: core.ClientOutput,
                key: core.PRNGKey) -> core.ClientOutput:
    byzantine = outputs.metrics[_clients.BYZANTINE] > 0
    if attack.choose_factor is None:
      update = attack.corrupt(outputs.update, byzantine, outputs.weight, key)
      return outputs._replace(update=update)
    factor = attack.choose_factor(outputs.update, byzantine, outputs.weight,
                                  key)
    update = attack.corrupt_with(outputs.update, byzantine, outputs.weight,
                                 factor)
    # Reported per client so that the round's weighted mean is the factor.
    metrics = dict(outputs.metrics)
    metrics['attack_factor'] = jnp.broadcast_to(factor, byzantine.shape)
    return outputs._replace(update=update, metrics=metrics)

  return transform


def robustness_metrics(outputs: core.ClientOutput, aggregate: core.Updates,
                       state: core.ServerState) -> core.Metrics:
  """``extra_metrics``: rejected (non-finite) and Byzantine client counts."""
  del aggregate, state
  rejected = aggregators.rejected_clients(outputs.update, outputs.weight)
  metrics = {'rejected_updates': jnp.sum(rejected).astype(jnp.int32)}
  if _clients.BYZANTINE in outputs.metrics:
    metrics['byzantine_clients'] = jnp.sum(
        outputs.metrics[_clients.BYZANTINE] > 0).astype(jnp.int32)
  return metrics


def robust_algorithm(loss_fn: clients.LossFn,
                     aggregator: core.Aggregator,
                     server_optimizer: optax.GradientTransformation, *,
                     mode: str = 'fedavg',
                     client_optimizer: optax.GradientTransformation
                     | None = None,
                     attack: _attacks.Attack | None = None,
                     num_classes: int | None = None,
                     momentum: jax.typing.ArrayLike | None = None,
                     momentum_init: str = 'zeros',
                     weighting: str = 'uniform',
                     unroll: int | bool | str = 'auto',
                     execution: str = 'auto',
                     chunk_size: int | None = None
                     ) -> core.FederatedAlgorithm:
  r"""Robust FedAvg or DSGD with attacks and worker momentum.

  Args:
    loss_fn: masked mean loss of one batch.
    aggregator: e.g. ``aggregators.process(aggregators.nnm(b),
      aggregators.trimmed_mean(b))``.
    server_optimizer: ``optax.sgd(gamma)`` gives the paper's
      :math:`\theta \leftarrow \theta - \gamma R`; ``optax.sgd(1.)`` with
      ``mode='fedavg'`` gives FedAvg.
    mode: ``'fedavg'`` (local steps of `client_optimizer`, update = global
      minus local params) or ``'dsgd'`` (one gradient per round,
      `_clients.sgd_gradient`).
    client_optimizer: the local optimizer of ``'fedavg'``.
    attack: what Byzantine clients do; ``None`` = honest everywhere (the
      round then is exactly the honest one: no hook runs).
    num_classes: needed for label flipping.
    momentum: worker momentum :math:`\beta` or ``None`` for none (a stateless
      client, bit-identical to `algorithms.fed_avg` for ``'fedavg'``). May
      be traced.
    momentum_init: see `_clients.worker_momentum`.
    weighting: ``'uniform'`` or ``'examples'`` (what `aggregator` receives;
      the robust rules only use it as presence).
    unroll, execution, chunk_size: as `algorithms.fed_avg`.

  Returns:
    A `core.FederatedAlgorithm`; its client state is the momentum (or
    ``()``). Feed it cohorts marked by `mark_cohort`.
  """
  if mode not in MODES:
    raise ValueError(f'Unknown mode {mode!r}; valid choices: '
                     f'{", ".join(MODES)}.')
  if mode == 'fedavg':
    if client_optimizer is None:
      raise ValueError("mode='fedavg' needs a client_optimizer.")
    honest = clients.local_sgd(loss_fn, client_optimizer,
                               weighting=weighting, unroll=unroll)
  else:
    honest = _clients.sgd_gradient(loss_fn, weighting=weighting)
  init_client_state = lambda params: ()
  if momentum is not None:
    honest = _clients.worker_momentum(honest, momentum, init=momentum_init)
    init_client_state = lambda params: jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  flips = attack is not None and attack.flips_labels
  client_update = _clients.byzantine_client(honest, flip_labels=flips,
                                            num_classes=num_classes)
  transform = None if attack is None else attack_outputs(attack)
  return core.federated_algorithm(
      client_update, aggregator, server_optimizer,
      init_client_state=init_client_state,
      transform_outputs=transform,
      extra_metrics=robustness_metrics,
      execution=execution, chunk_size=chunk_size)
