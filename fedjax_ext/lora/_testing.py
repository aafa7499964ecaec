"""A tiny flax model and data for the LoRA tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import core


class TinyMLP(nn.Module):
  """x [B, 6] -> Dense(5) -> tanh -> Dense(4) -> Dense(3)."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(5, name='layer_0')(x))
    x = jnp.tanh(nn.Dense(4, name='layer_1')(x))
    return nn.Dense(3, name='head')(x)


MODEL = TinyMLP()


def base_params(seed=0):
  return MODEL.init(jax.random.key(seed), jnp.zeros((1, 6)))


def loss_fn(params, batch, key):
  """Masked mean squared error to a 3-d target."""
  del key
  pred = MODEL.apply(params, batch['x'])
  err = jnp.sum(jnp.square(pred - batch['y']), axis=-1) * batch['mask']
  loss = jnp.sum(err) / jnp.maximum(jnp.sum(batch['mask']), 1.)
  return loss, {'accuracy': jnp.zeros(())}


def cohort(num_clients=3, num_steps=2, batch_size=4, seed=0, ranks=None):
  """Non-IID regression data [C, S, B, 6] -> [C, S, B, 3]."""
  rng = np.random.default_rng(seed)
  shape = (num_clients, num_steps, batch_size)
  x = rng.normal(size=shape + (6,)).astype(np.float32)
  shift = rng.normal(size=(num_clients, 1, 1, 3)).astype(np.float32)
  y = (np.tanh(x[..., :3]) + shift).astype(np.float32)
  mask = np.ones(shape, np.float32)
  info = {} if ranks is None else {'rank': np.asarray(ranks, np.int32)}
  return core.Cohort(np.arange(num_clients, dtype=np.int32),
                     {'x': x, 'y': y, 'mask': mask},
                     mask.sum(axis=(1, 2)), info)
