r"""LoRA gossip: every node holds its own factors; the base is shared.

A node's row of the store is a `lora.LoRAParams` (adapters ``{path: {'A':
[r, in], 'B': [out, r]}}`` and the ``dense`` leaves trained in full, a
head); every node starts from the same `lora.init_lora_params` (A random,
B = 0). The frozen base lives once in `DecentralizedState.shared` and
reaches the nodes through the broadcast message (`core.map_clients`'s
``in_axes=None``), never copied per node. Local training is
`lora.train_lora` (`clients.train_locally` on `lora.lora_loss`), optimizer
fresh each round; ``dense`` leaves are trained and gossiped by every method.

========== ============================== ================================
method     trains (round t)               gossips (round t)
========== ============================== ================================
dec_lora   A and B                        A and B
rolora     B if t even, else A            only the trained factor
ffa_gossip B (A frozen at the shared init) B (A never moves nor travels)
tad_lora   B if floor(t / T) even, else A A and B, every round
========== ============================== ================================

* Dec-LoRA: gossip of both factors (arXiv 2501.15361); its
  :math:`\overline{BA} \ne \bar B \bar A` cross term grows on sparse graphs.
* RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via
  Alternating Optimization of LoRA", arXiv 2502.01755) in the
  decentralized setting: alternate every round, gossip only the active
  factor; the frozen copies drift apart (TAD-LoRA's observation).
* FFA-LoRA gossip (Sun et al., ICLR 2024, https://arxiv.org/abs/2403.12313):
  with A common and fixed the gossip of B is exactly the gossip of
  :math:`\Delta W`; the cross term is 0. A lives in ``shared``, not in the
  store.
* TAD-LoRA (Wang et al., "Stabilizing Decentralized Federated Fine-Tuning
  via Topology-Aware Alternating LoRA", arXiv 2602.00451): train one
  factor for T rounds (B first: with B = 0, A has no gradient), gossip
  both every round. ``interval='auto'`` sets :math:`T = \max(1,
  \mathrm{round}(c / \sqrt{1 - \rho}))` with :math:`\rho =
  \lambda_2(\mathbb E[W^\top W])` (`topology.contraction`, estimated on the
  host when the algorithm is built; `topology.tad_lora_interval`), the
  paper's :math:`T^* \asymp 1/\sqrt{1-\rho}` with the constant c tuned
  once (c = 1 by default; the paper sweeps T in {1, 2, 3, 5, 10, 15}).

Metrics beyond the round's: ``cross_term_error`` (`lora_cross_term_error`
of the store after mixing, unscaled), and ``trains_b`` (1 when the round
trained B) and ``switch_interval`` (T; 1 for RoLoRA) for the alternating
methods.
"""

import jax
import jax.numpy as jnp

from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import lora
from fedjax_ext import topology as topology_lib
from fedjax_ext._src.checks import check_int
from fedjax_ext._src.checks import check_number
from fedjax_ext.decentralized import _metrics
from fedjax_ext.decentralized import _round
from fedjax_ext.lora import LoRAParams


def trains_b(round_num: jax.Array, interval: int) -> jax.Array:
  """Whether round `round_num` trains B: ``(round // interval)`` even."""
  return (round_num // interval) % 2 == 0


def lora_node_params(state: _round.DecentralizedState, row: LoRAParams, *,
                     alpha: float) -> core.Params:
  """ONE node's merged model from its (unstacked) row of the store.

  For `node_accuracies`: ``predict_fn = lambda row, x: model.apply(
  lora_node_params(state, row, alpha=alpha), x)``.
  """
  adapters = lora.join_factors(row.adapters, state.shared.get('frozen', {}))
  return lora.merge(state.shared['base'], LoRAParams(adapters, row.dense),
                    alpha=alpha)


def _gossip(loss_fn, client_optimizer, config: lora.LoRAConfig, topology, *,
            trained: str, mixed: str, interval: int, mixing, execution):
  """The LoRA gossip round: `trained` in ('both', 'B', 'alternate'),
  `mixed` in ('all', 'active')."""
  if not isinstance(config, lora.LoRAConfig):
    raise TypeError(f'config must be a lora.LoRAConfig, got '
                    f'{type(config).__name__}.')
  clients.check_update_args(loss_fn, client_optimizer)
  _round.check_topology(topology)
  execution = core.as_execution(execution)
  frozen_a = trained == 'B'

  def init_shared(params):
    shared = {'base': params}
    if frozen_a:
      adapters = lora.init_lora_params(params, config).adapters
      shared['frozen'] = lora.split_factors(adapters, ('A',))[0]
    return shared

  def init_node(params):
    row = lora.init_lora_params(params, config)
    if frozen_a:
      row = row._replace(adapters=lora.split_factors(row.adapters,
                                                     ('B',))[0])
    return row

  def node_update(message, row, batches, key, info):
    del info
    shared = message['shared']
    full = LoRAParams(lora.join_factors(row.adapters,
                                        shared.get('frozen', {})), row.dense)

    def train(names):
      _, local, stats = lora.train_lora(
          loss_fn, client_optimizer, shared['base'], full, names, batches,
          key, alpha=config.alpha, unroll=execution.unroll)
      _, untouched = lora.split_factors(row.adapters, names)
      return (LoRAParams(lora.join_factors(local.adapters, untouched),
                         local.dense), stats)

    if trained == 'alternate':
      new, stats = jax.lax.cond(trains_b(message['round'], interval),
                                lambda: train(('B',)), lambda: train(('A',)))
    else:
      new, stats = train(('A', 'B') if trained == 'both' else ('B',))
    return core.ClientOutput(update=(), weight=stats.num_examples,
                             client_state=new,
                             metrics=clients.stats_metrics(stats))

  def mix_active(mix, rows, state):
    n = _round.num_rows(rows)

    def sent(name):
      take, _ = lora.split_factors(rows.adapters, (name,))
      return LoRAParams(take, rows.dense)

    def gossip(name):
      take, rest = lora.split_factors(rows.adapters, (name,))
      out = mix(LoRAParams(take, rows.dense))
      return LoRAParams(lora.join_factors(out.adapters, rest), out.dense)

    phase_b = trains_b(state.round, interval)
    new = jax.lax.cond(phase_b, lambda: gossip('B'), lambda: gossip('A'))
    sent_bytes = jnp.where(phase_b, core.payload_bytes(sent('B'), n),
                           core.payload_bytes(sent('A'), n))
    return new, sent_bytes

  def extra_metrics(state, store, graph):
    del graph
    metrics = {}
    if frozen_a:
      # A is common to all nodes: mean(B_i A) = mean(B) A exactly.
      metrics['cross_term_error'] = jnp.zeros((), jnp.float32)
    else:
      metrics['cross_term_error'] = _metrics.lora_cross_term_error(
          store.adapters)
    if trained == 'alternate':
      # `state` is after the round: the round trained phase(round - 1).
      metrics['trains_b'] = trains_b(state.round - 1,
                                     interval).astype(jnp.float32)
      metrics['switch_interval'] = jnp.asarray(interval, jnp.float32)
    return metrics

  def finalize(state, mean):
    return lora_node_params(state, mean, alpha=config.alpha)

  return _round.decentralized_algorithm(
      node_update, topology, init_node=init_node, init_shared=init_shared,
      mix_rule=mix_active if mixed == 'active' else _round.mix_all,
      finalize_model=finalize, extra_metrics=extra_metrics, mixing=mixing,
      execution=execution)


def dec_lora(loss_fn: clients.LossFn, client_optimizer,
             config: lora.LoRAConfig, topology, *, mixing: str = 'auto',
             execution: core.Execution | str | None = None
             ) -> core.FederatedAlgorithm:
  """Dec-LoRA: every node trains A and B, and gossips both.

  Args:
    loss_fn: masked mean loss over the FULL model params (`clients.LossFn`).
    client_optimizer: optax optimizer of the local steps (fresh each round).
    config: `lora.LoRAConfig` (targets, rank, alpha, init key, head).
    topology: a `topology.Topology` of N nodes.
    mixing: ``'auto'``, ``'sparse'`` or ``'dense'``.
    execution: the run's `core.Execution`.

  Returns:
    A `core.FederatedAlgorithm`; ``init`` takes the full pretrained params,
    the store holds each node's `lora.LoRAParams`, ``model_params`` merges
    the node-average factors into the base.
  """
  return _gossip(loss_fn, client_optimizer, config, topology,
                 trained='both', mixed='all', interval=1, mixing=mixing,
                 execution=execution)


def rolora(loss_fn: clients.LossFn, client_optimizer,
           config: lora.LoRAConfig, topology, *, mixing: str = 'auto',
           execution: core.Execution | str | None = None
           ) -> core.FederatedAlgorithm:
  """RoLoRA gossip: alternate the trained factor every round (B first) and
  gossip only it (and ``dense``); the other factor's rows are untouched.

  Arguments as `dec_lora`.
  """
  return _gossip(loss_fn, client_optimizer, config, topology,
                 trained='alternate', mixed='active', interval=1,
                 mixing=mixing, execution=execution)


def ffa_gossip(loss_fn: clients.LossFn, client_optimizer,
               config: lora.LoRAConfig, topology, *, mixing: str = 'auto',
               execution: core.Execution | str | None = None
               ) -> core.FederatedAlgorithm:
  """FFA-LoRA gossip: A frozen at the shared init, B trained and gossiped.

  The store rows hold B (and ``dense``) only; A is in
  ``state.shared['frozen']``. Arguments as `dec_lora`.
  """
  return _gossip(loss_fn, client_optimizer, config, topology,
                 trained='B', mixed='all', interval=1, mixing=mixing,
                 execution=execution)


def tad_lora(loss_fn: clients.LossFn, client_optimizer,
             config: lora.LoRAConfig, topology, *,
             interval: int | str = 'auto', c: float = 1.0,
             contraction_key: jax.Array | None = None,
             num_samples: int = 64, mixing: str = 'auto',
             execution: core.Execution | str | None = None
             ) -> core.FederatedAlgorithm:
  r"""TAD-LoRA: train B for T rounds, then A for T, ...; gossip both.

  Args:
    loss_fn, client_optimizer, config, topology, mixing, execution: as
      `dec_lora`.
    interval: the switching interval T >= 1, or ``'auto'``: :math:`T =
      \max(1, \mathrm{round}(c / \sqrt{1 - \rho}))` from the topology's
      contraction :math:`\rho = \lambda_2(\mathbb E[W^\top W])`, computed
      once on the host here (`topology.contraction` from `num_samples`
      draws with `contraction_key`, default ``jax.random.key(0)``).
    c: the constant of the automatic T (> 0).
    contraction_key, num_samples: the Monte-Carlo estimate of rho.

  Returns:
    A `core.FederatedAlgorithm` as `dec_lora`'s; T is static config (the
    round reads it, the state does not hold it).

  Raises:
    ValueError: for a bad interval or c, or ``'auto'`` on a topology that
      never mixes (rho = 1).
  """
  _round.check_topology(topology)
  if interval == 'auto':
    c = check_number('c', c, low=0, low_open=True)
    key = jax.random.key(0) if contraction_key is None else contraction_key
    rho = topology_lib.contraction(topology, key, num_samples)
    interval = topology_lib.tad_lora_interval(rho, c=c)
  else:
    interval = check_int("interval (an int or 'auto')", interval, low=1)
  return _gossip(loss_fn, client_optimizer, config, topology,
                 trained='alternate', mixed='all', interval=interval,
                 mixing=mixing, execution=execution)
