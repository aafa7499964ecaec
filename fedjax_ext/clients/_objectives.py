r"""Masked per-batch objectives for classification models.

Every batch carries a 'mask' column (1. for a real example, 0. for padding
added by cohort packing), so losses are masked means: padding never moves a
gradient, and a batch of padding alone has loss 0.

Sequence targets (next-token prediction: 'y' int [B, T], logits
[B, T, V]) are classified per token. Token t of example b counts with weight

.. math::

  w_{bt} = m_b \, [y_{bt} \ne \mathrm{pad}],

(`m` the batch mask, `pad` the padding id, 0 in the FedJAX / TFF text
datasets), and the loss is the token-weighted mean
:math:`\sum_{bt} w_{bt}\,\ell_{bt} / \max(1, \sum_{bt} w_{bt})`, as
FedJAX's ``SequenceTokenCrossEntropyLoss`` with ``masked_target_values=(0,)``;
accuracy likewise counts the non-padding tokens of real examples only
(FedJAX's ``SequenceTokenAccuracy``; its variants that also drop EOS or OOV
are not computed here).
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
  """Mean of `values` over entries where `mask` is 1; 0 when none is.

  `mask` must broadcast to `values`' shape (checked at trace time).
  """
  values_shape, mask_shape = jnp.shape(values), jnp.shape(mask)
  try:
    shape = jnp.broadcast_shapes(values_shape, mask_shape)
  except ValueError:
    shape = None
  if shape != tuple(values_shape):
    raise ValueError(f'mask must have the shape of values (or broadcast to '
                     f'it): mask {mask_shape}, values {values_shape}.')
  count = jnp.sum(mask)
  return jnp.sum(values * mask) / jnp.maximum(count, 1.)


def per_example_cross_entropy(logits: jax.Array,
                              labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of integer labels, shaped like `labels`.

  [B] for logits [B, V]; [B, T] (per token) for logits [B, T, V].
  """
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def label_weights(labels: jax.Array, mask: jax.Array,
                  pad_id: int | None = 0) -> jax.Array:
  """Weight of each label: `mask` [B], times ``labels != pad_id`` per token.

  Args:
    labels: int [B] (one class per example) or [B, T] (one per token).
    mask: [B], 1. for real examples and 0. for padded ones.
    pad_id: the padding token of sequence labels; None counts every token.
      Ignored for [B] labels (class `pad_id` is then an ordinary class).

  Returns:
    float32 weights shaped like `labels`.
  """
  mask = mask.astype(jnp.float32)
  if labels.ndim == mask.ndim:
    return mask
  mask = mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
  if pad_id is None:
    return jnp.broadcast_to(mask, labels.shape)
  return mask * (labels != pad_id).astype(jnp.float32)


def classification_loss(model: nn.Module, *,
                        pad_id: int | None = 0) -> LossFn:
  """The masked softmax cross-entropy `LossFn` of a flax classifier.

  Labels are one class per example (``y`` [B], logits [B, V]) or one per
  token (``y`` [B, T], logits [B, T, V]); for the latter the loss and
  accuracy are means over the tokens that are not `pad_id` in real
  examples (module docstring).

  Args:
    model: a flax module with ``__call__(x, *, train)`` returning logits.
    pad_id: padding id of sequence labels (0 for the text datasets);
      None to count every token.

  Returns:
    ``loss_fn(params, batch, key) -> (loss, {'accuracy': ...})``, running
    the model in training mode with `key` as its dropout randomness.
  """

  def loss_fn(params, batch, key):
    logits = model.apply({'params': params}, batch['x'], train=True,
                         rngs={'dropout': key})
    weights = label_weights(batch['y'], batch['mask'], pad_id)
    loss = masked_mean(per_example_cross_entropy(logits, batch['y']),
                       weights)
    correct = (jnp.argmax(logits, -1) == batch['y']).astype(jnp.float32)
    return loss, {'accuracy': masked_mean(correct, weights)}

  return loss_fn


def predict_fn(model: nn.Module) -> Callable[[Params, jax.Array], jax.Array]:
  """``fn(params, x) -> logits`` in evaluation mode (no dropout)."""
  return lambda params, x: model.apply({'params': params}, x, train=False)
