r"""Reading and writing the ZO estimator states inside an optax chain.

A ZO optimizer is an optax chain holding one estimator (`mezo`,
`sparse_zo`, `curvzo`); these helpers find its state in the chain's state:
reseed it with a client's round key (`reseed`), read the last step's
scalars (`projected_grads`, `zo_loss`), and read or replace the learnt
block sampler of a sparse estimator (`sampler_state`, `with_sampler_state`)
that a federated server averages over its cohort (`mean_sampler_state`)
and carries across rounds.
"""

import math

import jax
import jax.numpy as jnp
import optax

from fedjax_ext.core import Params, PRNGKey
from fedjax_ext.zo._mezo import MeZOState
from fedjax_ext.zo._sparse import SamplerState
from fedjax_ext.zo._sparse import SparseZOState

_ZO_STATES = (MeZOState, SparseZOState)


def _is_zo_state(x) -> bool:
  return isinstance(x, _ZO_STATES)


def reseed(opt_state: optax.OptState, key: PRNGKey) -> optax.OptState:
  """Replaces the key of every ZO estimator state inside `opt_state`.

  The i-th estimator found (in pytree order) gets ``fold_in(key, i)``; a
  federated client reseeds a fresh ``optimizer.init(params)`` with its
  round key so every client perturbs differently.
  """
  counter = iter(range(1 << 30))

  def fn(x):
    if _is_zo_state(x):
      return x._replace(key=jax.random.fold_in(key, next(counter)))
    return x

  return jax.tree.map(fn, opt_state, is_leaf=_is_zo_state)


def zo_states(opt_state: optax.OptState) -> list[MeZOState | SparseZOState]:
  """The ZO estimator states inside `opt_state`, in pytree order."""
  return [x for x in jax.tree.leaves(opt_state, is_leaf=_is_zo_state)
          if _is_zo_state(x)]


def _single_zo_state(opt_state):
  found = zo_states(opt_state)
  if len(found) != 1:
    raise ValueError(f'Expected exactly one ZO estimator in the optimizer, '
                     f'found {len(found)}.')
  return found[0]


def projected_grads(opt_state: optax.OptState) -> jax.Array:
  """The last step's scalars [q] of the one ZO estimator in `opt_state`."""
  return _single_zo_state(opt_state).projected_grads


def zo_loss(opt_state: optax.OptState) -> jax.Array:
  """The last step's mean of (L+ + L-)/2 of the one ZO estimator."""
  return _single_zo_state(opt_state).loss


def sampler_state(opt_state: optax.OptState) -> SamplerState | None:
  """The `SamplerState` of the one ZO estimator; None for `mezo` (none)."""
  state = _single_zo_state(opt_state)
  if not isinstance(state, SparseZOState):
    return None
  return SamplerState(count=state.count, scores=state.scores,
                      feedback_scale=state.feedback_scale,
                      budget=state.budget)


def with_sampler_state(opt_state: optax.OptState,
                       sampler: SamplerState | None) -> optax.OptState:
  """`opt_state` with its one ZO estimator's sampler replaced by `sampler`.

  None leaves `opt_state` unchanged (e.g. `mezo`, which has no sampler).
  """
  if sampler is None:
    return opt_state
  _single_zo_state(opt_state)  # Exactly one estimator.

  def fn(x):
    if isinstance(x, SparseZOState):
      return x._replace(**sampler._asdict())
    if _is_zo_state(x):
      raise ValueError('A SamplerState needs a sparse_zo / curvzo estimator, '
                       f'found {type(x).__name__}.')
    return x

  return jax.tree.map(fn, opt_state, is_leaf=_is_zo_state)


def mean_sampler_state(samplers: SamplerState,
                       weights: jax.Array) -> SamplerState:
  r"""Weighted mean of stacked [C] sampler states (a server's carry).

  Scores, :math:`G` and the budget are averaged with the (non-negative)
  client weights; the step count is the largest count of a client with
  positive weight. With no positive weight, client 0's state is returned
  (in a federated round that is the broadcast state, since a client
  without data takes no step).
  """
  w = jnp.asarray(weights, jnp.float32)
  total = jnp.sum(w)
  safe = jnp.where(total > 0, w / jnp.maximum(total, 1e-30),
                   jnp.zeros_like(w).at[0].set(1.))
  mean = lambda x: jnp.tensordot(safe, x.astype(jnp.float32), axes=1)
  count = jnp.max(jnp.where(w > 0, samplers.count, samplers.count[0]))
  return SamplerState(count=count.astype(jnp.int32),
                      scores=mean(samplers.scores),
                      feedback_scale=mean(samplers.feedback_scale),
                      budget=mean(samplers.budget))


def num_blocks(params: Params) -> int:
  """n, the number of blocks (parameter leaves)."""
  return len(jax.tree.leaves(params))


def num_parameters(params: Params) -> int:
  """Total number of scalars in `params`."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
