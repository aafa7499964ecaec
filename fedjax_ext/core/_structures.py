"""The values a round passes between its stages.

A round reads a `Cohort`, maps ONE client's update (`ClientUpdateFn`) over
it to stacked `ClientOutput`s, combines their updates with an `Aggregator`,
turns the aggregate into the next `ServerState` with a `ServerUpdate`, and
is packaged as a `FederatedAlgorithm`. Any algorithm's state is a pytree
with an int32 scalar ``round`` field (rounds completed); `ServerState` is
the state of the algorithms built by `core.federated_algorithm`.
"""

from typing import Any, Callable, Mapping, NamedTuple, Protocol

import jax
import optax

from fedjax_ext.core._types import (ClientState, Metrics, Params, PRNGKey,
                                    PyTree, Updates)


class Cohort(NamedTuple):
  """One round's clients, packed to fixed shapes so rounds never retrace.

  ``batches`` holds training data only; what the round knows about each
  client beyond its data (Byzantine flag, LoRA rank, availability, ...)
  travels in ``info`` as [C] columns, next to its dataset size.
  """
  client_ids: jax.Array  # int32 [C]: rows of the client store.
  batches: dict[str, jax.Array]  # 'x' [C, S, B, ...], 'y' and 'mask' [C, S, B].
  num_examples: jax.Array  # float32 [C]: n_k, training examples of client k.
  info: Mapping[str, jax.Array] = {}  # Extra per-client columns, each [C].
  # int32 [C]: the client-store rows the round reads and writes. None: the
  # store holds every client and row = client id. A host-side population
  # store (`training.HostClientStore`) passes only the cohort's rows, so
  # here arange(C), while ``client_ids`` keep naming the clients (keys).
  store_rows: jax.Array | None = None

  def rows(self) -> jax.Array:
    """The client-store rows of this cohort: ``store_rows`` or the ids."""
    return self.client_ids if self.store_rows is None else self.store_rows

  def client_info(self) -> dict[str, jax.Array]:
    """Every per-client column, [C] each: ``num_examples`` plus ``info``."""
    return {'num_examples': self.num_examples, **self.info}


class ServerState(NamedTuple):
  """State of a `core.federated_algorithm` round; exactly what is saved.

  Each field has one owner: the `ServerUpdate` writes ``params``,
  ``opt_state`` and ``algorithm_state`` (SCAFFOLD's control variate, a ZO
  sampler, LoRA factors), the `Aggregator` writes ``aggregator_state``.
  Round metrics are never stored here.
  """
  params: Params
  opt_state: optax.OptState  # The server optimizer's state.
  aggregator_state: PyTree  # The aggregator's state; () if stateless.
  algorithm_state: PyTree  # Server-side state of the algorithm; () if none.
  round: jax.Array  # int32 scalar: rounds completed so far.


class ClientOutput(NamedTuple):
  """What one client's local update returns (one client, no leading axis)."""
  update: Updates  # What the aggregator combines: global - local params.
  # Aggregation weight. Clients report the real examples they processed
  # (0 if they trained on nothing); the round's weighting stage
  # (`core.weigh_clients`) replaces it by the run's weighting.
  weight: jax.Array
  client_state: ClientState  # The client's new persistent state.
  metrics: Metrics  # Scalars such as 'train_loss'; averaged by `weight`.
  # Per-client payload for the server update beyond the aggregated
  # ``update`` (SCAFFOLD's control delta, a ZO sampler state, LoRA Grams);
  # counted in the uplink bytes.
  aux: PyTree = ()


class ClientUpdateFn(Protocol):

  def __call__(self, server_message: PyTree, client_state: ClientState,
               batches: dict[str, jax.Array], key: PRNGKey,
               info: Mapping[str, jax.Array]) -> ClientOutput:
    """One client's local update from what the server broadcast.

    ``info`` holds this client's scalars of `Cohort.client_info`.
    """


class Aggregator(NamedTuple):
  """Stacked client updates [C, ...] -> one update, optax style.

  ``update(client_updates, state, params=None, *, weights, **extra_args)
  -> (aggregate, state)``. The round passes three extra arguments, which
  an aggregator reads by keyword or ignores through ``**extra_args``:
  ``key`` (the aggregation stage's own key), ``server_state`` (the state
  before the round) and ``client_info`` (`Cohort.client_info`, [C] each).
  """
  init: Callable[[Params], PyTree]
  update: Callable[..., tuple[Updates, PyTree]]


class ServerUpdate(NamedTuple):
  """The aggregate -> the next server state, optax style.

  ``init(params) -> opt_state`` and ``update(state, aggregate, outputs,
  key) -> state``: from the `ServerState` before the round (its
  ``aggregator_state`` already the new one), the aggregate, the stacked
  client outputs and the stage's key, the new ``params``, ``opt_state``
  and ``algorithm_state``. The default, `core.optax_server_update`, applies
  an optax optimizer to the aggregate as a pseudo-gradient; servers that
  rebuild the model from client factors (FLoRG, FlexLoRA) write their own.
  """
  init: Callable[[Params], optax.OptState]
  update: Callable[..., ServerState]


def state_params(state: Any, client_store: PyTree) -> Params:
  """The model of a round state: ``state.params`` (the default)."""
  del client_store
  return state.params


class FederatedAlgorithm(NamedTuple):
  """A federated algorithm as pure functions.

  * ``init(params) -> state``: any pytree with an int32 ``round`` field.
  * ``init_client_state(params) -> client_state``: ONE client's persistent
    state; the trainer keeps all N in a client-indexed store [N, ...].
  * ``apply(state, client_store, cohort, key) -> (state, client_store,
    metrics)``: one round, jitted once per run.
  * ``model_params(state, client_store) -> params``: the model to evaluate
    and plot (default ``state.params``; a decentralized algorithm returns
    the node average).
  """
  init: Callable[[Params], Any]
  init_client_state: Callable[[Params], ClientState]
  apply: Callable[[Any, PyTree, Cohort, PRNGKey],
                  tuple[Any, PyTree, Metrics]]
  model_params: Callable[[Any, PyTree], Params] = state_params
