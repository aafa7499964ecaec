"""Local training of ONE client, the building block of every client update.

`run_local_steps` is the one local loop: S masked steps of any step
function over a client's batches [S, B, ...]. A step whose batch holds no
real example (all padding, because this client has fewer batches than the
cohort's longest) leaves parameters and optimizer state untouched, so
padding never changes a result. `train_locally` runs it with first-order
optimizer steps; the ZO client (`zo.zo_train_locally`) with ZO steps.

Two hooks cover the classic local objectives without forking the loop:

* ``prox_mu``: FedProx's proximal term (Li et al., "Federated Optimization in
  Heterogeneous Networks", MLSys 2020, https://arxiv.org/abs/1812.06127),
  local loss + (mu / 2) ||w - w_global||^2.
* ``gradient_offset``: a constant added to every local gradient; SCAFFOLD's
  control-variate correction c - c_i (Karimireddy et al., ICML 2020,
  https://arxiv.org/abs/1910.06378).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import numbers

from fedjax_ext._src.checks import check_number
from fedjax_ext.clients._objectives import LossFn
from fedjax_ext import core
from fedjax_ext.core import (ClientOutput, Metrics, Params, PRNGKey, PyTree,
                             Updates)

class LocalStats(NamedTuple):
  """Summary of one client's local training."""
  loss: jax.Array  # float32: mean training loss over the examples seen.
  accuracy: jax.Array  # float32: mean training accuracy likewise.
  num_steps: jax.Array  # float32: steps that saw at least one real example.
  num_examples: jax.Array  # float32: real examples processed (with repeats).
  # The loss function's other metrics (e.g. ISR's 'mi_loss'), averaged over
  # the real examples seen like `loss`.
  extra: dict[str, jax.Array] = {}


# ``step_fn(params, opt_state, batch, step_key) -> (params, opt_state, loss,
# metrics, step_output)``: one local step of any kind (first-order, ZO).
StepFn = Callable[..., tuple[Params, optax.OptState, jax.Array, Metrics,
                             PyTree]]


def _select(pred: jax.Array, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class LocalRun(NamedTuple):
  """What `run_local_steps` returns."""
  params: Params  # After the S steps.
  opt_state: optax.OptState  # After the S steps.
  stats: LocalStats
  step_outputs: PyTree  # Each step's ``step_output``, stacked [S, ...].
  active: jax.Array  # bool [S]: the step saw real data (else skipped).


def check_update_args(loss_fn, optimizer) -> None:
  """TypeErrors naming `loss_fn` (not callable) or `optimizer` (not optax)."""
  if not callable(loss_fn):
    raise TypeError(f'loss_fn must be callable (params, batch, key) -> '
                    f'(loss, metrics), got {loss_fn!r}.')
  if not (callable(getattr(optimizer, 'init', None)) and
          callable(getattr(optimizer, 'update', None))):
    raise TypeError(f'optimizer must be an optax GradientTransformation '
                    f'(with init and update), got {optimizer!r}.')


def check_batches(batches, name: str = 'batches') -> tuple[int, int]:
  """(S, B) of one client's batches, else a ValueError naming the column.

  `batches` must be a dict with 'mask' [S, B] whose every column has
  leading axes [S, B]: one client's batches. A cohort's batches
  [C, S, B, ...] are mapped over clients by `core.map_clients` first.
  Shapes are static, so this runs at trace time.
  """
  if not isinstance(batches, dict) or 'mask' not in batches:
    keys = sorted(batches) if isinstance(batches, dict) else type(batches)
    raise ValueError(f"{name} must have a 'mask' column [S, B] (1 for a real "
                     f'example, 0 for padding), got {keys}.')
  mask_shape = jnp.shape(batches['mask'])
  if len(mask_shape) != 2:
    raise ValueError(
        f"{name}['mask'] must be [S, B] (one client's steps and batch), got "
        f'shape {mask_shape}' + (
            '; a cohort [C, S, B] is mapped over clients first '
            '(core.map_clients)' if len(mask_shape) == 3 else '') + '.')
  for key, column in batches.items():
    for leaf in jax.tree.leaves(column):
      shape = jnp.shape(leaf)
      if tuple(shape[:2]) != tuple(mask_shape):
        raise ValueError(f'{name}[{key!r}] must have leading axes [S, B] = '
                         f"{list(mask_shape)} like {name}['mask'], got shape "
                         f'{shape}.')
  return mask_shape


def check_prox_mu(prox_mu) -> float:
  """`prox_mu` as a finite float >= 0, else a ValueError naming it."""
  return check_number('prox_mu', prox_mu, low=0)


def run_local_steps(params: Params, opt_state: optax.OptState,
                    batches: dict[str, jax.Array], key: PRNGKey,
                    step_fn: StepFn, *,
                    unroll: int | bool | str = 'auto') -> LocalRun:
  """The one local-training loop: S masked steps of any `step_fn`.

  Step s runs ``step_fn(params, opt_state, batch_s, fold_in(key, s))``;
  a step whose batch holds no real example (padding, because this client
  has fewer batches than the cohort's longest) keeps params and optimizer
  state as they were, so padding never changes a result. Loss and
  ``metrics['accuracy']`` (0 when absent) are averaged over real examples.

  Args:
    params: the starting (global) parameters.
    opt_state: the local optimizer's starting state.
    batches: columns shaped [S, B, ...] including 'mask' [S, B].
    key: this client's key for the round.
    step_fn: one step (`StepFn`).
    unroll: `jax.lax.scan`'s unroll over steps (True unrolls all), or
      ``'auto'`` (`core.local_steps_unroll`: 1, a rolled loop). On CPU the
      step's convolutions are put in XLA:CPU's fast layout
      (`core.canonicalize_convs`), without which a rolled loop of conv
      steps runs ~10x slower than unrolled ones.

  Returns:
    A `LocalRun`.
  """
  if not callable(step_fn):
    raise TypeError(f'step_fn must be callable, got {step_fn!r}.')
  num_steps, _ = check_batches(batches)
  if unroll == 'auto':
    unroll = core.local_steps_unroll(params)
  run_step = step_fn
  if jax.default_backend() == 'cpu':
    run_step = core.canonicalize_convs(step_fn)

  def step(carry, inputs):
    p, st, totals, extra = carry
    s, batch = inputs
    new_p, new_st, loss, metrics, out = run_step(p, st, batch,
                                                 jax.random.fold_in(key, s))
    count = jnp.sum(batch['mask'])
    active = count > 0
    p, st = _select(active, (new_p, new_st), (p, st))
    accuracy = metrics.get('accuracy', jnp.zeros(()))
    totals = totals + jnp.stack([loss * count, accuracy * count,
                                 active.astype(jnp.float32), count])
    extra = {k: extra[k] + metrics[k] * count for k in extra}
    return (p, st, totals, extra), (out, active)

  extra_names = _extra_metric_names(step_fn, params, opt_state, batches, key)
  init = (params, opt_state, jnp.zeros(4, jnp.float32),
          {k: jnp.zeros((), jnp.float32) for k in extra_names})
  (local, final_state, totals, extra), (outs, active) = jax.lax.scan(
      step, init, (jnp.arange(num_steps), batches), unroll=unroll)
  seen = jnp.maximum(totals[3], 1.)
  stats = LocalStats(loss=totals[0] / seen, accuracy=totals[1] / seen,
                     num_steps=totals[2], num_examples=totals[3],
                     extra={k: v / seen for k, v in extra.items()})
  return LocalRun(local, final_state, stats, outs, active)


def _extra_metric_names(step_fn, params, opt_state, batches, key):
  """Scalar metrics of `step_fn` beyond 'accuracy' (from shapes only)."""
  batch = jax.tree.map(lambda v: v[0], batches)
  _, _, _, metrics, _ = jax.eval_shape(step_fn, params, opt_state, batch,
                                       key)
  return sorted(k for k, v in metrics.items()
                if k != 'accuracy' and not v.shape)


def train_locally(params: Params, batches: dict[str, jax.Array],
                  key: PRNGKey, *, loss_fn: LossFn,
                  optimizer: optax.GradientTransformation,
                  prox_mu: float = 0.,
                  gradient_offset: Updates | None = None,
                  unroll: int | bool | str = 'auto') -> tuple[Params, LocalStats]:
  """Runs masked first-order local steps from `params` (`run_local_steps`).

  Args:
    params: the starting (global) parameters.
    batches: columns shaped [S, B, ...] including 'mask' [S, B].
    key: this client's key for the round; step s uses ``fold_in(key, s)``.
    loss_fn: masked mean loss of one batch (`LossFn`).
    optimizer: the client optimizer; its state starts fresh each round.
    prox_mu: FedProx coefficient mu >= 0 of (mu/2)||w - params||^2.
    gradient_offset: optional constant added to each step's gradient.
    unroll: see `run_local_steps`.

  Returns:
    The local parameters after training and their `LocalStats`.
  """
  check_update_args(loss_fn, optimizer)
  if isinstance(prox_mu, numbers.Real):  # A traced mu is not checked.
    check_prox_mu(prox_mu)

  def objective(p, batch, step_key):
    loss, metrics = loss_fn(p, batch, step_key)
    if prox_mu:
      diff = jax.tree.map(jnp.subtract, p, params)
      loss_with_prox = loss + 0.5 * prox_mu * optax.tree.norm(
          diff, squared=True)
      return loss_with_prox, (loss, metrics)
    return loss, (loss, metrics)

  grad_fn = jax.grad(objective, has_aux=True)

  def sgd_step(p, opt_state, batch, step_key):
    grads, (loss, metrics) = grad_fn(p, batch, step_key)
    if gradient_offset is not None:
      grads = jax.tree.map(jnp.add, grads, gradient_offset)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss, metrics, ()

  run = run_local_steps(params, optimizer.init(params), batches, key,
                        sgd_step, unroll=unroll)
  return run.params, run.stats


def stats_metrics(stats: LocalStats) -> dict[str, jax.Array]:
  """The `ClientOutput.metrics` every local-training client reports.

  ``train_loss``, ``train_accuracy``, ``local_steps`` and the loss
  function's other metrics as ``train_<name>`` (e.g. ``train_mi_loss``).
  """
  metrics = {'train_loss': stats.loss, 'train_accuracy': stats.accuracy,
             'local_steps': stats.num_steps}
  metrics.update({f'train_{k}': v for k, v in stats.extra.items()})
  return metrics


def local_sgd(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
              prox_mu: float = 0., unroll: int | bool | str = 'auto'):
  """The FedAvg / FedProx client update: local training, stateless.

  Args:
    loss_fn: masked mean loss of one batch.
    optimizer: client optimizer (e.g. ``optax.sgd(client_lr)``).
    prox_mu: FedProx's mu; 0 gives FedAvg's plain local SGD.
    unroll: see `run_local_steps`.

  Returns:
    A `core.ClientUpdateFn` whose ``update`` is the pseudo-gradient
    ``params - local_params`` and whose ``weight`` is the real examples it
    processed (the round's weighting stage sets the aggregation weight).
  """
  check_update_args(loss_fn, optimizer)
  check_prox_mu(prox_mu)

  def client_update(params, client_state, batches, key, info=None):
    del info
    local, stats = train_locally(params, batches, key, loss_fn=loss_fn,
                                 optimizer=optimizer, prox_mu=prox_mu,
                                 unroll=unroll)
    return ClientOutput(
        update=jax.tree.map(jnp.subtract, params, local),
        weight=stats.num_examples,
        client_state=client_state,
        metrics=stats_metrics(stats))

  return client_update
