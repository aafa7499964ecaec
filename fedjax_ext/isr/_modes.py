r"""OmniISR's three deployment modes: PureCL, PureFL and Hybrid CL-FL.

OmniISR (arXiv 2605.20276, 2026) trains one recipe in three settings:

* **PureCL**: all data pooled on the server, minibatch SGD (`centralized`).
  With the same step budget as a federated run of C clients x K local steps
  of batch B per round, a "round" here is K sequential SGD steps of batch
  C * B (`pooled_cohort`): the same sequential steps and the same examples
  processed per round.
* **PureFL**: any `core.FederatedAlgorithm`.
* **Hybrid CL-FL** (`hybrid`): a group of clients whose data may be pooled
  (the "cloud") trains centrally each round while the rest run the
  federated algorithm; the two results are mixed,

  .. math:: x^{t+1} = x^t - \big(w_C \Delta_C + (1 - w_C) \Delta_F\big),

  with :math:`\Delta_C = x^t - x_C` after K cloud SGD steps from
  :math:`x^t` and :math:`\Delta_F = x^t - x_F` the federated algorithm's
  own step (its server optimizer included). The paper does not specify the
  hybrid rule; this data-size mixture with
  :math:`w_C = |D_C| / |D|` is OUR READING (spec §1.5, tag [I]) and
  `cloud_weight` is an argument. Hybrid rounds log the cosine between
  :math:`\Delta_C` and :math:`\Delta_F` ('cl_fl_cosine'), the quantity of
  the paper's gradient-alignment claim.

All three are `core.FederatedAlgorithm`\ s with the usual ``apply(state,
client_store, cohort, key)``, so one experiment loop runs them: PureCL
takes a `pooled_cohort`, Hybrid a `HybridCohort` (`hybrid_cohort`) that
carries the sampled clients' `core.Cohort` and the cloud's batches.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext._src.checks import check_number
from fedjax_ext.core import Examples, Metrics, PRNGKey, PyTree

# `hybrid_cohort`'s default cloud seed is the run's seed plus this, so the
# cloud's shuffling differs from the federated clients'.
CLOUD_SEED_OFFSET = 7919
# The server stage whose key the cloud's SGD draws (`core.stage_key`).
_CLOUD_STAGE = 1


def centralized(loss_fn: clients.LossFn, learning_rate: float, *,
                execution: core.Execution | str | None = None
                ) -> core.FederatedAlgorithm:
  """PureCL: SGD on pooled data, as a round of one client holding it all.

  Args:
    loss_fn: the (ISR or plain) loss.
    learning_rate: the SGD step.
    execution: the run's `core.Execution` policy; its ``unroll`` sets the
      unroll of the SGD steps. One client is never sharded: ``'auto'`` and
      ``'sharded'`` map it with ``'vmap'`` (the default).

  Returns:
    A `core.FederatedAlgorithm` (`algorithms.fed_avg`) to apply to
    `pooled_cohort` cohorts: one "client" whose K steps are the round's
    centralized steps, and ``optax.sgd(1.0)`` on the server, so the new
    params are exactly the result of those steps (the one client's
    normalized weight is 1 under any weighting; ``'examples_processed'``
    is used).
  """
  check_number('learning_rate', learning_rate, low=0, low_open=True)
  execution = core.as_execution(execution)
  if execution.strategy in ('auto', 'sharded'):
    execution = execution._replace(strategy='vmap')
  return algorithms.fed_avg(loss_fn, optax.sgd(learning_rate),
                            optax.sgd(1.0), weighting='examples_processed',
                            execution=execution)


def pooled_cohort(examples: Examples, client_indices: Sequence[np.ndarray],
                  members: Sequence[int], *, batch_size: int, num_steps: int,
                  seed: int, round_num: int) -> core.Cohort:
  """The pooled data of `members` as a one-client cohort [1, S, B, ...].

  Batches are drawn as shuffled passes over the union of the members' rows
  (`data.pack_cohort` with one client).
  """
  members = list(members)
  if not members or not all(0 <= int(i) < len(client_indices)
                            for i in members):
    raise ValueError(f'members must be a non-empty list of clients in '
                     f'[0, {len(client_indices)}), got {members}.')
  rows = np.concatenate([client_indices[i] for i in members])
  return data.pack_cohort(examples, [rows], np.zeros(1, np.int32),
                          batch_size=batch_size, num_steps=num_steps,
                          seed=seed, round_num=round_num)


class HybridCohort(NamedTuple):
  """One Hybrid CL-FL round's data: what `hybrid`'s ``apply`` takes.

  The federated algorithm runs on ``federated``; the cloud's centralized
  SGD runs on ``cloud``, one client's batches (no leading client axis).
  """
  federated: core.Cohort  # The sampled non-poolable clients.
  cloud: dict[str, jax.Array]  # Pooled cloud batches [S, B, ...] + 'mask'.


def hybrid_cohort(examples: Examples, client_indices: Sequence[np.ndarray],
                  client_ids: np.ndarray, cloud_members: Sequence[int], *,
                  batch_size: int, num_steps: int, seed: int,
                  round_num: int, cloud_batch_size: int | None = None,
                  cloud_seed: int | None = None,
                  local_epochs: float | None = None) -> HybridCohort:
  """Packs a `HybridCohort`: sampled clients plus the pooled cloud.

  Args:
    examples: pooled training columns ('x', 'y', ...).
    client_indices: for each of the N clients, its rows of `examples`.
    client_ids: int [C] ids of this round's federated clients.
    cloud_members: ids of the clients whose data the cloud pools.
    batch_size: B of each federated client.
    num_steps: S, local steps per round (the cloud takes as many).
    seed, round_num: fix the shuffling (`data.pack_cohort`).
    cloud_batch_size: the cloud's batch; default ``B * len(cloud_members)``
      (each cloud member contributes a client's batch to every step).
    cloud_seed: the cloud's shuffling seed; default
      ``seed + CLOUD_SEED_OFFSET``.
    local_epochs: see `data.pack_cohort` (federated clients only).

  Returns:
    A NumPy `HybridCohort`: ``federated`` from `data.pack_cohort`,
    ``cloud`` the batches of `pooled_cohort` without the client axis.
  """
  federated = data.pack_cohort(examples, client_indices, client_ids,
                               batch_size=batch_size, num_steps=num_steps,
                               seed=seed, round_num=round_num,
                               local_epochs=local_epochs)
  cloud = pooled_cohort(
      examples, client_indices, cloud_members,
      batch_size=(batch_size * len(cloud_members) if cloud_batch_size is None
                  else cloud_batch_size),
      num_steps=num_steps,
      seed=seed + CLOUD_SEED_OFFSET if cloud_seed is None else cloud_seed,
      round_num=round_num)
  return HybridCohort(federated, {k: v[0] for k, v in cloud.batches.items()})


def _cosine(a: PyTree, b: PyTree) -> jax.Array:
  dot = sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                           jax.tree.leaves(b)))
  norms = optax.tree.norm(a) * optax.tree.norm(b)
  return dot / jnp.maximum(norms, 1e-12)


def hybrid(algorithm: core.FederatedAlgorithm, loss_fn: clients.LossFn, *,
           learning_rate: float, cloud_weight: float,
           execution: core.Execution | str | None = None
           ) -> core.FederatedAlgorithm:
  r"""Hybrid CL-FL around any federated algorithm (module doc).

  Each round runs `algorithm` on ``cohort.federated`` and K SGD steps of
  the cloud from the same :math:`x^t` on ``cohort.cloud``, then mixes the
  two steps: :math:`x^{t+1} = x^t - (w_C \Delta_C + (1 - w_C) \Delta_F)`.
  The rest of the state (round, optimizer, aggregator and algorithm
  state) and the client store are the federated algorithm's. The cloud's
  SGD draws ``core.stage_key(key, state.round, 1)``.

  Args:
    algorithm: the federated algorithm of the non-poolable clients; its
      state must have ``params`` (any `core.federated_algorithm`).
    loss_fn: the loss of the cloud's SGD (the same as the clients').
    learning_rate: the cloud's SGD step (the clients' local step).
    cloud_weight: :math:`w_C \in [0, 1]`; the data-size reading is
      :math:`|D_C| / |D|` (OUR READING, [I]; module doc).
    execution: the run's `core.Execution` policy; the cloud's SGD uses its
      ``unroll``.

  Returns:
    A `core.FederatedAlgorithm` whose ``apply(state, client_store, cohort,
    key)`` takes a `HybridCohort` (`hybrid_cohort`). Metrics are the
    federated round's plus 'cl_fl_cosine' (cosine of :math:`\Delta_C` and
    :math:`\Delta_F`), 'cloud_loss' and 'cloud_update_norm'
    (:math:`\|\Delta_C\|`).
  """
  check_number('learning_rate', learning_rate, low=0, low_open=True)
  check_number('cloud_weight', cloud_weight, low=0, high=1)
  execution = core.as_execution(execution)
  optimizer = optax.sgd(learning_rate)

  def apply(state: PyTree, client_store: PyTree, cohort: HybridCohort,
            key: PRNGKey) -> tuple[PyTree, PyTree, Metrics]:
    x = state.params
    fl_state, client_store, metrics = algorithm.apply(
        state, client_store, cohort.federated, key)
    cloud_key = core.stage_key(key, state.round, _CLOUD_STAGE)
    cloud, stats = clients.train_locally(x, cohort.cloud, cloud_key,
                                         loss_fn=loss_fn,
                                         optimizer=optimizer,
                                         unroll=execution.unroll)
    delta_c = jax.tree.map(jnp.subtract, x, cloud)
    delta_f = jax.tree.map(jnp.subtract, x, fl_state.params)
    mixed = jax.tree.map(
        lambda p, c, f: p - (cloud_weight * c + (1. - cloud_weight) * f),
        x, delta_c, delta_f)
    metrics = dict(metrics)
    metrics['cl_fl_cosine'] = _cosine(delta_c, delta_f)
    metrics['cloud_loss'] = stats.loss
    metrics['cloud_update_norm'] = optax.tree.norm(delta_c)
    return fl_state._replace(params=mixed), client_store, metrics

  return algorithm._replace(apply=apply)
