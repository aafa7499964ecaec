r"""Federated zeroth-order training: ZO client updates and seed replay.

A client runs S local ZO steps (any optax chain holding one ZO estimator
from `fedjax_ext.zo`) from the global parameters and uploads either

* ``'delta'``: the pseudo-gradient ``global - local`` (4 bytes per float32
  parameter), aggregated like FedAvg; or
* ``'seeds'``: a `SeedUpload` — its round seed, the q scalars
  :math:`\delta_{s,j}` of each step and a one-byte "step was taken" flag,
  i.e. :math:`8 + S(4q + 1)` bytes whatever the model size. The server
  rebuilds each client's local trajectory exactly (bit for bit) by
  replaying the optimizer with ``projected_grads=`` instead of the objective
  (`replay`), then aggregates the deltas as usual (`seed_replay`).

This is the FedKSeed idea (Qin et al., ICML 2024) of exchanging seeds and
scalar projected gradients, without FedKSeed's finite seed pool: the seed
is the client's round key, so any number of steps replays.

**The sampler state is carried by the server** (``carry_sampler=True``, the
default; our design [I], not in the CurvZO paper, which is centralized).
A client's optimizer state starts every round from
``optimizer.init(global_params)`` reseeded with its round key, so the server
can replay it; but a sparse estimator's `SamplerState` (CurvZO's block
scores :math:`S_b`, the feedback scale :math:`G`, the budget :math:`f` and
the step count) is *learnt*, and a fresh one is a cold start. The server
keeps the weighted mean of the cohort's final sampler states
(`mean_sampler_state`) in its aggregator state and broadcasts it next to the
parameters (`ZOMessage`): 4 n + 12 bytes of downlink per client for n
blocks. In ``'seeds'`` mode it gets the clients' final states from its own
exact replay (nothing more is uploaded); in ``'delta'`` mode each client
uploads its final state next to its delta (`DeltaUpload`, 4 n + 12 bytes).
Replay stays bit-exact because client and server start from the same
broadcast state.

Why: without the carry, every round is CurvZO's cold start. The port's
initial scores :math:`S_b = 0.01` sit 4-40x below the level the score EMA
settles at (a block's share of the step's perturbation energy, 0.04-0.4
on the digits MLP), and :math:`G` starts at 1e-8, so the first step's
signal :math:`|\delta|/G` is :math:`1/\beta_G = 10` times its steady
value. After one step the sampled blocks score ~100x above the others, and
PPS gives those others small :math:`\pi_b`; when one is drawn, the
Horvitz-Thompson factor :math:`1/\pi_b` blows its update up. Measured on
``experiments.zo_finetune`` (seed 0, 2,000 client steps of 10-step rounds
after 50 rounds): the largest :math:`1/\pi_b` of a sampled block per step
has a 99th percentile of 86 (maximum 119) from a cold state, against 10
(maximum 12) from the carried one. A centralized run passes through the
transient once; a federated run without the carry (``carry_sampler=False``)
passes through it every round for every client, and diverged or stalled on
some seeds (BUILD_NOTES). The other remedy, a floor on :math:`\pi` through
``uniform_mix`` (`fedjax_ext.zo.sparse_zo`), works with or without the
carry but changes the sampler in every step, not only in cold ones.

References:
  Qin et al., `Federated Full-Parameter Tuning of Billion-Sized Language
  Models with Communication Cost under 18 Kilobytes
  <https://arxiv.org/abs/2312.06353>`_, ICML 2024 (FedKSeed).

  Malladi et al., `Fine-Tuning Language Models with Just Forward Passes
  <https://arxiv.org/abs/2305.17333>`_, NeurIPS 2023 (MeZO).
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext.core import Params, PRNGKey, PyTree, Updates
from fedjax_ext.zo import _estimators

UPLOADS = ('delta', 'seeds')


class SeedUpload(NamedTuple):
  """What a ``'seeds'`` client sends: enough to replay its local steps."""
  seed: jax.Array  # uint32 [2]: key data of the client's round key.
  projected_grads: jax.Array  # float32 [S, q]: delta_j of every step.
  active: jax.Array  # bool [S]: the step saw real data (else skipped).


class DeltaUpload(NamedTuple):
  """What a ``'delta'`` client sends when the server carries the sampler."""
  delta: Updates  # global - local parameters.
  sampler: _estimators.SamplerState | None  # Final; None for `mezo`.


class ZOMessage(NamedTuple):
  """What the server broadcasts when it carries the sampler state."""
  params: Params
  sampler: _estimators.SamplerState | None  # None for `mezo`.


class ZOAggregatorState(NamedTuple):
  """State of `seed_replay` / `delta_aggregator`."""
  inner: PyTree  # The inner aggregator's state.
  sampler: _estimators.SamplerState | None  # Carried; None if not carried.


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _fresh_state(optimizer, params, key, sampler=None):
  state = _estimators.reseed(optimizer.init(params), key)
  return _estimators.with_sampler_state(state, sampler)


def _initial_sampler(optimizer, params, carry_sampler):
  if not carry_sampler:
    return None
  return _estimators.sampler_state(optimizer.init(params))


def _aggregator_init(inner, optimizer, carry_sampler):
  """``init(params) -> ZOAggregatorState`` of the ZO aggregators."""

  def init_fn(params):
    return ZOAggregatorState(
        inner=inner.init(params),
        sampler=_initial_sampler(optimizer, params, carry_sampler))

  return init_fn


def _carry(samplers, weights):
  """The server's next sampler: the fenced weighted mean of the cohort's.

  Fenced like `replay_step`, so that the mean compiles to the same
  arithmetic whether the states were uploaded (delta) or replayed (seeds).
  """
  if samplers is None:
    return None
  samplers, weights = jax.lax.optimization_barrier((samplers, weights))
  return jax.lax.optimization_barrier(
      _estimators.mean_sampler_state(samplers, weights))


def zo_message(server_state: core.ServerState) -> ZOMessage:
  """The broadcast of a server carrying the sampler: params and sampler.

  Pass it as ``server_message`` to `core.federated_algorithm` together
  with a carrying `zo_local` and `seed_replay` / `delta_aggregator`.
  """
  return ZOMessage(params=server_state.params,
                   sampler=server_state.aggregator_state.sampler)


def replay_step(params: Params, opt_state: optax.OptState,
                projected_grads: jax.Array, *,
                optimizer: optax.GradientTransformationExtraArgs
                ) -> tuple[Params, optax.OptState]:
  """One optimizer step from a step's scalars [q]: no data, no forward pass.

  Optimization barriers fence the step off from the code around it, so XLA
  compiles the same arithmetic (the same fusions, the same FMA
  contractions) on the client, where the scalars come from forward passes,
  and on the server, where they come from the upload: the results agree
  bit for bit.
  """
  params, opt_state, projected_grads = jax.lax.optimization_barrier(
      (params, opt_state, projected_grads))
  updates, opt_state = optimizer.update(None, opt_state, params,
                                        projected_grads=projected_grads)
  new_params = optax.apply_updates(params, updates)
  return jax.lax.optimization_barrier((new_params, opt_state))


def zo_step(params: Params, opt_state: optax.OptState, *,
            optimizer: optax.GradientTransformationExtraArgs,
            obj_fn: Callable[[Params], jax.Array]):
  """One ZO step: the two-point evaluations, then `replay_step`.

  The probe's own estimate is unused (XLA removes it); the step itself is
  taken by `replay_step`, exactly as the server will replay it.

  Returns:
    ``(params, opt_state, projected_grads [q], loss)``.
  """
  _, probe = optimizer.update(None, opt_state, params, obj_fn=obj_fn)
  pg = _estimators.projected_grads(probe)
  loss = _estimators.zo_loss(probe)
  new_params, new_state = replay_step(params, opt_state, pg,
                                      optimizer=optimizer)
  return new_params, new_state, pg, loss


class LocalResult(NamedTuple):
  """What `zo_train_locally` returns."""
  params: Params  # The local parameters after S steps.
  projected_grads: jax.Array  # float32 [S, q]: every step's delta_j.
  active: jax.Array  # bool [S]: the step saw real data (else skipped).
  loss: jax.Array  # Example-weighted mean of the steps' (L+ + L-)/2.
  num_examples: jax.Array  # float32: real examples seen.
  sampler: _estimators.SamplerState | None  # Final; None for `mezo`.


def zo_train_locally(params: Params, batches: dict[str, jax.Array],
                     key: PRNGKey, *, loss_fn: clients.LossFn,
                     optimizer: optax.GradientTransformationExtraArgs,
                     sampler: _estimators.SamplerState | None = None,
                     unroll: int | bool = 1) -> LocalResult:
  """Runs S masked local ZO steps from a fresh, reseeded optimizer state.

  Step s evaluates ``loss_fn(p, batch_s, fold_in(key, s))`` (the same
  dropout key for both perturbed evaluations). A step without real
  examples leaves parameters and optimizer state untouched.

  Args:
    params: the starting (global) parameters.
    batches: one client's batches, leaves [S, B, ...] and 'mask' [S, B].
    key: the client's round key; it seeds the directions (seed replay).
    loss_fn: masked mean loss of one batch.
    optimizer: an optax chain holding exactly one ZO estimator.
    sampler: the starting `SamplerState` (the server's broadcast); None
      starts from ``optimizer.init``'s (a cold start).
    unroll: unroll of the local-step scan.

  Returns:
    A `LocalResult`.
  """
  state = _fresh_state(optimizer, params, key, sampler)
  num_steps = batches['mask'].shape[0]

  def step(carry, inputs):
    p, st, totals = carry
    s, batch = inputs
    step_key = jax.random.fold_in(key, s)
    obj_fn = lambda q: loss_fn(q, batch, step_key)[0]
    new_p, new_st, pg, loss = zo_step(p, st, optimizer=optimizer,
                                      obj_fn=obj_fn)
    count = jnp.sum(batch['mask'])
    active = count > 0
    p, st = _select(active, (new_p, new_st), (p, st))
    totals = totals + jnp.stack([loss * count, count])
    return (p, st, totals), (pg, active)

  init = (params, state, jnp.zeros(2, jnp.float32))
  (local, final, totals), (pgs, active) = jax.lax.scan(
      step, init, (jnp.arange(num_steps), batches), unroll=unroll)
  final_sampler = (None if sampler is None
                   else _estimators.sampler_state(final))
  return LocalResult(params=local, projected_grads=pgs, active=active,
                     loss=totals[0] / jnp.maximum(totals[1], 1.),
                     num_examples=totals[1], sampler=final_sampler)


def replay(params: Params, upload: SeedUpload, *,
           optimizer: optax.GradientTransformationExtraArgs,
           sampler: _estimators.SamplerState | None = None
           ) -> tuple[Params, _estimators.SamplerState | None]:
  """The client's local parameters (and sampler) rebuilt from its upload.

  Runs the same optimizer updates as `zo_train_locally`, feeding the
  uploaded scalars through ``projected_grads=``: no data, no forward pass.

  Args:
    params: the global parameters the client started from.
    upload: the client's `SeedUpload`.
    optimizer: the client's optimizer.
    sampler: the `SamplerState` the client started from (None: cold).

  Returns:
    ``(local_params, final_sampler)``; ``final_sampler`` is None when
    `sampler` is None.
  """
  key = jax.random.wrap_key_data(upload.seed)
  state = _fresh_state(optimizer, params, key, sampler)

  def step(carry, inputs):
    p, st = carry
    pg, active = inputs
    new_p, new_st = replay_step(p, st, pg, optimizer=optimizer)
    return _select(active, (new_p, new_st), (p, st)), None

  (local, final), _ = jax.lax.scan(step, (params, state),
                                   (upload.projected_grads, upload.active))
  if sampler is None:
    return local, None
  return local, _estimators.sampler_state(final)


def zo_local(loss_fn: clients.LossFn,
             optimizer: optax.GradientTransformationExtraArgs, *,
             upload: str = 'delta', weighting: str = 'examples',
             carry_sampler: bool = True,
             unroll: int | bool = 1) -> core.ClientUpdateFn:
  """A ZO client update for `core.federated_algorithm`.

  Args:
    loss_fn: masked mean loss of one batch (`clients.LossFn`).
    optimizer: an optax chain holding exactly one ZO estimator, e.g.
      ``optax.chain(zo.curvzo(), optax.sgd(1e-3))``.
    upload: ``'delta'`` (pseudo-gradient) or ``'seeds'`` (`SeedUpload`;
      aggregate with `seed_replay`).
    weighting: client weights, ``'examples'`` or ``'uniform'``.
    carry_sampler: the server message is a `ZOMessage` whose sampler state
      the client starts from (module docstring), and a ``'delta'`` upload
      is a `DeltaUpload`. False: the message is the parameters and every
      round starts cold.
    unroll: unroll of the local-step scan.

  Returns:
    ``client_update(message, client_state, batches, key) -> ClientOutput``.
  """
  if upload not in UPLOADS:
    raise ValueError(f'Unknown upload {upload!r}; valid choices: '
                     f'{", ".join(UPLOADS)}.')
  clients.check_weighting(weighting)

  def client_update(message, client_state, batches, key):
    if carry_sampler:
      params, sampler = message.params, message.sampler
    else:
      params, sampler = message, None
    result = zo_train_locally(params, batches, key, loss_fn=loss_fn,
                              optimizer=optimizer, sampler=sampler,
                              unroll=unroll)
    if upload == 'delta':
      update = jax.tree.map(jnp.subtract, params, result.params)
      if carry_sampler:
        update = DeltaUpload(delta=update, sampler=result.sampler)
    else:
      update = SeedUpload(seed=jax.random.key_data(key),
                          projected_grads=result.projected_grads,
                          active=result.active)
    if weighting == 'uniform':
      weight = (result.num_examples > 0).astype(jnp.float32)
    else:
      weight = result.num_examples
    metrics = {'train_loss': result.loss,
               'local_steps': jnp.sum(result.active.astype(jnp.float32))}
    return core.ClientOutput(update=update, weight=weight,
                             client_state=client_state, metrics=metrics)

  return client_update


def seed_replay(optimizer: optax.GradientTransformationExtraArgs,
                inner: core.Aggregator | None = None, *,
                carry_sampler: bool = True, execution: str = 'auto',
                chunk_size: int | None = None) -> core.Aggregator:
  """Aggregator of `SeedUpload`s: replay every client, then aggregate.

  Args:
    optimizer: the clients' optimizer (the same chain and constants).
    inner: aggregator of the replayed pseudo-gradients (default: weighted
      mean).
    carry_sampler: replay every client from the carried sampler state and
      keep the weighted mean of their final ones (`ZOAggregatorState`;
      broadcast it with `zo_message`). Must match the clients' `zo_local`.
    execution: how clients are replayed (`core.map_clients` strategy).
    chunk_size: clients per chunk for ``execution='chunked'``.

  Returns:
    An `core.Aggregator` whose ``update`` needs ``params`` (the global
    parameters the clients started from); its state is a
    `ZOAggregatorState`.
  """
  inner = inner or aggregators.weighted_mean()
  init_fn = _aggregator_init(inner, optimizer, carry_sampler)

  def update_fn(client_uploads, state, params=None, *, weights, **extra_args):
    if params is None:
      raise ValueError('seed_replay needs params (the global parameters).')

    def one(global_params, sampler, upload):
      local, final = replay(global_params, upload, optimizer=optimizer,
                            sampler=sampler)
      return jax.tree.map(jnp.subtract, global_params, local), final

    deltas, finals = core.map_clients(
        one, params, state.sampler, client_uploads, in_axes=(None, None, 0),
        strategy=execution, chunk_size=chunk_size)
    aggregate, inner_state = inner.update(deltas, state.inner, params,
                                          weights=weights, **extra_args)
    return aggregate, ZOAggregatorState(inner=inner_state,
                                        sampler=_carry(finals, weights))

  return core.Aggregator(init_fn, update_fn)


def delta_aggregator(optimizer: optax.GradientTransformationExtraArgs,
                     inner: core.Aggregator | None = None, *,
                     carry_sampler: bool = True) -> core.Aggregator:
  """Aggregator of ``'delta'`` uploads that carries the sampler state.

  With `carry_sampler`, uploads are `DeltaUpload`s: `inner` aggregates
  their deltas and the state keeps the weighted mean of their samplers
  (as `seed_replay` does from its replays). Without, uploads are plain
  deltas and this is `inner` with a `ZOAggregatorState`.

  Args:
    optimizer: the clients' optimizer (for the initial sampler state).
    inner: aggregator of the pseudo-gradients (default: weighted mean).
    carry_sampler: must match the clients' `zo_local`.

  Returns:
    An `core.Aggregator` with a `ZOAggregatorState`.
  """
  inner = inner or aggregators.weighted_mean()
  init_fn = _aggregator_init(inner, optimizer, carry_sampler)

  def update_fn(client_uploads, state, params=None, *, weights, **extra_args):
    deltas, samplers = client_uploads, None
    if carry_sampler:
      deltas, samplers = client_uploads.delta, client_uploads.sampler
    aggregate, inner_state = inner.update(deltas, state.inner, params,
                                          weights=weights, **extra_args)
    return aggregate, ZOAggregatorState(inner=inner_state,
                                        sampler=_carry(samplers, weights))

  return core.Aggregator(init_fn, update_fn)


def upload_bytes(upload: PyTree) -> int:
  """Bytes of one client's upload (no leading client axis), from shapes."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(upload))


def seed_upload_bytes(num_steps: int, num_directions: int = 1) -> int:
  """Bytes of a `SeedUpload`: 8 + S (4 q + 1)."""
  return 8 + num_steps * (4 * num_directions + 1)


def sampler_bytes(num_blocks: int) -> int:
  """Bytes of a float32 `SamplerState` of n blocks: 4 n + 12."""
  return 4 * num_blocks + 12


def zo_fed_avg(loss_fn: clients.LossFn,
               client_optimizer: optax.GradientTransformationExtraArgs,
               server_optimizer: optax.GradientTransformation, *,
               upload: str = 'delta', weighting: str = 'examples',
               carry_sampler: bool = True, unroll: int | bool = 1,
               execution: str = 'auto',
               chunk_size: int | None = None) -> core.FederatedAlgorithm:
  """FedAvg with ZO clients; reports the bytes sent each way per client.

  Args:
    loss_fn: masked mean loss of one batch.
    client_optimizer: optax chain with one ZO estimator (`zo_local`).
    server_optimizer: applied to the aggregated pseudo-gradient.
    upload: ``'delta'`` or ``'seeds'`` (`UPLOADS`).
    weighting: client weights, ``'examples'`` or ``'uniform'``.
    carry_sampler: the server carries the sparse estimator's sampler state
      across rounds and broadcasts it (module docstring); no effect on
      `mezo`, which has none. False restarts it cold every round.
    unroll: unroll of the local-step scan.
    execution: client mapping strategy (`core.map_clients`).
    chunk_size: clients per chunk for ``execution='chunked'``.

  Returns:
    A `core.FederatedAlgorithm` with metrics ``upload_bytes_per_client``
    and ``downlink_bytes_per_client``; in ``'seeds'`` mode the aggregate
    is the mean of the server-replayed deltas, identical to ``'delta'``
    mode.
  """
  client_update = zo_local(loss_fn, client_optimizer, upload=upload,
                           weighting=weighting, carry_sampler=carry_sampler,
                           unroll=unroll)
  if upload == 'seeds':
    aggregator = seed_replay(client_optimizer, carry_sampler=carry_sampler,
                             execution=execution, chunk_size=chunk_size)
  else:
    aggregator = delta_aggregator(client_optimizer,
                                  carry_sampler=carry_sampler)
  message = zo_message if carry_sampler else (lambda state: state.params)

  def extra_metrics(outputs, aggregate, state):
    del aggregate
    num_clients = outputs.weight.shape[0]
    total = upload_bytes(outputs.update)
    return {'upload_bytes_per_client': jnp.asarray(total / num_clients,
                                                   jnp.float32),
            'downlink_bytes_per_client': jnp.asarray(
                upload_bytes(message(state)), jnp.float32)}

  return core.federated_algorithm(
      client_update, aggregator, server_optimizer, server_message=message,
      extra_metrics=extra_metrics, execution=execution,
      chunk_size=chunk_size)
