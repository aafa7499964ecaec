r"""The two-point (SPSA) core shared by every ZO estimator, and seed replay.

Two-point SPSA (Spall 1992) as used by MeZO, with q directions
:math:`z_j` and step :math:`\epsilon`:

.. math::
  \delta_j = \frac{L(\theta + \epsilon z_j) - L(\theta - \epsilon z_j)}
                  {2\epsilon}, \qquad
  \hat g = \frac{1}{q} \sum_{j=1}^q \delta_j z_j ,

unbiased for the gradient of a Gaussian-smoothed :math:`L` (up to
:math:`O(\epsilon^2)` for smooth :math:`L`) when
:math:`\mathbb{E}[z z^\top] = I` (Gaussian or Rademacher :math:`z`).

**Seed replay.** The directions are regenerated from the step's key, never
kept: an estimator's state holds only the key and the q scalars
:math:`\delta_j` (``projected_grads``). Passing those scalars back through
``update(..., projected_grads=...)`` *instead of* ``obj_fn`` replays the
exact same update without any data, which is how a server rebuilds a
client's trajectory from (seed, scalar) uploads (`fedjax_ext.zo.replay`).
Within one compiled step XLA may still hold :math:`z` and
:math:`\theta \pm \epsilon z` as parameter-sized temporaries; nothing
parameter-sized survives the step, and the 2q evaluations run one after
the other (``sequential=True``) so their activations never coexist.

References:
  Spall, `Multivariate stochastic approximation using a simultaneous
  perturbation gradient approximation
  <https://doi.org/10.1109/9.119632>`_, IEEE TAC 1992 (SPSA).

  Malladi et al., `Fine-Tuning Language Models with Just Forward Passes
  <https://arxiv.org/abs/2305.17333>`_, NeurIPS 2023 (MeZO).
"""

import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_ext._src.checks import check_int
from fedjax_ext._src.checks import check_number
from fedjax_ext.core import Params, PRNGKey, PyTree

DISTRIBUTIONS = ('gaussian', 'rademacher')

_SAMPLERS = {'gaussian': jax.random.normal,
             'rademacher': jax.random.rademacher}

ObjFn = Callable[[Params], jax.Array]


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
  """Raises a ValueError naming `value` and the valid `choices`."""
  if value not in choices:
    raise ValueError(f'Unknown {name} {value!r}; valid choices: '
                     f'{", ".join(choices)}.')


def check_common(*, distribution: str, num_directions: int,
                 epsilon: float) -> None:
  """Validates the arguments every estimator shares."""
  check_choice(distribution, DISTRIBUTIONS, 'distribution')
  check_int('num_directions', num_directions, low=1)
  check_number('epsilon', epsilon, low=0, low_open=True)


def check_key(key) -> None:
  """Raises a TypeError unless `key` is an int seed or a PRNG key."""
  if isinstance(key, bool) or not (
      isinstance(key, numbers.Integral) or (isinstance(key, jax.Array) and (
          jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or
          key.dtype == jnp.uint32))):
    raise TypeError(f'key must be an int seed or a jax PRNG key, got '
                    f'{key!r}.')


def as_key(key: int | PRNGKey) -> PRNGKey:
  """`key`, or a new key seeded with the int `key`."""
  if isinstance(key, numbers.Integral):
    return jax.random.key(int(key))
  return key


def check_update_args(params, obj_fn, projected_grads, name):
  """An estimator's ``update`` needs params and obj_fn or projected_grads."""
  if params is None:
    raise ValueError(f'params must be provided to the {name} update function.')
  if obj_fn is None and projected_grads is None:
    raise ValueError(f'obj_fn (or projected_grads, to replay a step) must be '
                     f'provided to the {name} update function.')


def direction(key: PRNGKey, params: Params,
              distribution: str = 'gaussian') -> Params:
  """The random direction z regenerated from `key` (one per leaf)."""
  return optax.tree.random_like(key, params, _SAMPLERS[distribution])


def scale_blocks(tree: PyTree, factors: jax.Array) -> PyTree:
  """Leaf (block) i of `tree` times ``factors[i]``."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten(
      [x * factors[i].astype(x.dtype) for i, x in enumerate(leaves)])


def _block_sq_norms(tree: PyTree) -> jax.Array:
  return jnp.stack([jnp.sum(jnp.square(x.astype(jnp.float32)))
                    for x in jax.tree.leaves(tree)])


def _add_scaled(params: Params, scale: jax.Array, z: Params) -> Params:
  return jax.tree.map(lambda p, d: p + scale.astype(p.dtype) * d, params, z)


def _evaluate(obj_fn: ObjFn, params: Params, key: PRNGKey, *,
              num_directions: int, epsilon: float, distribution: str,
              perturb: jax.Array | None,
              sequential: bool) -> tuple[jax.Array, jax.Array]:
  """The 2q losses L(theta +- epsilon z_j): (plus [q], minus [q]).

  With `sequential`, one `lax.map` iteration per evaluation regenerates its
  z_j from the key, so only one forward pass's activations are alive at a
  time (XLA:CPU does not reuse the buffers of two unrolled forward passes;
  the memory test pins this). Otherwise the evaluations are unrolled.
  """

  def evaluate(i):
    j, sign = i // 2, 1 - 2 * (i % 2)
    z = direction(jax.random.fold_in(key, j), params, distribution)
    if perturb is not None:
      z = scale_blocks(z, perturb)
    value = obj_fn(_add_scaled(params, jnp.float32(epsilon) * sign, z))
    return jnp.asarray(value, jnp.float32)

  indices = jnp.arange(2 * num_directions)
  if sequential:
    values = jax.lax.map(evaluate, indices)
  else:
    values = jnp.stack([evaluate(i) for i in range(2 * num_directions)])
  values = values.reshape((num_directions, 2))
  return values[:, 0], values[:, 1]


def two_point(params: Params, key: PRNGKey, *, obj_fn: ObjFn | None,
              projected_grads: jax.Array | None, num_directions: int,
              epsilon: float, distribution: str,
              perturb: jax.Array | None, sequential: bool):
  """Scalars, the unscaled mean of delta_j z_j and block norms ||z_jb||^2.

  `perturb` (float [n] of 0/1, or None for all) masks the blocks moved by
  the perturbation. With `projected_grads` given, no objective is
  evaluated: the same directions are regenerated and combined (replay).

  Returns:
    ``(projected_grads [q], loss, mean_q(delta_j z_j), sq_norms [q, n])``;
    ``loss`` is the mean of (L+ + L-)/2, 0 when replayed.
  """
  if projected_grads is None:
    plus, minus = _evaluate(
        obj_fn, params, key, num_directions=num_directions, epsilon=epsilon,
        distribution=distribution, perturb=perturb, sequential=sequential)
    projected_grads = (plus - minus) / (2. * epsilon)
    loss = jnp.mean(0.5 * (plus + minus))
  else:
    projected_grads = jnp.asarray(projected_grads, jnp.float32).reshape(
        (num_directions,))
    loss = jnp.zeros((), jnp.float32)
  zs = [direction(jax.random.fold_in(key, j), params, distribution)
        for j in range(num_directions)]
  total = None
  for j, z in enumerate(zs):
    term = jax.tree.map(lambda x, pg=projected_grads[j]: pg.astype(x.dtype)
                        * x, z)
    total = term if total is None else jax.tree.map(jnp.add, total, term)
  if num_directions > 1:
    total = jax.tree.map(lambda x: x / num_directions, total)
  sq_norms = jnp.stack([_block_sq_norms(z) for z in zs])
  return projected_grads, loss, total, sq_norms
