r"""Federated LoRA with heterogeneous client ranks: FlexLoRA and HetLoRA.

Client k's rank :math:`r_k` comes from ``Cohort.info['rank']`` (clipped to
[1, max_rank]). Factors travel zero-padded to ``max_rank`` so every client
has the same shapes under `core.map_clients`; a client of rank r_k trains
only its first r_k components (`lora.truncate`; the others get zero
gradient and are zeroed again before upload). Bytes are counted at the
client's real rank: :math:`r_k (d_{in} + d_{out})` per module (+ dense).

* FlexLoRA: Bai et al., "Federated Fine-tuning of Large Language Models
  under Heterogeneous Tasks and Client Resources", NeurIPS 2024,
  https://arxiv.org/abs/2402.11505. The server averages the full
  :math:`\Delta W_k = s_k B_k A_k` (weights from ``weighting``), keeps the
  global :math:`\Delta W` (the evaluated model is :math:`W_0 + \Delta W`),
  and sends client k the rank-r_k truncated SVD :math:`U_{r_k}
  \Sigma_{r_k} V_{r_k}^\top`: the message holds the top-max_rank SVD as
  :math:`B = U\Sigma`, :math:`A = V^\top` [I: where Sigma goes; A keeps
  orthonormal rows so B always gets a gradient], and client k takes its
  first r_k components, B divided by :math:`s_k = \alpha / r_k`.
* HetLoRA: Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of
  On-Device Foundation Models", EMNLP 2024,
  https://arxiv.org/abs/2401.06432. One global max_rank LoRA; client k
  trains its rank-r_k truncation, self-prunes, uploads zero-padded
  factors; the server averages the padded factors with norm-based weights.
  Reconstructed details, all configurable [I]:
  - scale: ``scale='max_rank'`` (default: :math:`s = \alpha / r_{max}`
    for everyone, so a truncation is literally a prefix of the global
    delta) or ``'per_rank'`` (:math:`\alpha / r_k`);
  - weights: ``norm_weighting='norm'`` (:math:`p_k \propto \|s B_k
    A_k\|_F` per module) or ``'norm_times_weight'`` (times the round's
    weighting, e.g. n_k);
  - self-pruning (``prune_threshold`` > 0; default 0, off): after local training a client
    with rank r > ``min_rank`` drops its last component when
    :math:`\|b_r\| \|a_r\| < \text{prune\_threshold} \cdot \max_j \|b_j\|
    \|a_j\|` (summed over modules), and keeps the smaller rank in its
    client store for later rounds.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext.lora import _adapters
from fedjax_ext.lora import _methods
from fedjax_ext.lora._adapters import LoRAParams

SCALES = ('max_rank', 'per_rank')
NORM_WEIGHTINGS = ('norm', 'norm_times_weight')


def client_rank(info, max_rank: int) -> jax.Array:
  """This client's rank from ``info['rank']``, clipped to [1, max_rank]."""
  if 'rank' not in info:
    raise ValueError("Heterogeneous-rank LoRA needs Cohort.info['rank'] "
                     f'(one rank per client); got {sorted(info)}.')
  return jnp.clip(jnp.asarray(info['rank'], jnp.int32), 1, max_rank)


def rank_bytes(adapters, ranks: jax.Array, dense=None) -> jax.Array:
  """Mean over clients of :math:`r_k (d_{in}+d_{out})` bytes (+ dense).

  Args:
    adapters: one client's (or the server's) padded adapters.
    ranks: [C] client ranks.
    dense: dense leaves also sent (one copy).
  """
  per_rank = sum((a['A'].shape[1] + a['B'].shape[0])
                 * jnp.dtype(a['A'].dtype).itemsize
                 for a in adapters.values())
  return (jnp.mean(ranks.astype(jnp.float32)) * per_rank
          + _adapters.count_bytes(dense or {}))


def _check_max_rank(config, max_rank):
  if not (isinstance(max_rank, int) and max_rank >= 1):
    raise ValueError(f'max_rank must be an integer >= 1, got {max_rank!r}.')
  if config.rank != max_rank:
    raise ValueError(f'config.rank ({config.rank}) must equal max_rank '
                     f'({max_rank}): factors are padded to it.')


def flex_lora(loss_fn: clients.LossFn, client_optimizer,
              config: _methods.LoRAConfig, *, max_rank: int,
              server_optimizer=optax.sgd(1.0),
              weighting: str = 'num_examples',
              transform_outputs: core.TransformOutputsFn | None = None,
              extra_metrics: core.ExtraMetricsFn | None = None,
              execution: core.Execution | str | None = None
              ) -> core.FederatedAlgorithm:
  """FlexLoRA (module docstring); ``config.rank`` must equal max_rank.

  ``algorithm_state['delta']`` holds the global :math:`\\Delta W` per
  module ([out, in]), the evaluated model is :math:`W_0 + \\Delta W`;
  ``server_optimizer`` applies to ``dense`` only. Clients upload
  ``{'lora': padded factors, 'rank': r_k}``. Other arguments as
  `lora.fed_it`.
  """
  _check_max_rank(config, max_rank)
  execution = core.as_execution(execution)
  server = core.as_server_update(server_optimizer)

  def client_update(message, client_state, batches, key, info):
    rank = client_rank(info, max_rank)
    scale = _adapters.scaling(config.alpha, rank)
    lora = message['lora']
    start = {p: {'A': a['A'], 'B': a['B'] / scale}
             for p, a in _adapters.truncate(lora.adapters, rank).items()}
    _, local, stats = _methods.train_lora(
        loss_fn, client_optimizer, message['base'],
        LoRAParams(start, lora.dense), ('A', 'B'), batches, key,
        alpha=config.alpha, rank=rank,
        transform=lambda a: _adapters.truncate(a, rank),
        unroll=execution.unroll)
    update = LoRAParams(_adapters.truncate(local.adapters, rank),
                        jax.tree.map(jnp.subtract, lora.dense, local.dense))
    return core.ClientOutput(update={'lora': update, 'rank': rank},
                             weight=stats.num_examples,
                             client_state=client_state,
                             metrics=clients.stats_metrics(stats))

  def aggregate(updates, state, params=None, *, weights, **extra):
    del params, extra
    scales = config.alpha / updates['rank'].astype(jnp.float32)
    lora = updates['lora']
    deltas = {p: core.tree_weighted_mean(
        scales[:, None, None] * (a['B'] @ a['A']), weights)
              for p, a in lora.adapters.items()}
    return LoRAParams(deltas, core.tree_weighted_mean(lora.dense,
                                                      weights)), state

  def update_fn(state, agg, outputs, key):
    zeros = jax.tree.map(jnp.zeros_like, state.params.adapters)
    state = server.update(state, LoRAParams(zeros, agg.dense), outputs, key)
    factors = {}
    for p, delta in agg.adapters.items():
      u, s, vt = jnp.linalg.svd(delta, full_matrices=False)
      factors[p] = {'A': vt[:max_rank], 'B': u[:, :max_rank] * s[:max_rank]}
    algorithm_state = dict(state.algorithm_state, delta=agg.adapters)
    return state._replace(params=state.params._replace(adapters=factors),
                          algorithm_state=algorithm_state)

  def model_params(state, client_store):
    del client_store
    return _adapters.merge(state.algorithm_state['base'],
                           LoRAParams({}, state.params.dense), alpha=1.,
                           deltas=state.algorithm_state['delta'])

  def init_algorithm_state(params):
    lora = _methods.init_lora_params(params, config)
    return {'base': params, 'delta': {
        p: jnp.zeros((a['B'].shape[0], a['A'].shape[1]), a['A'].dtype)
        for p, a in lora.adapters.items()}}

  return _hetero_algorithm(
      client_update, aggregate, update_fn, config, server,
      weighting=weighting, transform_outputs=transform_outputs,
      extra_metrics=extra_metrics, execution=execution,
      init_algorithm_state=init_algorithm_state, model_params=model_params)


def het_lora(loss_fn: clients.LossFn, client_optimizer,
             config: _methods.LoRAConfig, *, max_rank: int,
             scale: str = 'max_rank', norm_weighting: str = 'norm',
             prune_threshold: float = 0.0, min_rank: int = 1,
             server_optimizer=optax.sgd(1.0),
             weighting: str = 'num_examples',
             transform_outputs: core.TransformOutputsFn | None = None,
             extra_metrics: core.ExtraMetricsFn | None = None,
             execution: core.Execution | str | None = None
             ) -> core.FederatedAlgorithm:
  """HetLoRA (module docstring); ``config.rank`` must equal max_rank.

  The client store holds each client's current rank (0 = not yet set:
  use ``info['rank']``); self-pruning only lowers it. Clients upload
  ``{'lora': padded factors, 'rank': the rank after pruning}``. Other
  arguments as `lora.fed_it`.
  """
  _check_max_rank(config, max_rank)
  if scale not in SCALES:
    raise ValueError(f'Unknown scale {scale!r}; valid: {", ".join(SCALES)}.')
  if norm_weighting not in NORM_WEIGHTINGS:
    raise ValueError(f'Unknown norm_weighting {norm_weighting!r}; valid: '
                     f'{", ".join(NORM_WEIGHTINGS)}.')
  execution = core.as_execution(execution)
  server = core.as_server_update(server_optimizer)

  def scale_of(rank):
    if scale == 'max_rank':
      return config.alpha / max_rank * jnp.ones_like(rank, jnp.float32)
    return config.alpha / rank.astype(jnp.float32)

  def client_update(message, stored, batches, key, info):
    rank = client_rank(info, max_rank)
    stored = stored['rank']  # 0 until the client has trained once.
    rank = jnp.where(stored > 0, jnp.minimum(stored, rank), rank)
    lora = message['lora']
    # merge's scale is alpha / rank_arg: pass alpha / s as the "rank".
    _, local, stats = _methods.train_lora(
        loss_fn, client_optimizer, message['base'],
        LoRAParams(_adapters.truncate(lora.adapters, rank), lora.dense),
        ('A', 'B'), batches, key, alpha=config.alpha,
        rank=config.alpha / scale_of(rank),
        transform=lambda a: _adapters.truncate(a, rank),
        unroll=execution.unroll)
    adapters = _adapters.truncate(local.adapters, rank)
    if prune_threshold > 0:
      norms = sum(jnp.linalg.norm(a['B'], axis=0)
                  * jnp.linalg.norm(a['A'], axis=1)
                  for a in adapters.values())  # [max_rank].
      last = norms[rank - 1]
      prune = (rank > min_rank) & (last < prune_threshold * jnp.max(norms))
      rank = jnp.where(prune, rank - 1, rank)
      adapters = _adapters.truncate(adapters, rank)
    update = LoRAParams(adapters,
                        jax.tree.map(jnp.subtract, lora.dense, local.dense))
    return core.ClientOutput(update={'lora': update, 'rank': rank},
                             weight=stats.num_examples,
                             client_state={'rank': rank.astype(jnp.int32)},
                             metrics=clients.stats_metrics(stats))

  def aggregate(updates, state, params=None, *, weights, **extra):
    del params, extra
    scales = scale_of(updates['rank'])
    lora = updates['lora']
    factors = {}
    for p, a in lora.adapters.items():
      norms = scales * jnp.linalg.norm(a['B'] @ a['A'], axis=(1, 2))
      w = norms * (weights if norm_weighting == 'norm_times_weight'
                   else (weights > 0).astype(norms.dtype))
      factors[p] = core.tree_weighted_mean(a, w)
    return LoRAParams(factors, core.tree_weighted_mean(lora.dense,
                                                       weights)), state

  def update_fn(state, agg, outputs, key):
    zeros = jax.tree.map(jnp.zeros_like, state.params.adapters)
    state = server.update(state, LoRAParams(zeros, agg.dense), outputs, key)
    # A module no client moved (all norms 0, e.g. round 1 with B = 0 and
    # no training) aggregates to zeros: keep the old factors instead.
    kept = {p: jax.tree.map(
        lambda new, old: jnp.where(jnp.any(new != 0), new, old), a,
        state.params.adapters[p]) for p, a in agg.adapters.items()}
    return state._replace(params=state.params._replace(adapters=kept))

  def model_params(state, client_store):
    del client_store
    return _adapters.merge(
        state.algorithm_state['base'], state.params, alpha=config.alpha,
        rank=config.alpha / scale_of(jnp.asarray(max_rank)))

  return _hetero_algorithm(
      client_update, aggregate, update_fn, config, server,
      weighting=weighting, transform_outputs=transform_outputs,
      extra_metrics=extra_metrics, execution=execution,
      init_algorithm_state=lambda params: {'base': params},
      model_params=model_params,
      init_client_state=lambda params: {'rank': jnp.zeros((), jnp.int32)})


def _hetero_algorithm(client_update, aggregate, update_fn, config, server, *,
                      weighting, transform_outputs, extra_metrics, execution,
                      init_algorithm_state, model_params,
                      init_client_state=None):
  """The shared composition; bytes counted at each client's rank."""

  def metrics_fn(outputs, agg, state):
    ranks = outputs.update['rank']
    adapters = state.params.adapters
    dense = jax.tree.map(lambda v: v[0], outputs.update['lora'].dense)
    rank_itemsize = jnp.dtype(ranks.dtype).itemsize
    metrics = {
        'upload_bytes_per_client': rank_bytes(adapters, ranks, dense)
                                   + rank_itemsize,
        'downlink_bytes_per_client': rank_bytes(adapters, ranks,
                                                state.params.dense),
        'mean_rank': jnp.mean(ranks.astype(jnp.float32)),
    }
    if extra_metrics is not None:
      metrics.update(extra_metrics(outputs, agg, state))
    return metrics

  algorithm = core.federated_algorithm(
      client_update, core.Aggregator(lambda p: (), aggregate),
      core.ServerUpdate(server.init, update_fn), weighting=weighting,
      init_client_state=init_client_state or (lambda p: ()),
      init_algorithm_state=init_algorithm_state,
      server_message=_methods.round_message,
      transform_outputs=transform_outputs, extra_metrics=metrics_fn,
      execution=execution)

  def init(params):
    state = algorithm.init(params)
    lora = _methods.init_lora_params(params, config)
    return state._replace(params=lora, opt_state=server.init(lora))

  return algorithm._replace(init=init, model_params=model_params)
