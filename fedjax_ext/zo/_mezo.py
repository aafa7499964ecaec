r"""MeZO: the dense two-point ZO estimator as an optax transform.

Every estimator of `fedjax_ext.zo` is an
`optax.GradientTransformationExtraArgs` whose ``update(updates, state,
params, *, obj_fn)`` ignores the incoming ``updates``, evaluates the scalar
objective ``obj_fn(params)`` twice per direction, and returns a gradient
*estimate* shaped like ``params``; chain it with any optax transform
(``optax.chain(zo.mezo(), optax.sgd(1e-3))``, momentum,
``add_decayed_weights``...). The random key lives in the state and is split
every step. `mezo` perturbs every parameter (`_two_point` has the maths and
the seed replay through ``projected_grads=``).

References:
  Malladi et al., `Fine-Tuning Language Models with Just Forward Passes
  <https://arxiv.org/abs/2305.17333>`_, NeurIPS 2023 (MeZO).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext.core import Params, PRNGKey
from fedjax_ext.zo import _two_point


class MeZOState(NamedTuple):
  """State of `mezo`: a key and the last step's scalars."""
  key: PRNGKey  # Split every step; the step key regenerates the z_j.
  projected_grads: jax.Array  # float32 [q]: the last step's delta_j.
  loss: jax.Array  # float32: mean of (L+ + L-)/2 last step; 0 if replayed.


def mezo(*, epsilon: float = 1e-3, num_directions: int = 1,
         distribution: str = 'gaussian', sequential: bool = True,
         key: int | PRNGKey = 0) -> optax.GradientTransformationExtraArgs:
  r"""Dense two-point SPSA / MeZO gradient estimator (module docstring).

  Args:
    epsilon: perturbation size :math:`\epsilon` (MeZO: 1e-3).
    num_directions: q, directions averaged per step (MeZO: 1).
    distribution: ``'gaussian'`` (MeZO) or ``'rademacher'`` directions.
    sequential: run the 2q evaluations in a ``lax.map`` so that one forward
      pass's activations are alive at a time (inference-level memory);
      False unrolls them (may be faster for tiny models, more memory).
    key: initial PRNG key (or an int seed); split every step.

  Returns:
    A `GradientTransformationExtraArgs`; ``update(updates, state, params,
    *, obj_fn)`` returns the estimate :math:`\hat g` (``updates`` is
    ignored and may be None). ``projected_grads=`` [q] instead of
    ``obj_fn`` replays a step from its scalars.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(mezo(key=0), optax.sgd(0.1))
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> f = lambda p: jnp.sum(p['w'] ** 2)
    >>> updates, state = tx.update(None, state, params, obj_fn=f)
    >>> updates['w'].shape
    (3,)
  """
  _two_point.check_common(distribution=distribution,
                          num_directions=num_directions, epsilon=epsilon)
  _two_point.check_key(key)

  def init_fn(params: Params) -> MeZOState:
    del params
    return MeZOState(key=_two_point.as_key(key),
                     projected_grads=jnp.zeros((num_directions,),
                                               jnp.float32),
                     loss=jnp.zeros((), jnp.float32))

  def update_fn(updates, state: MeZOState, params=None, *, obj_fn=None,
                projected_grads=None, **extra_args):
    del updates, extra_args
    _two_point.check_update_args(params, obj_fn, projected_grads, 'mezo')
    next_key, step_key = jax.random.split(state.key)
    pg, loss, estimate, _ = _two_point.two_point(
        params, step_key, obj_fn=obj_fn, projected_grads=projected_grads,
        num_directions=num_directions, epsilon=epsilon,
        distribution=distribution, perturb=None, sequential=sequential)
    return estimate, MeZOState(key=next_key, projected_grads=pg, loss=loss)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
