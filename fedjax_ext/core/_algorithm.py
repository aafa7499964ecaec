"""`federated_algorithm`: the FedAvg-shaped round composed from the stages.

A `FederatedAlgorithm` is a pair of pure functions in the optax style,
``init(params) -> state`` and ``apply(state, client_store, cohort, key) ->
(state, client_store, metrics)``, plus ``init_client_state(params)``, the
persistent state of ONE client (SCAFFOLD's control, worker momentum) that
the trainer keeps for all N clients in a client-indexed store (leaves
[N, ...]) next to, not inside, the server state.

The round `federated_algorithm` builds, stage by stage (`core._stages`)::

    cohort ──► run_clients ──► weigh_clients ──► transform_outputs
    (C clients)  (map_clients)   (n_k | processed   (attacks, seed replay;
                                  | uniform)         sees server state)
                                                          │
    round_metrics ◄── tree_scatter ◄── server_update ◄── aggregate_outputs
    (+ extra_metrics)  (client store)  (optax step, or   (aggregator sees
                                        a rebuild)        key, state, info)

Each hook is optional and has one job: ``transform_outputs`` rewrites the
stacked outputs before aggregation, the aggregator combines updates, the
server update writes params / optimizer state / algorithm state,
``extra_metrics`` reads the round without storing anything.
"""

from typing import Callable

import jax.numpy as jnp
import optax

from fedjax_ext.core import _map
from fedjax_ext.core import _stages
from fedjax_ext.core import _tree
from fedjax_ext.core._structures import (Aggregator, ClientOutput,
                                         ClientUpdateFn, Cohort,
                                         FederatedAlgorithm, ServerState,
                                         ServerUpdate)
from fedjax_ext.core._types import (ClientState, Metrics, Params, PRNGKey,
                                    PyTree, Updates)

TransformOutputsFn = Callable[[ClientOutput, ServerState, Cohort, PRNGKey],
                              ClientOutput]
ExtraMetricsFn = Callable[[ClientOutput, Updates, ServerState], Metrics]


def _empty_state(params: Params) -> tuple[()]:
  del params
  return ()


def federated_algorithm(
    client_update: ClientUpdateFn,
    aggregator: Aggregator,
    server_update: ServerUpdate | optax.GradientTransformation,
    *,
    weighting: str = 'num_examples',
    init_client_state: Callable[[Params], ClientState] = _empty_state,
    init_algorithm_state: Callable[[Params], PyTree] = _empty_state,
    server_message: Callable[[ServerState], PyTree] = lambda s: s.params,
    transform_outputs: TransformOutputsFn | None = None,
    extra_metrics: ExtraMetricsFn | None = None,
    execution: _map.Execution | str | None = None,
) -> FederatedAlgorithm:
  """Composes a client update, an aggregator and a server update.

  Args:
    client_update: ONE client's local update (`ClientUpdateFn`).
    aggregator: combines the cohort's stacked updates.
    server_update: a `ServerUpdate`, or an optax optimizer applied to the
      aggregate as a pseudo-gradient (`core.optax_server_update`).
    weighting: the aggregation weight of each client (`core.weigh_clients`):
      ``'num_examples'`` (dataset size n_k, the default),
      ``'examples_processed'`` or ``'uniform'``.
    init_client_state: one client's initial persistent state.
    init_algorithm_state: the initial ``ServerState.algorithm_state``.
    server_message: what the server broadcasts to clients (default: params).
    transform_outputs: ``fn(outputs, state, cohort, key) -> outputs`` on the
      stacked [C] outputs before aggregation, with the server state before
      the round (a simulated attack that sees every honest update and the
      defence's state; the server-side replay of seed uploads).
    extra_metrics: ``fn(outputs, aggregate, state) -> metrics`` added to the
      round's metrics (drift, bytes); nothing is stored.
    execution: the run's `core.Execution` policy (or a strategy name).

  Returns:
    A `FederatedAlgorithm` whose state is a `ServerState`; jit its
    ``apply`` once per run.
  """
  _stages.check_weighting(weighting)
  execution = _map.as_execution(execution)
  server_update = _stages.as_server_update(server_update)

  def init(params: Params) -> ServerState:
    return ServerState(
        params=params,
        opt_state=server_update.init(params),
        aggregator_state=aggregator.init(params),
        algorithm_state=init_algorithm_state(params),
        round=jnp.zeros((), jnp.int32))

  def apply(state: ServerState, client_store: PyTree, cohort: Cohort,
            key: PRNGKey) -> tuple[ServerState, PyTree, Metrics]:
    keys = _stages.client_keys(key, state.round, cohort.client_ids)
    old_states = _tree.tree_gather(client_store, cohort.rows())
    outputs = _stages.run_clients(client_update, server_message(state),
                                  old_states, cohort, keys, execution)
    outputs = _stages.weigh_clients(outputs, cohort, weighting)
    if transform_outputs is not None:
      outputs = transform_outputs(outputs, state, cohort,
                                  _stages.stage_key(key, state.round, 0))
    aggregate, aggregator_state = _stages.aggregate_outputs(
        aggregator, outputs, state, cohort,
        _stages.stage_key(key, state.round, 1))
    new_state = server_update.update(
        state._replace(aggregator_state=aggregator_state), aggregate,
        outputs, _stages.stage_key(key, state.round, 2))
    new_state = new_state._replace(round=state.round + 1)
    client_store = _tree.tree_scatter(client_store, cohort.rows(),
                                      outputs.client_state)
    metrics = _stages.round_metrics(outputs, aggregate)
    if extra_metrics is not None:
      metrics.update(extra_metrics(outputs, aggregate, state))
    return new_state, client_store, metrics

  return FederatedAlgorithm(init, init_client_state, apply)
