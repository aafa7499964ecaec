"""Masked per-batch objectives for classification models.

Every batch carries a 'mask' column (1. for a real example, 0. for padding
added by cohort packing), so losses are masked means: padding never moves a
gradient, and a batch of padding alone has loss 0.
"""

from typing import Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_ext.core import Batch, Metrics, Params, PRNGKey


class LossFn(Protocol):

  def __call__(self, params: Params, batch: Batch,
               key: PRNGKey) -> tuple[jax.Array, Metrics]:
    """Masked mean loss of one batch and scalar metrics (e.g. accuracy)."""


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over entries where `mask` is 1; 0 when none is."""
  count = jnp.sum(mask)
  return jnp.sum(values * mask) / jnp.maximum(count, 1.)


def per_example_cross_entropy(logits: jax.Array,
                              labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of integer labels, shape [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def classification_loss(model: nn.Module) -> LossFn:
  """The masked softmax cross-entropy `LossFn` of a flax classifier.

  Args:
    model: a flax module with ``__call__(x, *, train)`` returning logits.

  Returns:
    ``loss_fn(params, batch, key) -> (loss, {'accuracy': ...})``, running
    the model in training mode with `key` as its dropout randomness.
  """

  def loss_fn(params, batch, key):
    logits = model.apply({'params': params}, batch['x'], train=True,
                         rngs={'dropout': key})
    mask = batch['mask']
    loss = masked_mean(per_example_cross_entropy(logits, batch['y']), mask)
    correct = (jnp.argmax(logits, -1) == batch['y']).astype(jnp.float32)
    return loss, {'accuracy': masked_mean(correct, mask)}

  return loss_fn


def predict_fn(model: nn.Module) -> Callable[[Params, jax.Array], jax.Array]:
  """``fn(params, x) -> logits`` in evaluation mode (no dropout)."""
  return lambda params, x: model.apply({'params': params}, x, train=False)
