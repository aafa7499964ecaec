r"""Federated zeroth-order training: ZO client updates and seed replay.

A client runs S local ZO steps (any optax chain holding one ZO estimator
from `fedjax_ext.zo`) from the global parameters, through the shared local
loop `clients.run_local_steps`, and uploads either

* ``'delta'``: the pseudo-gradient ``global - local`` (4 bytes per float32
  parameter) as its ``update``, aggregated like FedAvg by any aggregator
  (robust ones too); or
* ``'seeds'``: a `SeedUpload` as its ``update`` — its round seed, the q
  scalars :math:`\delta_{s,j}` of each step and a one-byte "step was
  taken" flag, i.e. :math:`8 + S(4q + 1)` bytes whatever the model size.
  The round's output-transform stage (`seed_replay_outputs`, passed as
  ``transform_outputs``) rebuilds each client's local trajectory exactly
  (bit for bit) by replaying the optimizer with ``projected_grads=``
  instead of the objective (`replay`), and turns every upload into its
  pseudo-gradient; the aggregator then combines them as in ``'delta'`` mode.

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
keeps it in ``ServerState.algorithm_state`` (initialised by `init_sampler`)
and broadcasts it next to the parameters (`zo_message`, a `ZOMessage`):
4 n + 12 bytes of downlink per client for n blocks. Each client's final
sampler state reaches the server as its ``ClientOutput.aux``: in
``'delta'`` mode the client uploads it (4 n + 12 bytes more), in
``'seeds'`` mode `seed_replay_outputs` gets it from its own exact replay
(nothing more is uploaded). The server update (`sampler_server_update`)
sets the next sampler to the weighted mean of the cohort's
(`mean_sampler_state`). Replay stays bit-exact because client and server
start from the same broadcast state.

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
from fedjax_ext._src.checks import check_int
from fedjax_ext.core import Params, PRNGKey, PyTree
from fedjax_ext.zo import _states
from fedjax_ext.zo._sparse import SamplerState

UPLOADS = ('delta', 'seeds')
# The round metric of the bytes one client uploads (as sent).
UPLOAD_METRIC = 'upload_bytes_per_client'


class SeedUpload(NamedTuple):
  """What a ``'seeds'`` client sends: enough to replay its local steps."""
  seed: jax.Array  # uint32 [2]: key data of the client's round key.
  projected_grads: jax.Array  # float32 [S, q]: delta_j of every step.
  active: jax.Array  # bool [S]: the step saw real data (else skipped).


class ZOMessage(NamedTuple):
  """What the server broadcasts when it carries the sampler state."""
  params: Params
  sampler: SamplerState | None  # None for `mezo`.


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _as_sampler(x: PyTree) -> SamplerState | None:
  """A carried sampler (``algorithm_state``, ``aux``), or None for ``()``."""
  return x if isinstance(x, SamplerState) else None


def _fresh_state(optimizer, params, key, sampler=None):
  state = _states.reseed(optimizer.init(params), key)
  return _states.with_sampler_state(state, sampler)


def _check_upload(upload: str) -> None:
  if upload not in UPLOADS:
    raise ValueError(f'Unknown upload {upload!r}; valid choices: '
                     f'{", ".join(UPLOADS)}.')


def init_sampler(optimizer: optax.GradientTransformationExtraArgs, *,
                 carry_sampler: bool = True
                ) -> Callable[[Params], SamplerState | tuple[()]]:
  """``init_algorithm_state`` of a server that carries the sampler.

  Args:
    optimizer: the clients' optimizer (one ZO estimator).
    carry_sampler: False gives ``()`` (nothing carried).

  Returns:
    ``init(params)``: the estimator's initial `SamplerState`, or ``()``
    when nothing is carried (`mezo` has no sampler).
  """

  def init_fn(params):
    if not carry_sampler:
      return ()
    sampler = _states.sampler_state(optimizer.init(params))
    return () if sampler is None else sampler

  return init_fn


def zo_message(server_state: core.ServerState) -> ZOMessage:
  """The broadcast of a server carrying the sampler: params and sampler.

  Reads the sampler from ``server_state.algorithm_state`` (`init_sampler`,
  `sampler_server_update`); pass it as ``server_message`` to
  `core.federated_algorithm` together with a carrying `zo_local`.
  """
  return ZOMessage(params=server_state.params,
                   sampler=_as_sampler(server_state.algorithm_state))


def _carry(samplers: SamplerState, weights: jax.Array) -> SamplerState:
  """The server's next sampler: the fenced weighted mean of the cohort's.

  Fenced like `replay_step`, so that the mean compiles to the same
  arithmetic whether the states were uploaded (delta) or replayed (seeds).
  """
  samplers, weights = jax.lax.optimization_barrier((samplers, weights))
  return jax.lax.optimization_barrier(
      _states.mean_sampler_state(samplers, weights))


def sampler_server_update(server: core.ServerUpdate
                          | optax.GradientTransformation
                         ) -> core.ServerUpdate:
  """`server`, then ``algorithm_state`` <- mean of the clients' samplers.

  The clients' final `SamplerState`s arrive as ``outputs.aux`` (uploaded in
  ``'delta'`` mode, replayed by `seed_replay_outputs` in ``'seeds'``
  mode); the new sampler is their weighted mean (`mean_sampler_state`)
  with the round's aggregation weights. A state that carries nothing
  (``()``) stays as it is.

  Args:
    server: a `core.ServerUpdate` or an optax optimizer on the aggregate.

  Returns:
    A `core.ServerUpdate` (`core.with_algorithm_state`).
  """

  def update_sampler(sampler, outputs):
    if _as_sampler(sampler) is None or _as_sampler(outputs.aux) is None:
      return sampler
    return _carry(outputs.aux, outputs.weight)

  return core.with_algorithm_state(core.as_server_update(server),
                                   update_sampler)


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
  pg = _states.projected_grads(probe)
  loss = _states.zo_loss(probe)
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
  sampler: SamplerState | None  # Final; None for `mezo` or a cold start.


def zo_train_locally(params: Params, batches: dict[str, jax.Array],
                     key: PRNGKey, *, loss_fn: clients.LossFn,
                     optimizer: optax.GradientTransformationExtraArgs,
                     sampler: SamplerState | None = None,
                     unroll: int | bool | str = 'auto') -> LocalResult:
  """S masked local ZO steps from a fresh, reseeded optimizer state.

  The shared loop `clients.run_local_steps` with `zo_step` as the step:
  step s evaluates ``loss_fn(p, batch_s, fold_in(key, s))`` (the same
  dropout key for both perturbed evaluations), and a step without real
  examples leaves parameters and optimizer state untouched. Each step's
  output is its scalars [q], which a ``'seeds'`` client uploads.

  Args:
    params: the starting (global) parameters.
    batches: one client's batches, leaves [S, B, ...] and 'mask' [S, B].
    key: the client's round key; it seeds the directions (seed replay).
    loss_fn: masked mean loss of one batch.
    optimizer: an optax chain holding exactly one ZO estimator.
    sampler: the starting `SamplerState` (the server's broadcast); None
      starts from ``optimizer.init``'s (a cold start).
    unroll: see `clients.run_local_steps`.

  Returns:
    A `LocalResult`.
  """

  def step_fn(p, opt_state, batch, step_key):
    obj_fn = lambda q: loss_fn(q, batch, step_key)[0]
    new_p, new_state, pg, loss = zo_step(p, opt_state, optimizer=optimizer,
                                         obj_fn=obj_fn)
    return new_p, new_state, loss, {}, pg

  run = clients.run_local_steps(
      params, _fresh_state(optimizer, params, key, sampler), batches, key,
      step_fn, unroll=unroll)
  final_sampler = (None if sampler is None
                   else _states.sampler_state(run.opt_state))
  return LocalResult(params=run.params, projected_grads=run.step_outputs,
                     active=run.active, loss=run.stats.loss,
                     num_examples=run.stats.num_examples,
                     sampler=final_sampler)


def replay(params: Params, upload: SeedUpload, *,
           optimizer: optax.GradientTransformationExtraArgs,
           sampler: SamplerState | None = None
           ) -> tuple[Params, SamplerState | None]:
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
  return local, _states.sampler_state(final)


def zo_local(loss_fn: clients.LossFn,
             optimizer: optax.GradientTransformationExtraArgs, *,
             upload: str = 'delta', carry_sampler: bool = True,
             unroll: int | bool | str = 'auto') -> core.ClientUpdateFn:
  """A ZO client update for `core.federated_algorithm`.

  Its ``weight`` is the real examples it processed; the round's weighting
  stage (`core.weigh_clients`) sets the aggregation weight.

  Args:
    loss_fn: masked mean loss of one batch (`clients.LossFn`).
    optimizer: an optax chain holding exactly one ZO estimator, e.g.
      ``optax.chain(zo.curvzo(), optax.sgd(1e-3))``.
    upload: ``'delta'``: the ``update`` is the pseudo-gradient; with
      `carry_sampler`, ``aux`` is the final `SamplerState`. ``'seeds'``: the
      ``update`` is a `SeedUpload` (turn it into a pseudo-gradient with
      `seed_replay_outputs`) and ``aux`` is ``()``.
    carry_sampler: the server message is a `ZOMessage` whose sampler state
      the client starts from (module docstring). False: the message is the
      parameters and every round starts cold.
    unroll: see `clients.run_local_steps` (``execution.unroll``).

  Returns:
    ``client_update(message, client_state, batches, key, info) ->
    ClientOutput``.
  """
  _check_upload(upload)
  clients.check_update_args(loss_fn, optimizer)

  def client_update(message, client_state, batches, key, info=None):
    del info
    if carry_sampler:
      params, sampler = message.params, message.sampler
    else:
      params, sampler = message, None
    result = zo_train_locally(params, batches, key, loss_fn=loss_fn,
                              optimizer=optimizer, sampler=sampler,
                              unroll=unroll)
    aux = ()
    if upload == 'delta':
      update = jax.tree.map(jnp.subtract, params, result.params)
      if result.sampler is not None:
        aux = result.sampler
    else:
      update = SeedUpload(seed=jax.random.key_data(key),
                          projected_grads=result.projected_grads,
                          active=result.active)
    metrics = {'train_loss': result.loss,
               'local_steps': jnp.sum(result.active.astype(jnp.float32))}
    return core.ClientOutput(update=update, weight=result.num_examples,
                             client_state=client_state, metrics=metrics,
                             aux=aux)

  return client_update


def seed_replay_outputs(optimizer: optax.GradientTransformationExtraArgs,
                        *, carry_sampler: bool = True,
                        execution: core.Execution | str | None = None
                       ) -> core.TransformOutputsFn:
  """The output-transform stage that replays every `SeedUpload`.

  Each client is rebuilt with `replay` from the global parameters
  (``state.params``) and, with `carry_sampler`, the broadcast sampler
  (``state.algorithm_state``): its ``update`` becomes the pseudo-gradient
  ``global - local`` and its ``aux`` the final `SamplerState` (``()``
  when nothing is carried), exactly what a ``'delta'`` client would have
  uploaded. Any aggregator then combines the updates.

  Before the upload is replaced, its size goes into the clients' metrics:
  ``metrics['upload_bytes_per_client']`` is a [C] column holding the bytes
  of one client's `SeedUpload` (+ ``aux``) as sent, so the round's
  weighted mean of the metrics (`core.round_metrics`) reports it. That
  mean is exact only up to float32 rounding of the normalised weights, and
  is 0 when every weight is 0; `zo_fed_avg` reports the column's value
  itself instead.

  Args:
    optimizer: the clients' optimizer (the same chain and constants).
    carry_sampler: must match the clients' `zo_local`.
    execution: how the clients are replayed (`core.map_clients`).

  Returns:
    ``transform(outputs, state, cohort, key) -> outputs`` for
    ``transform_outputs`` of `core.federated_algorithm`.
  """
  execution = core.as_execution(execution)

  def transform(outputs, state, cohort, key):
    del cohort, key
    if not isinstance(outputs.update, SeedUpload):
      raise TypeError('seed_replay_outputs needs SeedUpload updates (zo_local '
                      f"upload='seeds'), got {type(outputs.update).__name__}.")
    sampler = _as_sampler(state.algorithm_state) if carry_sampler else None

    def one(global_params, start, upload):
      local, final = replay(global_params, upload, optimizer=optimizer,
                            sampler=start)
      return jax.tree.map(jnp.subtract, global_params, local), final

    deltas, finals = core.map_clients(
        one, state.params, sampler, outputs.update, in_axes=(None, None, 0),
        execution=execution)
    return outputs._replace(update=deltas,
                            aux=() if finals is None else finals,
                            metrics=_with_sent_bytes(outputs))

  return transform


def _with_sent_bytes(outputs: core.ClientOutput) -> dict[str, jax.Array]:
  """The clients' metrics plus ``upload_bytes_per_client`` as sent, [C].

  Every client sends the same shapes, so the column is one constant (from
  the static shapes of the stacked ``update`` + ``aux``).
  """
  num_clients = jnp.shape(outputs.weight)[0]
  sent = upload_bytes((outputs.update, outputs.aux)) / num_clients
  return {**outputs.metrics,
          UPLOAD_METRIC: jnp.full((num_clients,), sent, jnp.float32)}


def upload_bytes(upload: PyTree) -> int:
  """Bytes of one client's upload (no leading client axis), from shapes."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(upload))


def seed_upload_bytes(num_steps: int, num_directions: int = 1) -> int:
  """Bytes of a `SeedUpload`: 8 + S (4 q + 1)."""
  check_int('num_steps', num_steps, low=0)
  check_int('num_directions', num_directions, low=1)
  return 8 + num_steps * (4 * num_directions + 1)


def sampler_bytes(num_blocks: int) -> int:
  """Bytes of a float32 `SamplerState` of n blocks: 4 n + 12."""
  check_int('num_blocks', num_blocks, low=1)
  return 4 * num_blocks + 12


def zo_fed_avg(loss_fn: clients.LossFn,
               client_optimizer: optax.GradientTransformationExtraArgs,
               server_optimizer: optax.GradientTransformation
               | core.ServerUpdate, *,
               upload: str = 'delta', carry_sampler: bool = True,
               aggregator: core.Aggregator | None = None,
               weighting: str = 'num_examples',
               transform_outputs: core.TransformOutputsFn | None = None,
               extra_metrics: core.ExtraMetricsFn | None = None,
               execution: core.Execution | str | None = None
               ) -> core.FederatedAlgorithm:
  """FedAvg with ZO clients; reports the bytes sent each way per client.

  The round: `zo_local` clients; in ``'seeds'`` mode `seed_replay_outputs`
  then `transform_outputs`, else `transform_outputs` alone; the aggregator
  on the pseudo-gradients; `sampler_server_update` (the server optimizer,
  then the carried sampler in ``algorithm_state``).

  Args:
    loss_fn: masked mean loss of one batch.
    client_optimizer: optax chain with one ZO estimator (`zo_local`).
    server_optimizer: applied to the aggregated pseudo-gradient (or any
      `core.ServerUpdate`).
    upload: ``'delta'`` or ``'seeds'`` (`UPLOADS`).
    carry_sampler: the server carries the sparse estimator's sampler state
      across rounds in ``algorithm_state`` and broadcasts it (module
      docstring); no effect on `mezo`, which has none. False restarts it
      cold every round.
    aggregator: combines the pseudo-gradients (default
      `aggregators.weighted_mean`; robust ones work in both modes).
    weighting: client weights (`core.weigh_clients`): ``'num_examples'``,
      ``'examples_processed'`` or ``'uniform'``; they also weigh the
      carried sampler mean.
    transform_outputs: optional hook on the stacked outputs before
      aggregation (an attack); in ``'seeds'`` mode it runs after the
      replay, on pseudo-gradients.
    extra_metrics: optional round-metrics hook, merged with the bytes.
    execution: the run's `core.Execution` policy (client mapping, server
      replay, unroll of the local steps).

  Returns:
    A `core.FederatedAlgorithm` with metrics ``upload_bytes_per_client``
    (the client's ``update`` + ``aux`` as sent, before any transform) and
    ``downlink_bytes_per_client`` (the message); in ``'seeds'`` mode the
    aggregate is that of the server-replayed deltas, identical to
    ``'delta'`` mode. Nothing is recorded outside the round's values: in
    ``'delta'`` mode the bytes come from the outputs' shapes
    (`core.communication_metrics`); in ``'seeds'`` mode the replay stage
    wrote them into the clients' metrics before replacing the uploads
    (`seed_replay_outputs`), and the round reports that constant column's
    value exactly (not its weighted mean, which rounds in float32 and is 0
    when every weight is 0).
  """
  _check_upload(upload)
  execution = core.as_execution(execution)
  client_update = zo_local(loss_fn, client_optimizer, upload=upload,
                           carry_sampler=carry_sampler,
                           unroll=execution.unroll)
  stages = []
  if upload == 'seeds':
    stages.append(seed_replay_outputs(
        client_optimizer, carry_sampler=carry_sampler, execution=execution))
  if transform_outputs is not None:
    stages.append(transform_outputs)

  def transform(outputs, state, cohort, key):
    for stage in stages:  # The replay draws nothing: the user's gets `key`.
      outputs = stage(outputs, state, cohort, key)
    return outputs

  message = zo_message if carry_sampler else (lambda state: state.params)

  def metrics_fn(outputs, aggregate, state):
    # Delta mode: the outputs still have the shapes the clients sent.
    metrics = core.communication_metrics(outputs, message(state))
    if upload == 'seeds':
      # The replay replaced the uploads by deltas but put the bytes sent
      # in a constant [C] column: its value exactly, whatever the weights
      # (their weighted mean rounds, and is 0 when all weights are 0).
      metrics[UPLOAD_METRIC] = jnp.max(outputs.metrics[UPLOAD_METRIC])
    if extra_metrics is not None:
      metrics.update(extra_metrics(outputs, aggregate, state))
    return metrics

  return core.federated_algorithm(
      client_update, aggregator or aggregators.weighted_mean(),
      sampler_server_update(server_optimizer), weighting=weighting,
      init_algorithm_state=init_sampler(client_optimizer,
                                        carry_sampler=carry_sampler),
      server_message=message,
      transform_outputs=transform if stages else None,
      extra_metrics=metrics_fn, execution=execution)
