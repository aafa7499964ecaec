r"""The decentralized round on the stages: one model per node, no server.

Every node of a `topology.Topology` holds its own row of the client store
(leaves [N, ...]: a model, plus a tracker or a momentum buffer when the
method needs one); there is no server model. One round, built by
`decentralized_algorithm` from a node update and a mixing rule::

    graph  = topology.sample(stage_key(key, round, 0))     # W^(t), jittable
    local  = run_clients(node_update, message, store, ...)  # one map_clients
    local  = where(graph.active, local, store)              # dropped nodes
    store  = mix_rule(W^(t) applied to rows, local, state)  # gossip
    store  = where(graph.active, store, old store)

Mixing is :math:`x_i \leftarrow W_{ii} x_i + \sum_{j \in N(i)} W_{ij} x_j`:
`topology.mix` (a neighbour gather, [N, D] work; ``mixing='sparse'``) or
`topology.mix_dense` (``W @ rows``; ``mixing='dense'``), ``'auto'`` picking
dense up to `DENSE_MAX_NODES` nodes. A node that the graph marks inactive
(node dropout) trains nothing and keeps its row: its local result is
discarded before mixing, and its row is restored after it.

The round is a `core.FederatedAlgorithm`, so `training.run_rounds` runs it
as any other: feed a cohort of ALL N nodes in node order every round
(``client_ids = arange(N)``, batches [N, S, B, ...]); the cohort's row i is
node i and the store is used as is, not gathered by ``client_ids``.
``model_params`` is the node average (what the trainer evaluates); the
per-node models are evaluated with `node_accuracies`.

State: `DecentralizedState` (the int32 round and ``shared``, what every node
reads and nobody trains, e.g. a frozen LoRA base; never copied per node:
the node update receives it through the broadcast message). Graphs are
drawn inside the round from the round's key, so a time-varying topology
never retraces the jitted round.

Sharding: with ``execution=core.Execution(strategy='sharded', mesh=...)``
the node updates run as a `jax.shard_map` over the mesh's ``'clients'``
axis (N a multiple of its size); the mix that follows is an ordinary
jitted gather / matmul on the node-sharded rows, which XLA partitions with
the collectives it needs.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_ext import core
from fedjax_ext import topology as topology_lib
from fedjax_ext.core import Metrics, Params, PyTree
from fedjax_ext.decentralized import _metrics

MIXINGS = ('auto', 'sparse', 'dense')
# `mixing='auto'` builds the dense [N, N] matrix up to this many nodes.
DENSE_MAX_NODES = 64


class DecentralizedState(NamedTuple):
  """State of a decentralized round: no model, the nodes hold them."""
  round: jax.Array  # int32 scalar: rounds completed so far.
  shared: PyTree = ()  # Frozen, shared by every node (a LoRA base); () if none.


# ``mix(rows) -> rows``: this round's gossip step on node-stacked rows.
MixFn = Callable[[PyTree], PyTree]
# ``rule(mix, rows, state) -> (rows, bytes_per_node)``: which part of the
# node rows is gossiped (the rest is kept), and the bytes one node sends.
MixRule = Callable[[MixFn, PyTree, DecentralizedState],
                   tuple[PyTree, jax.Array]]
# ``fn(state, store, graph) -> metrics`` on the new store (nothing stored).
NodeMetricsFn = Callable[[DecentralizedState, PyTree, Any], Metrics]


def num_rows(rows: PyTree) -> int:
  """N of node-stacked rows (1 when there is no leaf)."""
  leaves = jax.tree.leaves(rows)
  return leaves[0].shape[0] if leaves else 1


def mix_all(mix: MixFn, rows: PyTree, state: DecentralizedState
            ) -> tuple[PyTree, jax.Array]:
  """The default rule: every leaf of the rows is gossiped."""
  del state
  return mix(rows), core.payload_bytes(rows, num_rows(rows))


def mix_fields(names: tuple[str, ...]) -> MixRule:
  """A rule for dict rows: gossip the fields in `names`, keep the others.

  Gradient tracking's rows ``{'x', 'y', 'g'}`` gossip x and y; the last
  local gradient g stays on the node.
  """
  names = tuple(names)

  def rule(mix, rows, state):
    del state
    missing = [n for n in names if n not in rows]
    if missing:
      raise ValueError(f'mix_fields: rows have no field {missing}; fields: '
                       f'{sorted(rows)}.')
    sent = {n: rows[n] for n in names}
    return ({**rows, **mix(sent)},
            core.payload_bytes(sent, num_rows(rows)))

  return rule


def check_topology(topology) -> None:
  """A TypeError unless `topology` looks like a `topology.Topology`."""
  if not (callable(getattr(topology, 'sample', None))
          and isinstance(getattr(topology, 'num_nodes', None), int)):
    raise TypeError('topology must be a topology.Topology (num_nodes, '
                    f'max_degree, sample), got {topology!r}.')


def check_mixing(mixing: str) -> None:
  if mixing not in MIXINGS:
    raise ValueError(f'Unknown mixing {mixing!r}; valid choices: '
                     f'{", ".join(MIXINGS)}.')


def mix_function(graph, mixing: str, num_nodes: int) -> MixFn:
  """The gossip step of `graph`: sparse gather or dense ``W @ rows``."""
  check_mixing(mixing)
  if mixing == 'auto':
    mixing = 'dense' if num_nodes <= DENSE_MAX_NODES else 'sparse'
  if mixing == 'dense':
    matrix = topology_lib.dense_matrix(graph)

    def dense(rows):
      if not jax.tree.leaves(rows):
        return rows
      return topology_lib.mix_dense(matrix, rows)

    return dense

  def sparse(rows):
    if not jax.tree.leaves(rows):
      return rows
    return topology_lib.mix(graph, rows)

  return sparse


def select_rows(active: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """Row i of `new` where ``active[i]``, else row i of `old`."""

  def one(n, o):
    mask = jnp.reshape(active, (-1,) + (1,) * (jnp.ndim(n) - 1))
    return jnp.where(mask, n, o)

  return jax.tree.map(one, new, old)


def node_average(rows: PyTree) -> PyTree:
  """The uniform mean over the node axis of every leaf (`x̄`)."""
  if not jax.tree.leaves(rows):
    return rows
  n = num_rows(rows)
  return core.tree_weighted_mean(rows, jnp.ones((n,), jnp.float32))


def _identity(params):
  return params


def _empty(params):
  del params
  return ()


def _whole(rows):
  return rows


def decentralized_algorithm(
    node_update: core.ClientUpdateFn,
    topology,
    *,
    init_node: Callable[[Params], PyTree] = _identity,
    init_shared: Callable[[Params], PyTree] = _empty,
    mix_rule: MixRule = mix_all,
    node_model: Callable[[PyTree], PyTree] = _whole,
    finalize_model: Callable[[DecentralizedState, PyTree], Params]
    | None = None,
    extra_metrics: NodeMetricsFn | None = None,
    mixing: str = 'auto',
    execution: core.Execution | str | None = None,
) -> core.FederatedAlgorithm:
  """A decentralized `core.FederatedAlgorithm` from one node's update.

  Args:
    node_update: ONE node's local update, a `core.ClientUpdateFn`
      ``fn(message, row, batches, key, info) -> ClientOutput`` whose
      ``client_state`` is the node's new row BEFORE mixing and whose
      ``weight`` is the examples it processed. ``message`` is ``{'shared':
      state.shared, 'round': state.round}``, broadcast to every node.
    topology: a `topology.Topology`; ``sample(key)`` gives the round's
      `topology.Graph`.
    init_node: ``fn(params) -> row``, one node's initial row (default: the
      params themselves). Every node starts from the same row.
    init_shared: ``fn(params) -> shared``, the frozen part every node reads.
    mix_rule: what is gossiped (`MixRule`; default `mix_all`).
    node_model: ``fn(rows) -> model rows``, the model part of node-stacked
      rows (default: the whole row), for the consensus metrics and
      ``model_params``.
    finalize_model: ``fn(state, mean model) -> params`` (a LoRA merge);
      default: the mean model as it is.
    extra_metrics: ``fn(state, new store, graph) -> metrics``.
    mixing: ``'sparse'`` (`topology.mix`), ``'dense'`` (`topology.mix_dense`)
      or ``'auto'`` (dense up to `DENSE_MAX_NODES` nodes).
    execution: the run's `core.Execution` (how nodes are mapped).

  Returns:
    A `core.FederatedAlgorithm` whose state is a `DecentralizedState`.
    Round metrics: the nodes' ``train_*`` metrics averaged over active nodes
    by examples processed, ``consensus_before_mix`` / ``consensus_after_mix``
    (`consensus_distance` of the node models), ``gossip_bytes_per_node``
    (what one node sends each neighbour), ``active_nodes``, ``mean_degree``
    and `extra_metrics`.
  """
  check_topology(topology)
  check_mixing(mixing)
  if not callable(node_update):
    raise TypeError(f'node_update must be callable, got {node_update!r}.')
  execution = core.as_execution(execution)
  num_nodes = topology.num_nodes

  def init(params: Params) -> DecentralizedState:
    return DecentralizedState(round=jnp.zeros((), jnp.int32),
                              shared=init_shared(params))

  def apply(state: DecentralizedState, store: PyTree, cohort: core.Cohort,
            key: core.PRNGKey):
    _check_shapes(cohort, store, num_nodes)
    graph = topology.sample(core.stage_key(key, state.round, 0))
    keys = core.client_keys(key, state.round, cohort.client_ids)
    message = {'shared': state.shared, 'round': state.round}
    outputs = core.run_clients(node_update, message, store, cohort, keys,
                               execution)
    active = jnp.asarray(graph.active, bool)
    local = select_rows(active, outputs.client_state, store)
    mixed, sent_bytes = mix_rule(mix_function(graph, mixing, num_nodes),
                                 local, state)
    new_store = select_rows(active, mixed, store)
    new_state = state._replace(round=state.round + 1)

    weights = outputs.weight * active.astype(outputs.weight.dtype)
    metrics = {name: core.tree_weighted_mean(value, weights)
               for name, value in outputs.metrics.items()
               if jnp.ndim(value) == 1}  # One scalar per node.
    metrics['active_nodes'] = jnp.sum(active.astype(jnp.float32))
    own = jnp.arange(num_nodes, dtype=jnp.int32)[:, None]
    metrics['mean_degree'] = jnp.sum(
        (graph.neighbors != own).astype(jnp.float32)) / num_nodes
    metrics['consensus_before_mix'] = _metrics.consensus_distance(
        node_model(local))
    metrics['consensus_after_mix'] = _metrics.consensus_distance(
        node_model(new_store))
    metrics['gossip_bytes_per_node'] = jnp.asarray(sent_bytes, jnp.float32)
    if extra_metrics is not None:
      metrics.update(extra_metrics(new_state, new_store, graph))
    return new_state, new_store, metrics

  def model_params(state: DecentralizedState, store: PyTree) -> Params:
    mean = node_average(node_model(store))
    return mean if finalize_model is None else finalize_model(state, mean)

  return core.FederatedAlgorithm(init, init_node, apply, model_params)


def _check_shapes(cohort: core.Cohort, store: PyTree, num_nodes: int):
  """Static checks: the cohort and the store hold all `num_nodes` nodes."""
  size = jnp.shape(cohort.client_ids)
  if size != (num_nodes,):
    raise ValueError(
        f'A decentralized round trains all {num_nodes} nodes of the '
        f'topology every round: Cohort.client_ids must be arange({num_nodes})'
        f' (shape [{num_nodes}]), got shape {size}.')
  for leaf in jax.tree.leaves(store):
    if jnp.shape(leaf)[:1] != (num_nodes,):
      raise ValueError(f'The client store must hold one row per node, '
                       f'leaves [{num_nodes}, ...]; got a leaf of shape '
                       f'{jnp.shape(leaf)}.')
