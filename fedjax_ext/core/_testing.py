"""Tiny hand-checkable problems shared by the core and algorithm tests."""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext.core._structures import Cohort


def linear_loss(params, batch, key):
  """Masked mean squared error of a linear model y ~ x @ w + b."""
  del key
  pred = batch['x'] @ params['w'] + params['b']
  err = jnp.square(pred - batch['y']) * batch['mask']
  loss = jnp.sum(err) / jnp.maximum(jnp.sum(batch['mask']), 1.)
  return loss, {'accuracy': jnp.zeros(())}


def sgd_steps(params, batches, lr):
  """Plain SGD on `linear_loss`, one step per [B] batch of [S, B, ...]."""
  grad = jax.grad(lambda p, b: linear_loss(p, b, None)[0])
  for s in range(batches['x'].shape[0]):
    batch = jax.tree.map(lambda v, s=s: v[s], batches)
    params = jax.tree.map(lambda p, g: p - lr * g, params, grad(params, batch))
  return params


def linear_params(dim=3):
  return {'w': jnp.zeros((dim,), jnp.float32), 'b': jnp.zeros((), jnp.float32)}


def random_cohort(num_clients, num_steps, batch_size, dim=3, seed=0,
                  masks=None) -> Cohort:
  """Random regression data [C, S, B, dim] with an optional mask."""
  rng = np.random.default_rng(seed)
  shape = (num_clients, num_steps, batch_size)
  x = rng.normal(size=shape + (dim,)).astype(np.float32)
  y = (x @ np.arange(1, dim + 1, dtype=np.float32) + 0.5
       + 0.1 * rng.normal(size=shape)).astype(np.float32)
  mask = np.ones(shape, np.float32) if masks is None else masks
  return Cohort(client_ids=np.arange(num_clients, dtype=np.int32),
                batches={'x': x, 'y': y, 'mask': mask},
                num_examples=mask.sum(axis=(1, 2)))
