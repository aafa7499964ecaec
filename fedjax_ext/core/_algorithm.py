"""The federated round as one pure, jittable function, built by composition.

A `FederatedAlgorithm` is a pair of pure functions in the optax style:

* ``init(params) -> ServerState`` and
* ``apply(server_state, client_store, cohort, key)
  -> (server_state, client_store, metrics)``,

plus ``init_client_state(params)``, the persistent state of ONE client that
algorithms such as SCAFFOLD keep between the rounds a client takes part in.
The trainer keeps those states for all N clients in a client-indexed store
(leaves shaped [N, ...]) next to, not inside, `ServerState`; `apply` gathers
the cohort's rows and scatters them back inside the compiled round.

One round (`federated_algorithm`):

1. ``round_key = fold_in(key, server_state.round)``; client ``i`` draws from
   ``fold_in(round_key, client_id_i)``, so a client's randomness does not
   depend on its position in the cohort, and a resumed run replays it.
2. ``map_clients(client_update, broadcast(server_state), states, batches,
   keys)`` runs every client's local update (`core.map_clients`).
3. The aggregator turns the stacked [C, ...] pseudo-gradients into one.
4. The server optimizer (any optax transform) treats the aggregate as a
   gradient: ``params <- params + server_optimizer.update(aggregate)``.
5. Algorithm-specific server state (SCAFFOLD's control variate) is updated.

Sign convention: a client's ``update`` is the pseudo-gradient
``global_params - local_params``, so `optax.sgd(1.0)` on the weighted mean
update gives exactly FedAvg's average of the local models (Reddi et al.,
"Adaptive Federated Optimization", ICLR 2021, https://arxiv.org/abs/2003.00295).
"""

from typing import Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from fedjax_ext.core import _map
from fedjax_ext.core import _tree
from fedjax_ext.core._types import (ClientState, Metrics, Params, PRNGKey,
                                    PyTree, Updates)


class Cohort(NamedTuple):
  """One round's clients, packed to fixed shapes so rounds never retrace."""
  client_ids: jax.Array  # int32 [C]: rows of the client store.
  batches: dict[str, jax.Array]  # 'x' [C, S, B, ...], 'y' and 'mask' [C, S, B].
  num_examples: jax.Array  # float32 [C]: training examples of each client.


class ServerState(NamedTuple):
  """Everything the server carries between rounds; exactly what is saved."""
  params: Params
  opt_state: optax.OptState  # The server optimizer's state.
  aggregator_state: PyTree  # The aggregator's state; () if stateless.
  algorithm_state: PyTree  # e.g. SCAFFOLD's server control; () if none.
  round: jax.Array  # int32 scalar: rounds completed so far.


class ClientOutput(NamedTuple):
  """What one client's local update returns (one client, no leading axis)."""
  update: Updates  # Pseudo-gradient: global params - local params.
  weight: jax.Array  # float32 scalar aggregation weight (e.g. examples seen).
  client_state: ClientState  # The client's new persistent state.
  metrics: Metrics  # Scalars such as 'train_loss'; averaged by `weight`.


class ClientUpdateFn(Protocol):

  def __call__(self, server_message: PyTree, client_state: ClientState,
               batches: dict[str, jax.Array], key: PRNGKey) -> ClientOutput:
    """One client's local update from what the server broadcast."""


class Aggregator(NamedTuple):
  """Stacked client updates [C, ...] -> one update, optax style.

  ``update(client_updates, state, params=None, *, weights, **extra_args)
  -> (aggregate, state)``.
  """
  init: Callable[[Params], PyTree]
  update: Callable[..., tuple[Updates, PyTree]]


class FederatedAlgorithm(NamedTuple):
  """A federated algorithm as pure functions (see the module docstring)."""
  init: Callable[[Params], ServerState]
  init_client_state: Callable[[Params], ClientState]
  apply: Callable[[ServerState, PyTree, Cohort, PRNGKey],
                  tuple[ServerState, PyTree, Metrics]]


def client_keys(key: PRNGKey, round_num: jax.Array,
                client_ids: jax.Array) -> jax.Array:
  """Per-client keys [C] folded from (key, round, client id)."""
  base = jax.random.fold_in(key, round_num)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(client_ids)


def round_key(key: PRNGKey, round_num: jax.Array) -> PRNGKey:
  """The server's own key of a round, independent of every client's key.

  Client ids are non-negative, so folding in -1 (as uint32) never collides
  with a client's ``fold_in(fold_in(key, round), client_id)``.
  """
  return jax.random.fold_in(jax.random.fold_in(key, round_num),
                            jnp.uint32(2**32 - 1))


def _empty_state(params: Params) -> tuple[()]:
  del params
  return ()


def federated_algorithm(
    client_update: ClientUpdateFn,
    aggregator: Aggregator,
    server_optimizer: optax.GradientTransformation,
    *,
    init_client_state: Callable[[Params], ClientState] = _empty_state,
    init_algorithm_state: Callable[[Params], PyTree] = _empty_state,
    server_message: Callable[[ServerState], PyTree] = lambda s: s.params,
    update_algorithm_state: Callable[..., PyTree] | None = None,
    transform_outputs: Callable[[ClientOutput, PRNGKey],
                                ClientOutput] | None = None,
    extra_metrics: Callable[[ClientOutput, Updates, ServerState],
                            Metrics] | None = None,
    execution: str = 'auto',
    chunk_size: int | None = None,
) -> FederatedAlgorithm:
  """Composes a client update, an aggregator and a server optimizer.

  Args:
    client_update: ONE client's local update (`ClientUpdateFn`).
    aggregator: combines the cohort's stacked pseudo-gradients.
    server_optimizer: optax transform applied to the aggregate.
    init_client_state: one client's initial persistent state.
    init_algorithm_state: the server's algorithm-specific initial state.
    server_message: what the server broadcasts to clients (default: params).
    update_algorithm_state: ``fn(algorithm_state, old_client_states,
      outputs) -> algorithm_state`` run after aggregation (stacked [C] old
      states and outputs); default keeps the state unchanged.
    transform_outputs: ``fn(outputs, key) -> outputs`` on the stacked [C]
      client outputs before aggregation, e.g. a simulated attack that sees
      every honest update of the round; `key` is the round's own key.
    extra_metrics: ``fn(outputs, aggregate, state) -> metrics`` added to the
      round's metrics (drift measures read the same stacked outputs).
    execution: how clients are mapped (`core.map_clients` strategies).
    chunk_size: clients per chunk for ``execution='chunked'``.

  Returns:
    A `FederatedAlgorithm`; jit its ``apply`` once per run.
  """

  def init(params: Params) -> ServerState:
    return ServerState(
        params=params,
        opt_state=server_optimizer.init(params),
        aggregator_state=aggregator.init(params),
        algorithm_state=init_algorithm_state(params),
        round=jnp.zeros((), jnp.int32))

  def apply(state: ServerState, client_store: PyTree, cohort: Cohort,
            key: PRNGKey) -> tuple[ServerState, PyTree, Metrics]:
    keys = client_keys(key, state.round, cohort.client_ids)
    old_states = _tree.tree_gather(client_store, cohort.client_ids)
    outputs: ClientOutput = _map.map_clients(
        client_update, server_message(state), old_states, cohort.batches,
        keys, in_axes=(None, 0, 0, 0), strategy=execution,
        chunk_size=chunk_size)
    if transform_outputs is not None:
      outputs = transform_outputs(outputs, round_key(key, state.round))
    aggregate, aggregator_state = aggregator.update(
        outputs.update, state.aggregator_state, state.params,
        weights=outputs.weight)
    # The pseudo-gradient plays the gradient's role: optax returns the step.
    steps, opt_state = server_optimizer.update(aggregate, state.opt_state,
                                               state.params)
    algorithm_state = state.algorithm_state
    if update_algorithm_state is not None:
      algorithm_state = update_algorithm_state(algorithm_state, old_states,
                                               outputs)
    new_state = ServerState(
        params=optax.apply_updates(state.params, steps),
        opt_state=opt_state,
        aggregator_state=aggregator_state,
        algorithm_state=algorithm_state,
        round=state.round + 1)
    client_store = _tree.tree_scatter(client_store, cohort.client_ids,
                                      outputs.client_state)
    metrics = round_metrics(outputs, aggregate)
    if extra_metrics is not None:
      metrics.update(extra_metrics(outputs, aggregate, state))
    return new_state, client_store, metrics

  return FederatedAlgorithm(init, init_client_state, apply)


def round_metrics(outputs: ClientOutput, aggregate: Updates) -> Metrics:
  """Cohort metrics: clients' metrics averaged by weight, plus totals."""
  metrics = {name: _tree.tree_weighted_mean(value, outputs.weight)
             for name, value in outputs.metrics.items()}
  metrics['cohort_weight'] = jnp.sum(outputs.weight)
  metrics['update_norm'] = optax.tree.norm(aggregate)
  return metrics
