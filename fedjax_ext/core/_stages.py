r"""The stages of a federated round, public and pure.

`core.federated_algorithm` composes them into the FedAvg-shaped round; a
method of another shape (a server that rebuilds the model from client
factors, gossip between nodes with no server, split learning) writes its
own short ``apply`` from the same pieces, as fedjax's algorithms do::

    keys      = client_keys(key, state.round, cohort.client_ids)
    old       = tree_gather(client_store, cohort.rows())
    outputs   = run_clients(client_update, message, old, cohort, keys,
                            execution)                      # [C] outputs
    outputs   = weigh_clients(outputs, cohort, weighting)
    outputs   = transform(outputs, state, cohort, stage_key(key, round, 0))
    aggregate, agg_state = aggregate_outputs(aggregator, outputs, state,
                                             cohort, stage_key(..., 1))
    state     = server_update.update(state._replace(aggregator_state=...),
                                     aggregate, outputs, stage_key(..., 2))
    store     = tree_scatter(client_store, cohort.rows(),
                             outputs.client_state)
    metrics   = round_metrics(outputs, aggregate)

Keys: client ``i`` draws from ``fold_in(fold_in(key, round), id_i)``, so
its randomness does not depend on its position in the cohort and a resumed
run replays it; the server's stages draw from `stage_key`, which no
client's key can equal.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_ext.core import _map
from fedjax_ext.core import _tree
from fedjax_ext.core._structures import (Aggregator, ClientOutput,
                                         ClientUpdateFn, Cohort, ServerState,
                                         ServerUpdate)
from fedjax_ext.core._types import Metrics, PRNGKey, PyTree, Updates

# How the weighting stage sets each client's aggregation weight.
WEIGHTINGS = ('num_examples', 'examples_processed', 'uniform')


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


def stage_key(key: PRNGKey, round_num: jax.Array, stage: int) -> PRNGKey:
  """Key of server stage `stage` of a round (0: the output transform).

  Stage 0 is `round_key` itself; stage s > 0 folds s into it.
  """
  base = round_key(key, round_num)
  return base if stage == 0 else jax.random.fold_in(base, stage)


def run_clients(client_update: ClientUpdateFn, server_message: PyTree,
                client_states: PyTree, cohort: Cohort, keys: jax.Array,
                execution: _map.Execution | str | None = None
               ) -> ClientOutput:
  """Every cohort client's update, stacked [C] (`map_clients`).

  Args:
    client_update: ONE client's update, ``fn(message, client_state,
      batches, key, info)``.
    server_message: what the server broadcast (shared by every client).
    client_states: the cohort's rows of the client store, [C, ...].
    cohort: the round's `Cohort`.
    keys: per-client keys [C] (`client_keys`).
    execution: the run's `core.Execution` policy.

  Returns:
    The stacked `ClientOutput` of the cohort.
  """
  check_cohort(cohort)
  return _map.map_clients(
      client_update, server_message, client_states, cohort.batches, keys,
      cohort.client_info(), in_axes=(None, 0, 0, 0, 0), execution=execution)


def check_cohort(cohort: Cohort) -> None:
  """Shapes of a `Cohort` (at trace time); a ValueError names the field."""
  ids = jnp.shape(cohort.client_ids)
  if len(ids) != 1:
    raise ValueError(f'Cohort.client_ids must be [C], got shape {ids}.')
  mask = cohort.batches.get('mask')
  if mask is None or jnp.ndim(mask) != 3 or jnp.shape(mask)[0] != ids[0]:
    raise ValueError(f"Cohort.batches['mask'] must be [C={ids[0]}, S, B], "
                     f'got {None if mask is None else jnp.shape(mask)}.')
  for name, column in cohort.batches.items():
    if jnp.shape(column)[:3] != jnp.shape(mask):
      raise ValueError(f'Cohort.batches[{name!r}] must start with [C, S, B] '
                       f'= {jnp.shape(mask)}, got {jnp.shape(column)}.')
  columns = {'Cohort.num_examples': cohort.num_examples}
  if cohort.store_rows is not None:
    columns['Cohort.store_rows'] = cohort.store_rows
  columns.update({f'Cohort.info[{k!r}]': v for k, v in cohort.info.items()})
  for name, column in columns.items():
    if jnp.shape(column) != ids:
      raise ValueError(f'{name} must be [C={ids[0]}], got '
                       f'{jnp.shape(column)}.')


def check_weighting(weighting: str) -> None:
  """Raises a ValueError naming `weighting` and `WEIGHTINGS`."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f'Unknown weighting {weighting!r}; valid choices: '
                     f'{", ".join(WEIGHTINGS)}.')


def weigh_clients(outputs: ClientOutput, cohort: Cohort,
                  weighting: str = 'num_examples') -> ClientOutput:
  r"""Sets each client's aggregation weight from the run's weighting.

  Clients report the real examples they processed; a client that trained
  on nothing (weight 0) keeps weight 0, and a non-finite weight stays as it
  is (robust aggregators reject it).

  * ``'num_examples'`` (default): :math:`w_k = n_k`, the client's dataset
    size (McMahan et al. 2017; FedJAX). With one local epoch this equals
    the examples processed; with a fixed number of local steps it does not.
  * ``'examples_processed'``: what the client reported (S * B real
    examples with fixed steps).
  * ``'uniform'``: 1 for every client that trained.
  """
  check_weighting(weighting)
  reported = outputs.weight
  if weighting == 'examples_processed':
    return outputs
  value = (jnp.asarray(cohort.num_examples, jnp.float32)
           if weighting == 'num_examples' else jnp.ones_like(reported))
  weight = jnp.where(jnp.isfinite(reported),
                     jnp.where(reported > 0, value, 0.), reported)
  return outputs._replace(weight=weight.astype(jnp.float32))


def aggregate_outputs(aggregator: Aggregator, outputs: ClientOutput,
                      state: ServerState, cohort: Cohort,
                      key: PRNGKey) -> tuple[Updates, PyTree]:
  """The aggregate of the stacked updates and the aggregator's new state.

  The aggregator sees the round's key, the server state before the round
  and the cohort's per-client info as extra arguments (`Aggregator`).
  """
  return aggregator.update(
      outputs.update, state.aggregator_state, state.params,
      weights=outputs.weight, key=key, server_state=state,
      client_info=cohort.client_info())


def optax_server_update(optimizer: optax.GradientTransformation
                       ) -> ServerUpdate:
  """The default server stage: an optax step on the pseudo-gradient.

  ``params <- params + optimizer.update(aggregate)``; with the sign
  convention update = global - local, ``optax.sgd(1.0)`` on the weighted
  mean gives exactly FedAvg's average of the local models (Reddi et al.,
  "Adaptive Federated Optimization", ICLR 2021,
  https://arxiv.org/abs/2003.00295).
  """

  def update_fn(state: ServerState, aggregate: Updates,
                outputs: ClientOutput, key: PRNGKey) -> ServerState:
    del outputs, key
    steps, opt_state = optimizer.update(aggregate, state.opt_state,
                                        state.params)
    return state._replace(params=optax.apply_updates(state.params, steps),
                          opt_state=opt_state)

  return ServerUpdate(optimizer.init, update_fn)


def as_server_update(server: ServerUpdate | optax.GradientTransformation
                    ) -> ServerUpdate:
  """`server` itself, or `optax_server_update` of an optax optimizer."""
  if isinstance(server, ServerUpdate):
    return server
  if isinstance(server, optax.GradientTransformation):
    return optax_server_update(server)
  raise TypeError('Expected a core.ServerUpdate or an optax '
                  f'GradientTransformation, got {type(server).__name__}.')


def with_algorithm_state(
    server: ServerUpdate,
    update_algorithm_state: Callable[[PyTree, ClientOutput], PyTree]
) -> ServerUpdate:
  """`server` followed by ``algorithm_state <- fn(algorithm_state, outputs)``.

  For server-side state updated from the clients' ``aux`` payloads, e.g.
  SCAFFOLD's control variate :math:`c \\leftarrow c + \\sum_i
  \\Delta c_i / N`.
  """

  def update_fn(state, aggregate, outputs, key):
    state = server.update(state, aggregate, outputs, key)
    return state._replace(algorithm_state=update_algorithm_state(
        state.algorithm_state, outputs))

  return ServerUpdate(server.init, update_fn)


def round_metrics(outputs: ClientOutput, aggregate: Updates) -> Metrics:
  """Cohort metrics: clients' metrics averaged by weight, plus totals."""
  metrics = {name: _tree.tree_weighted_mean(value, outputs.weight)
             for name, value in outputs.metrics.items()}
  metrics['cohort_weight'] = jnp.sum(outputs.weight)
  metrics['update_norm'] = optax.tree.norm(aggregate)
  return metrics


def payload_bytes(tree: PyTree, num_clients: int | None = None) -> jax.Array:
  """Bytes of `tree` (per client when it is stacked over `num_clients`)."""
  total = sum(x.size * jnp.dtype(x.dtype).itemsize
              for x in jax.tree.leaves(tree))
  if num_clients:
    total = total / num_clients
  return jnp.asarray(total, jnp.float32)


def communication_metrics(outputs: ClientOutput,
                          server_message: PyTree) -> Metrics:
  """Bytes each way per client: ``update`` + ``aux`` up, the message down."""
  num_clients = jnp.shape(outputs.weight)[0]
  return {
      'upload_bytes_per_client': payload_bytes(
          (outputs.update, outputs.aux), num_clients),
      'downlink_bytes_per_client': payload_bytes(server_message),
  }

