"""Small problems and helpers shared by the ZO tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext.zo import _states


def small_problem():
  """A smooth non-quadratic objective over 4 blocks, and its params."""
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(3,)), jnp.float32),
            'v': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'c': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)

  def obj_fn(p):
    h = jnp.tanh(x @ p['w'] + p['b'])
    out = h @ p['v'] + p['c']
    return jnp.mean(jnp.square(out - 1.)) + 0.1 * jnp.sum(p['w'] ** 2)

  return params, obj_fn


def mean_estimate(tx, params, obj_fn, num_keys, state_fn=None):
  """Mean over `num_keys` independent keys of one estimate from `tx`."""
  state0 = tx.init(params)
  if state_fn is not None:
    state0 = state_fn(state0)

  def one(key):
    state = _states.reseed(state0, key)
    estimate, _ = tx.update(None, state, params, obj_fn=obj_fn)
    return estimate

  keys = jax.random.split(jax.random.key(42), num_keys)
  estimates = jax.jit(lambda k: jax.lax.map(one, k))(keys)
  return jax.tree.map(lambda e: jnp.mean(e, 0), estimates), estimates


def rel_error(estimate, truth):
  """||estimate - truth|| / ||truth||."""
  diff = optax.tree.norm(optax.tree.sub(estimate, truth))
  return float(diff / optax.tree.norm(truth))
