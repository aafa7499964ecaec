r"""Federated LoRA with one rank for all: FedIT, FFA-LoRA, FedSA-LoRA.

Each is a short composition on the round stages (`core.federated_algorithm`)
and differs only in which factors a client trains and which it uploads:

========== ============ ============== =====================================
method     trains       uploads        server
========== ============ ============== =====================================
FedIT      A, B         A, B           mean of A, mean of B
FFA-LoRA   B (A frozen) B              mean of B (exact mean of delta-W)
FedSA-LoRA A, B         A              mean of A; B stays in the client store
========== ============ ============== =====================================

* FedIT: Zhang et al., "Towards Building the Federated GPT: Federated
  Instruction Tuning", ICASSP 2024, https://arxiv.org/abs/2305.05644.
  Averaging the factors separately gives :math:`\bar B \bar A \ne
  \overline{BA}` (the product-of-means error FLoRG and FFA-LoRA remove).
* FFA-LoRA: Sun et al., "Improving LoRA in Privacy-preserving Federated
  Learning", ICLR 2024, https://arxiv.org/abs/2403.12313. With A fixed at
  its shared random init, :math:`\Delta W = s B A_0` is linear in B, so the
  mean of B gives exactly the mean of delta-W.
* FedSA-LoRA: Guo et al., "Selective Aggregation for Low-Rank Adaptation
  in Federated Learning", ICLR 2025, https://arxiv.org/abs/2410.01463.

State layout (all methods of this package): ``ServerState.params`` is the
trainable `LoRAParams` (adapters + ``dense`` leaves such as a head), and
``algorithm_state['base']`` the frozen base, set once by ``init`` from the
full model params. The server message is ``{'base': ..., 'lora': ...}``;
`core.run_clients` maps it with ``in_axes=None``, so under vmap the base is
one un-batched operand shared by every client, not copied per client
(``lora_test`` checks the jaxpr). Only the adapted kernels' effective
weights :math:`W_0 + \Delta W_k` exist per client while a client's loss
runs (C x the adapted kernels under vmap; 1 x under ``'sequential'``).
The base is broadcast once when a client joins, so
``downlink_bytes_per_client`` counts the per-round message without it.

``dense`` leaves are trained in full and averaged as in FedAvg by every
method. `centralized_lora` and `local_only_lora` are the reference rows.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext.core import Params
from fedjax_ext.lora import _adapters
from fedjax_ext.lora._adapters import LoRAParams


class LoRAConfig(NamedTuple):
  """Where the adapters go and how they start (`_adapters.init_adapters`)."""
  targets: _adapters.Targets  # Kernels to adapt (regex over paths).
  rank: int  # r.
  alpha: float  # Scale alpha / r.
  key: jax.Array  # Initialisation key (A's random init).
  init: str = 'kaiming_uniform'  # A's distribution; B = 0.
  in_axes: int = 1  # Leading kernel axes that are inputs.
  dense_targets: _adapters.Targets | None = None  # Trained in full (head).


def init_lora_params(base_params: Params, config: LoRAConfig) -> LoRAParams:
  """The trainable part at round 0: fresh adapters + the base's dense leaves."""
  adapters = _adapters.init_adapters(
      base_params, targets=config.targets, rank=config.rank, key=config.key,
      init=config.init, in_axes=config.in_axes)
  dense = {}
  if config.dense_targets is not None:
    flat = _adapters.flat_params(base_params)
    # Copies: the round donates its state, and the base lives in it too.
    dense = {p: jnp.array(flat[p]) for p in _adapters.select_paths(
        base_params, config.dense_targets)}
    clash = set(dense) & set(adapters)
    if clash:
      raise ValueError(f'{sorted(clash)} are both adapted and dense.')
  return LoRAParams(adapters, dense)


def train_lora(loss_fn: clients.LossFn, optimizer, base, trainable:
               LoRAParams, names, batches, key, *, alpha, rank=None,
               transform=None, unroll='auto'):
  """Local training of the factors in `names` (and ``dense``) only.

  Returns:
    (the trained part before, after, `clients.LocalStats`), parts as
    `LoRAParams` holding only the factors in `names`.
  """
  train, frozen = _adapters.split_factors(trainable.adapters, names)
  start = LoRAParams(train, trainable.dense)
  objective = _adapters.lora_loss(loss_fn, base, alpha=alpha, rank=rank,
                                  frozen=frozen, transform=transform)
  local, stats = clients.train_locally(start, batches, key,
                                       loss_fn=objective,
                                       optimizer=optimizer, unroll=unroll)
  return start, local, stats


def round_message(state: core.ServerState) -> dict:
  """What the server sends each round: the base (once) and the LoRA part."""
  return {'base': state.algorithm_state['base'], 'lora': state.params}


def per_round_downlink(message: dict) -> dict:
  """The message less what is broadcast once, not every round.

  ``'base'`` (the frozen model), ``'bases'`` (FLoRG's L, R) and
  ``'frozen'`` (FFA-LoRA's A, fixed at the shared init) travel once.
  """
  return {k: v for k, v in message.items()
          if k not in ('base', 'bases', 'frozen')}


def with_communication(extra_metrics, message_fn=round_message,
                       downlink_fn=None):
  """`extra_metrics` plus bytes up (update + aux) and down per client.

  Uses `core.communication_metrics` on the message less the base;
  `downlink_fn(state, outputs)` overrides the downlink count.
  """

  def fn(outputs, aggregate, state):
    metrics = core.communication_metrics(
        outputs, per_round_downlink(message_fn(state)))
    if downlink_fn is not None:
      metrics['downlink_bytes_per_client'] = downlink_fn(state, outputs)
    if extra_metrics is not None:
      metrics.update(extra_metrics(outputs, aggregate, state))
    return metrics

  return fn


def lora_model_params(alpha: float):
  """``model_params``: the merged model W0 + s B A (+ dense)."""

  def fn(state, client_store):
    del client_store
    return _adapters.merge(state.algorithm_state['base'], state.params,
                           alpha=alpha)

  return fn


def fill_server_update(server_optimizer) -> core.ServerUpdate:
  """An optax server step whose aggregate may lack some factors.

  Missing factors (FFA-LoRA's A, FedSA-LoRA's B) get a zero
  pseudo-gradient, so the server keeps them as they are.
  """
  server = core.as_server_update(server_optimizer)

  def update_fn(state, aggregate, outputs, key):
    zeros = jax.tree.map(jnp.zeros_like, state.params.adapters)
    full = LoRAParams(_adapters.join_factors(zeros, aggregate.adapters),
                      aggregate.dense)
    return server.update(state, full, outputs, key)

  return core.ServerUpdate(server.init, update_fn)


def _subtract(a, b):
  return jax.tree.map(jnp.subtract, a, b)


def _algorithm(client_update, config, server_update, *, weighting,
               transform_outputs, extra_metrics, execution,
               init_client_state=None, model_params=None, message_fn=None,
               aggregator=None, downlink_fn=None):
  message_fn = message_fn or round_message

  def init_algorithm_state(params):
    return {'base': params}

  algorithm = core.federated_algorithm(
      client_update, aggregator or aggregators.weighted_mean(),
      server_update, weighting=weighting,
      init_client_state=init_client_state or (lambda params: ()),
      init_algorithm_state=init_algorithm_state,
      server_message=message_fn,
      transform_outputs=transform_outputs,
      extra_metrics=with_communication(extra_metrics, message_fn,
                                       downlink_fn),
      execution=execution)
  init = algorithm.init

  def init_fn(params):
    state = init(params)
    lora = init_lora_params(params, config)
    return state._replace(params=lora, opt_state=server_update.init(lora))

  return algorithm._replace(
      init=init_fn,
      model_params=model_params or lora_model_params(config.alpha))


def fed_it(loss_fn: clients.LossFn, client_optimizer, config: LoRAConfig,
           *, server_optimizer=optax.sgd(1.0),
           weighting: str = 'num_examples',
           transform_outputs: core.TransformOutputsFn | None = None,
           extra_metrics: core.ExtraMetricsFn | None = None,
           execution: core.Execution | str | None = None
           ) -> core.FederatedAlgorithm:
  """FedIT: FedAvg of A and of B separately (and of ``dense``).

  Args:
    loss_fn: masked mean loss over the FULL model params.
    client_optimizer: optax optimizer of the local steps (fresh each round).
    config: `LoRAConfig`.
    server_optimizer: applied to the aggregated pseudo-gradient of the
      trainable part (``optax.sgd(1.0)``: plain averaging).
    weighting, transform_outputs, extra_metrics, execution: as `fed_avg`.

  Returns:
    A `core.FederatedAlgorithm`; ``init`` takes the full pretrained params.
  """
  execution = core.as_execution(execution)
  server = core.as_server_update(server_optimizer)

  def client_update(message, client_state, batches, key, info):
    del info
    start, local, stats = train_lora(
        loss_fn, client_optimizer, message['base'], message['lora'],
        ('A', 'B'), batches, key, alpha=config.alpha,
        unroll=execution.unroll)
    return core.ClientOutput(update=_subtract(start, local),
                             weight=stats.num_examples,
                             client_state=client_state,
                             metrics=clients.stats_metrics(stats))

  return _algorithm(client_update, config, server, weighting=weighting,
                    transform_outputs=transform_outputs,
                    extra_metrics=extra_metrics, execution=execution)


def ffa_lora(loss_fn: clients.LossFn, client_optimizer, config: LoRAConfig,
             *, server_optimizer=optax.sgd(1.0),
             weighting: str = 'num_examples',
             transform_outputs: core.TransformOutputsFn | None = None,
             extra_metrics: core.ExtraMetricsFn | None = None,
             execution: core.Execution | str | None = None
             ) -> core.FederatedAlgorithm:
  """FFA-LoRA: A frozen at its shared init, only B trained and averaged.

  With A never changing, the weighted mean of the B's gives exactly the
  weighted mean of the clients' delta-W. Clients upload B (and ``dense``)
  only, and A is broadcast once with the base (message ``'frozen'``), so
  it is not in the per-round downlink. Arguments as `fed_it`. Note B = 0 and A random at init, so B gets
  a gradient from step one.
  """
  execution = core.as_execution(execution)

  def message_fn(state):
    frozen, trained = _adapters.split_factors(state.params.adapters, ('A',))
    return {'base': state.algorithm_state['base'], 'frozen': frozen,
            'lora': LoRAParams(trained, state.params.dense)}

  def client_update(message, client_state, batches, key, info):
    del info
    lora = message['lora']
    lora = lora._replace(adapters=_adapters.join_factors(
        lora.adapters, message['frozen']))
    start, local, stats = train_lora(
        loss_fn, client_optimizer, message['base'], lora,
        ('B',), batches, key, alpha=config.alpha, unroll=execution.unroll)
    return core.ClientOutput(update=_subtract(start, local),
                             weight=stats.num_examples,
                             client_state=client_state,
                             metrics=clients.stats_metrics(stats))

  return _algorithm(client_update, config,
                    fill_server_update(server_optimizer),
                    weighting=weighting, transform_outputs=transform_outputs,
                    extra_metrics=extra_metrics, execution=execution,
                    message_fn=message_fn)


def fed_sa_lora(loss_fn: clients.LossFn, client_optimizer,
                config: LoRAConfig, *, server_optimizer=optax.sgd(1.0),
                weighting: str = 'num_examples',
                transform_outputs: core.TransformOutputsFn | None = None,
                extra_metrics: core.ExtraMetricsFn | None = None,
                execution: core.Execution | str | None = None
                ) -> core.FederatedAlgorithm:
  """FedSA-LoRA: A shared and averaged, B personal in the client store.

  Each client's B lives in its row of the client store (init 0, the
  standard LoRA init); clients train A and their B, upload A (and
  ``dense``), and keep B. The server's ``params.adapters`` holds A and a
  B that stays at its init (never sent). ``model_params`` merges the mean
  of the stored B's over all N clients, a global proxy (clients never
  sampled count with B = 0); `fed_sa_personal_params` gives client k's own
  model. Arguments as `fed_it`.
  """
  execution = core.as_execution(execution)

  def message_fn(state):
    shared, _ = _adapters.split_factors(state.params.adapters, ('A',))
    return {'base': state.algorithm_state['base'],
            'lora': LoRAParams(shared, state.params.dense)}

  def init_client_state(params):
    lora = init_lora_params(params, config)
    return _adapters.split_factors(lora.adapters, ('B',))[0]

  def client_update(message, own_b, batches, key, info):
    del info
    lora = message['lora']
    lora = lora._replace(adapters=_adapters.join_factors(lora.adapters,
                                                         own_b))
    start, local, stats = train_lora(
        loss_fn, client_optimizer, message['base'], lora, ('A', 'B'),
        batches, key, alpha=config.alpha, unroll=execution.unroll)
    local_a, local_b = _adapters.split_factors(local.adapters, ('A',))
    start_a, _ = _adapters.split_factors(start.adapters, ('A',))
    update = LoRAParams(_subtract(start_a, local_a),
                        _subtract(start.dense, local.dense))
    return core.ClientOutput(update=update, weight=stats.num_examples,
                             client_state=local_b,
                             metrics=clients.stats_metrics(stats))

  def model_params(state, client_store):
    mean_b = jax.tree.map(lambda b: jnp.mean(b, axis=0), client_store)
    adapters = _adapters.join_factors(state.params.adapters, mean_b)
    return _adapters.merge(state.algorithm_state['base'],
                           LoRAParams(adapters, state.params.dense),
                           alpha=config.alpha)

  return _algorithm(client_update, config,
                    fill_server_update(server_optimizer),
                    weighting=weighting, transform_outputs=transform_outputs,
                    extra_metrics=extra_metrics, execution=execution,
                    init_client_state=init_client_state,
                    model_params=model_params, message_fn=message_fn)


def fed_sa_personal_params(state: core.ServerState, client_store,
                           client_id: int, alpha: float) -> Params:
  """FedSA-LoRA's model of client `client_id`: shared A, its own B."""
  own_b = jax.tree.map(lambda b: b[client_id], client_store)
  adapters = _adapters.join_factors(state.params.adapters, own_b)
  return _adapters.merge(state.algorithm_state['base'],
                         LoRAParams(adapters, state.params.dense),
                         alpha=alpha)


def centralized_cohort(cohort: core.Cohort) -> core.Cohort:
  """Every client's batches as ONE client's [1, C*S, B] (the central row)."""

  def flat(v):
    return jnp.reshape(v, (1, v.shape[0] * v.shape[1]) + v.shape[2:])

  return core.Cohort(
      client_ids=jnp.zeros((1,), jnp.int32),
      batches={k: flat(v) for k, v in cohort.batches.items()},
      num_examples=jnp.sum(cohort.num_examples, keepdims=True),
      info={})


def centralized_lora(loss_fn: clients.LossFn, optimizer, config: LoRAConfig,
                     *, execution: core.Execution | str | None = None
                     ) -> core.FederatedAlgorithm:
  """Reference row: one client holding all data (feed `centralized_cohort`).

  FedIT with a single client is centralized LoRA training: each "round"
  runs the optimizer over all the data's batches and the server takes the
  result as is. The optimizer restarts each round (as a client's does);
  use one long round for a single optimizer run.
  """
  return fed_it(loss_fn, optimizer, config, execution=execution,
                weighting='uniform')


def local_only_lora(loss_fn: clients.LossFn, optimizer, config: LoRAConfig,
                    *, extra_metrics: core.ExtraMetricsFn | None = None,
                    execution: core.Execution | str | None = None
                    ) -> core.FederatedAlgorithm:
  """Reference row: each client trains its own LoRA, nothing is aggregated.

  The client store holds each client's `LoRAParams` (all start from the
  same init); nothing is uploaded (0 bytes up) and the server state never
  changes. ``model_params`` is the merged model of the mean adapters (a
  summary only); evaluate `local_only_personal_params` per client.
  """
  execution = core.as_execution(execution)

  def client_update(message, own, batches, key, info):
    del info
    _, local, stats = train_lora(
        loss_fn, optimizer, message['base'], own, ('A', 'B'), batches, key,
        alpha=config.alpha, unroll=execution.unroll)
    return core.ClientOutput(update=(), weight=stats.num_examples,
                             client_state=local,
                             metrics=clients.stats_metrics(stats))

  def identity(state, aggregate, outputs, key):
    del aggregate, outputs, key
    return state

  def model_params(state, client_store):
    mean = jax.tree.map(lambda v: jnp.mean(v, axis=0), client_store)
    return _adapters.merge(state.algorithm_state['base'], mean,
                           alpha=config.alpha)

  def message_fn(state):
    return {'base': state.algorithm_state['base']}

  return _algorithm(
      client_update, config, core.ServerUpdate(lambda p: (), identity),
      weighting='examples_processed', transform_outputs=None,
      extra_metrics=extra_metrics, execution=execution,
      init_client_state=lambda params: init_lora_params(params, config),
      model_params=model_params, message_fn=message_fn,
      aggregator=core.Aggregator(lambda p: (),
                                 lambda u, s, p=None, **kw: ((), s)))


def local_only_personal_params(state, client_store, client_id: int,
                               alpha: float) -> Params:
  """Client `client_id`'s own merged model under `local_only_lora`."""
  own = jax.tree.map(lambda v: v[client_id], client_store)
  return _adapters.merge(state.algorithm_state['base'], own, alpha=alpha)
