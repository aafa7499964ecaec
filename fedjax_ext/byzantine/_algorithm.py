r"""Byzantine-robust federated training as one `core.federated_algorithm`.

`robust_algorithm` composes, with `core.federated_algorithm`, an honest
client (multi-step FedAvg or the one-gradient DSGD worker of Ruan, Wang and
Liu, arXiv 2604.10179, 2026), optional worker momentum, the Byzantine
wrapper (flags, label flipping), an attack run as ``transform_outputs``
inside the jitted round (so omniscient attacks see the round's honest
updates and the defence's state), a robust aggregator and a server update.
Round metrics gain ``'rejected_updates'`` (clients whose update or weight
was non-finite, which every robust aggregator ignores) and
``'byzantine_clients'``.

Who is Byzantine: `byzantine_ids` draws a fixed set of client ids of the
federation from (fraction, seed); in each round the Byzantine clients are
the sampled ones in that set. Their flags are per-round data, so they
travel in ``Cohort.info['byzantine']`` ([C] float32, `mark_cohort`), never
in the batches: the client wrapper reads its own flag from its ``info``
argument, the attack reads the column from the cohort.
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
  """The cohort with ``info['byzantine']`` [C]: 1. for ids in `ids`, else 0.

  Host-side (NumPy) on concrete client ids. Inside a traced program set the
  column directly: ``cohort._replace(info={**cohort.info, BYZANTINE:
  flags})`` with float32 flags [C].
  """
  flags = np.isin(np.asarray(cohort.client_ids), ids).astype(np.float32)
  return cohort._replace(info={**cohort.info, _clients.BYZANTINE: flags})


def cohort_flags(cohort: core.Cohort) -> jax.Array:
  """bool [C]: ``cohort.info['byzantine'] > 0`` (all False without it)."""
  flags = cohort.info.get(_clients.BYZANTINE)
  if flags is None:
    return jnp.zeros(jnp.shape(cohort.client_ids), bool)
  return jnp.asarray(flags) > 0


def attack_outputs(attack: _attacks.Attack,
                   aggregator: core.Aggregator | None = None
                   ) -> core.TransformOutputsFn:
  """``transform_outputs`` that applies `attack` to the Byzantine rows.

  ``transform(outputs, state, cohort, key)`` reads the Byzantine rows from
  ``cohort.info['byzantine']`` (`mark_cohort`). Optimised attacks
  (`Attack.choose_factor`) get a `_attacks.RoundContext`: `aggregator`
  (the rule the server uses), the server state before the round, the
  cohort's ``client_info()`` and the aggregation stage's key, so that an
  attack targeting `aggregator` simulates it from the defence's current
  state with the round's extra arguments (`_attacks.simulate_aggregation`).
  They also report the factor they chose as the client metric
  ``'attack_factor'`` (the round metric is then that factor).

  The aggregation key is ``fold_in(key, 1)``: `core.federated_algorithm`
  gives this hook ``core.stage_key(k, round, 0)`` and the aggregator
  ``core.stage_key(k, round, 1)``, which is exactly that.

  Args:
    attack: what the Byzantine clients do.
    aggregator: the rule in use (``None``: optimised attacks simulate
      their target from its ``init`` state).

  Returns:
    A `core.TransformOutputsFn`.
  """

  def transform(outputs: core.ClientOutput, state: core.ServerState,
                cohort: core.Cohort, key: core.PRNGKey) -> core.ClientOutput:
    byzantine = cohort_flags(cohort)
    if attack.choose_factor is None:
      update = attack.corrupt(outputs.update, byzantine, outputs.weight, key)
      return outputs._replace(update=update)
    context = _attacks.RoundContext(
        aggregator=aggregator, server_state=state,
        key=jax.random.fold_in(key, 1), client_info=cohort.client_info())
    factor = attack.choose_factor(outputs.update, byzantine, outputs.weight,
                                  key, context)
    update = attack.corrupt_with(outputs.update, byzantine, outputs.weight,
                                 factor)
    # Reported per client so that the round's weighted mean is the factor.
    metrics = dict(outputs.metrics)
    metrics['attack_factor'] = jnp.broadcast_to(factor, byzantine.shape)
    return outputs._replace(update=update, metrics=metrics)

  return transform


def robustness_metrics(outputs: core.ClientOutput, aggregate: core.Updates,
                       state: core.ServerState) -> core.Metrics:
  """``extra_metrics``: rejected (non-finite) and Byzantine client counts.

  ``'byzantine_clients'`` counts the clients whose ``'byzantine'`` metric
  (their flag, reported by `_clients.byzantine_client`) is set.
  """
  del aggregate, state
  rejected = aggregators.rejected_clients(outputs.update, outputs.weight)
  metrics = {'rejected_updates': jnp.sum(rejected).astype(jnp.int32)}
  if _clients.BYZANTINE in outputs.metrics:
    metrics['byzantine_clients'] = jnp.sum(
        outputs.metrics[_clients.BYZANTINE] > 0).astype(jnp.int32)
  return metrics


def _then(first: core.TransformOutputsFn | None,
          second: core.TransformOutputsFn | None
          ) -> core.TransformOutputsFn | None:
  """``second`` after ``first`` (same state, cohort and key)."""
  if first is None or second is None:
    return first or second

  def both(outputs, state, cohort, key):
    return second(first(outputs, state, cohort, key), state, cohort, key)

  return both


def _with_robustness(extra_metrics: core.ExtraMetricsFn | None
                     ) -> core.ExtraMetricsFn:
  if extra_metrics is None:
    return robustness_metrics

  def merged(outputs, aggregate, state):
    return {**robustness_metrics(outputs, aggregate, state),
            **extra_metrics(outputs, aggregate, state)}

  return merged


def robust_algorithm(loss_fn: clients.LossFn,
                     aggregator: core.Aggregator,
                     server_optimizer: optax.GradientTransformation
                     | core.ServerUpdate, *,
                     mode: str = 'fedavg',
                     client_optimizer: optax.GradientTransformation
                     | None = None,
                     prox_mu: float = 0.,
                     attack: _attacks.Attack | None = None,
                     num_classes: int | None = None,
                     momentum: jax.typing.ArrayLike | None = None,
                     momentum_init: str = 'zeros',
                     weighting: str = 'uniform',
                     transform_outputs: core.TransformOutputsFn | None = None,
                     extra_metrics: core.ExtraMetricsFn | None = None,
                     execution: core.Execution | str | None = None
                     ) -> core.FederatedAlgorithm:
  r"""Robust FedAvg or DSGD with attacks and worker momentum.

  One `core.federated_algorithm`: the honest client (wrapped by worker
  momentum and `_clients.byzantine_client`), `aggregator`, the server
  update, and every hook of the round forwarded.

  Args:
    loss_fn: masked mean loss of one batch.
    aggregator: e.g. ``aggregators.process(aggregators.nnm(b),
      aggregators.trimmed_mean(b))``.
    server_optimizer: ``optax.sgd(gamma)`` gives the paper's
      :math:`\theta \leftarrow \theta - \gamma R`; ``optax.sgd(1.)`` with
      ``mode='fedavg'`` gives FedAvg; or any `core.ServerUpdate`.
    mode: ``'fedavg'`` (local steps of `client_optimizer`, update = global
      minus local params) or ``'dsgd'`` (one gradient per round,
      `_clients.sgd_gradient`).
    client_optimizer: the local optimizer of ``'fedavg'`` (``'dsgd'`` takes
      none).
    prox_mu: FedProx's mu of the ``'fedavg'`` clients (0: FedAvg).
    attack: what Byzantine clients do; ``None`` = honest everywhere (no
      attack hook runs). Optimised attacks targeting `aggregator` simulate
      it from its current state (`attack_outputs`).
    num_classes: needed for label flipping.
    momentum: worker momentum :math:`\beta` or ``None`` for none (a stateless
      client, bit-identical to `algorithms.fed_avg` for ``'fedavg'``). May
      be traced.
    momentum_init: see `_clients.worker_momentum`.
    weighting: the clients' aggregation weights (`core.weigh_clients`):
      ``'uniform'`` (default: every client that trained counts once, as in
      the theory; robust rules only use weights as presence),
      ``'num_examples'`` or ``'examples_processed'``.
    transform_outputs: an extra ``fn(outputs, state, cohort, key)`` hook,
      run before the attack (so the attack sees, and rewrites, the updates
      the aggregator will combine).
    extra_metrics: extra round metrics, merged with `robustness_metrics`.
    execution: the run's `core.Execution` policy (client mapping, chunk
      size; the local steps' unroll is ``execution.unroll``).

  Returns:
    A `core.FederatedAlgorithm`; its client state is the momentum (float32,
    shaped like params) or ``()``. Feed it cohorts marked by `mark_cohort`
    (``Cohort.info['byzantine']``).
  """
  if mode not in MODES:
    raise ValueError(f'Unknown mode {mode!r}; valid choices: '
                     f'{", ".join(MODES)}.')
  core.check_weighting(weighting)
  execution = core.as_execution(execution)
  if mode == 'fedavg':
    if client_optimizer is None:
      raise ValueError("mode='fedavg' needs a client_optimizer.")
    honest = clients.local_sgd(loss_fn, client_optimizer, prox_mu=prox_mu,
                               unroll=execution.unroll)
  else:
    if client_optimizer is not None or prox_mu:
      raise ValueError("mode='dsgd' takes one gradient per round; "
                       'client_optimizer must be None and prox_mu 0.')
    honest = _clients.sgd_gradient(loss_fn)
  init_client_state = lambda params: ()
  if momentum is not None:
    honest = _clients.worker_momentum(honest, momentum, init=momentum_init)
    init_client_state = lambda params: jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  flips = attack is not None and attack.flips_labels
  client_update = _clients.byzantine_client(honest, flip_labels=flips,
                                            num_classes=num_classes)
  attack_hook = None if attack is None else attack_outputs(attack,
                                                           aggregator)
  return core.federated_algorithm(
      client_update, aggregator, server_optimizer,
      weighting=weighting,
      init_client_state=init_client_state,
      transform_outputs=_then(transform_outputs, attack_hook),
      extra_metrics=_with_robustness(extra_metrics),
      execution=execution)
