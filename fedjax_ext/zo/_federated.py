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
is the client's round key, so any number of steps replays. The optimizer's
state (including CurvZO's block scores) starts fresh every round from
``optimizer.init(global_params)`` reseeded with the client's key, so the
server can replay it; persistent per-client ZO state is not supported.

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
from fedjax_ext.core import Params, PRNGKey, PyTree
from fedjax_ext.zo import _estimators

UPLOADS = ('delta', 'seeds')


class SeedUpload(NamedTuple):
  """What a ``'seeds'`` client sends: enough to replay its local steps."""
  seed: jax.Array  # uint32 [2]: key data of the client's round key.
  projected_grads: jax.Array  # float32 [S, q]: delta_j of every step.
  active: jax.Array  # bool [S]: the step saw real data (else skipped).


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _fresh_state(optimizer, params, key):
  return _estimators.reseed(optimizer.init(params), key)


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


def zo_train_locally(params: Params, batches: dict[str, jax.Array],
                     key: PRNGKey, *, loss_fn: clients.LossFn,
                     optimizer: optax.GradientTransformationExtraArgs,
                     unroll: int | bool = 1):
  """Runs S masked local ZO steps; returns local params, scalars and stats.

  Step s evaluates ``loss_fn(p, batch_s, fold_in(key, s))`` (the same
  dropout key for both perturbed evaluations). A step without real
  examples leaves parameters and optimizer state untouched.

  Returns:
    ``(local_params, projected_grads [S, q], active [S], loss)`` where loss
    is the example-weighted mean of the steps' (L+ + L-)/2.
  """
  state = _fresh_state(optimizer, params, key)
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
  (local, _, totals), (pgs, active) = jax.lax.scan(
      step, init, (jnp.arange(num_steps), batches), unroll=unroll)
  return local, pgs, active, totals[0] / jnp.maximum(totals[1], 1.), totals[1]


def replay(params: Params, upload: SeedUpload, *,
           optimizer: optax.GradientTransformationExtraArgs) -> Params:
  """The client's local parameters rebuilt from its `SeedUpload`.

  Runs the same optimizer updates as `zo_train_locally`, feeding the
  uploaded scalars through ``projected_grads=``: no data, no forward pass.
  """
  key = jax.random.wrap_key_data(upload.seed)
  state = _fresh_state(optimizer, params, key)

  def step(carry, inputs):
    p, st = carry
    pg, active = inputs
    new_p, new_st = replay_step(p, st, pg, optimizer=optimizer)
    return _select(active, (new_p, new_st), (p, st)), None

  (local, _), _ = jax.lax.scan(step, (params, state),
                               (upload.projected_grads, upload.active))
  return local


def zo_local(loss_fn: clients.LossFn,
             optimizer: optax.GradientTransformationExtraArgs, *,
             upload: str = 'delta', weighting: str = 'examples',
             unroll: int | bool = 1) -> core.ClientUpdateFn:
  """A ZO client update for `core.federated_algorithm`.

  Args:
    loss_fn: masked mean loss of one batch (`clients.LossFn`).
    optimizer: an optax chain holding exactly one ZO estimator, e.g.
      ``optax.chain(zo.curvzo(), optax.sgd(1e-3))``.
    upload: ``'delta'`` (pseudo-gradient) or ``'seeds'`` (`SeedUpload`;
      aggregate with `seed_replay`).
    weighting: client weights, ``'examples'`` or ``'uniform'``.
    unroll: unroll of the local-step scan.

  Returns:
    ``client_update(params, client_state, batches, key) -> ClientOutput``.
  """
  if upload not in UPLOADS:
    raise ValueError(f'Unknown upload {upload!r}; valid choices: '
                     f'{", ".join(UPLOADS)}.')
  clients.check_weighting(weighting)

  def client_update(params, client_state, batches, key):
    local, pgs, active, loss, examples = zo_train_locally(
        params, batches, key, loss_fn=loss_fn, optimizer=optimizer,
        unroll=unroll)
    if upload == 'delta':
      update = jax.tree.map(jnp.subtract, params, local)
    else:
      update = SeedUpload(seed=jax.random.key_data(key),
                          projected_grads=pgs, active=active)
    if weighting == 'uniform':
      weight = (examples > 0).astype(jnp.float32)
    else:
      weight = examples
    metrics = {'train_loss': loss,
               'local_steps': jnp.sum(active.astype(jnp.float32))}
    return core.ClientOutput(update=update, weight=weight,
                             client_state=client_state, metrics=metrics)

  return client_update


def seed_replay(optimizer: optax.GradientTransformationExtraArgs,
                inner: core.Aggregator | None = None, *,
                execution: str = 'auto',
                chunk_size: int | None = None) -> core.Aggregator:
  """Aggregator of `SeedUpload`s: replay every client, then aggregate.

  Args:
    optimizer: the clients' optimizer (the same chain and constants).
    inner: aggregator of the replayed pseudo-gradients (default: weighted
      mean).
    execution: how clients are replayed (`core.map_clients` strategy).
    chunk_size: clients per chunk for ``execution='chunked'``.

  Returns:
    An `core.Aggregator` whose ``update`` needs ``params`` (the global
    parameters the clients started from).
  """
  inner = inner or aggregators.weighted_mean()

  def init_fn(params):
    return inner.init(params)

  def update_fn(client_uploads, state, params=None, *, weights, **extra_args):
    if params is None:
      raise ValueError('seed_replay needs params (the global parameters).')

    def delta(global_params, upload):
      local = replay(global_params, upload, optimizer=optimizer)
      return jax.tree.map(jnp.subtract, global_params, local)

    deltas = core.map_clients(delta, params, client_uploads,
                              in_axes=(None, 0), strategy=execution,
                              chunk_size=chunk_size)
    return inner.update(deltas, state, params, weights=weights, **extra_args)

  return core.Aggregator(init_fn, update_fn)


def upload_bytes(upload: PyTree) -> int:
  """Bytes of one client's upload (no leading client axis), from shapes."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(upload))


def seed_upload_bytes(num_steps: int, num_directions: int = 1) -> int:
  """Bytes of a `SeedUpload`: 8 + S (4 q + 1)."""
  return 8 + num_steps * (4 * num_directions + 1)


def zo_fed_avg(loss_fn: clients.LossFn,
               client_optimizer: optax.GradientTransformationExtraArgs,
               server_optimizer: optax.GradientTransformation, *,
               upload: str = 'delta', weighting: str = 'examples',
               unroll: int | bool = 1, execution: str = 'auto',
               chunk_size: int | None = None) -> core.FederatedAlgorithm:
  """FedAvg with ZO clients; reports ``upload_bytes_per_client``.

  Args:
    loss_fn: masked mean loss of one batch.
    client_optimizer: optax chain with one ZO estimator (`zo_local`).
    server_optimizer: applied to the aggregated pseudo-gradient.
    upload: ``'delta'`` or ``'seeds'`` (`UPLOADS`).
    weighting: client weights, ``'examples'`` or ``'uniform'``.
    unroll: unroll of the local-step scan.
    execution: client mapping strategy (`core.map_clients`).
    chunk_size: clients per chunk for ``execution='chunked'``.

  Returns:
    A `core.FederatedAlgorithm`; in ``'seeds'`` mode the aggregate is the
    mean of the server-replayed deltas, identical to ``'delta'`` mode.
  """
  client_update = zo_local(loss_fn, client_optimizer, upload=upload,
                           weighting=weighting, unroll=unroll)
  if upload == 'seeds':
    aggregator = seed_replay(client_optimizer, execution=execution,
                             chunk_size=chunk_size)
  else:
    aggregator = aggregators.weighted_mean()

  def extra_metrics(outputs, aggregate, state):
    del aggregate, state
    num_clients = outputs.weight.shape[0]
    total = upload_bytes(outputs.update)
    return {'upload_bytes_per_client': jnp.asarray(total / num_clients,
                                                   jnp.float32)}

  return core.federated_algorithm(
      client_update, aggregator, server_optimizer,
      extra_metrics=extra_metrics, execution=execution,
      chunk_size=chunk_size)
