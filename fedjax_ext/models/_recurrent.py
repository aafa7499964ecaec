"""Recurrent next-token models of Reddi et al. (2021): Shakespeare, StackOverflow.

Both map int token ids [B, T] to logits [B, T, num_classes] over the same
vocabulary (``num_classes`` is the vocabulary size, special ids included),
so `clients.classification_loss` scores them per token. The LSTMs are
causal, so trailing padding never changes the logits of the tokens before it
(what Keras' ``mask_zero=True`` achieves in the TFF originals).

* `CharLSTM` (Shakespeare next character): embedding 8, two LSTM layers of
  256, a dense layer to the vocabulary (90 ids for the FedJAX / TFF
  Shakespeare table: 86 characters, PAD, BOS, EOS, OOV). As TFF's
  ``shakespeare_models.create_recurrent_model`` and Table 7 of Reddi et al.
* `WordLSTM` (Stack Overflow next word): embedding 96, one LSTM of 670, a
  dense projection to 96, a dense layer to the vocabulary (10,004 ids:
  10,000 words, PAD, BOS, EOS, OOV). As TFF's
  ``stackoverflow_models.create_recurrent_model`` and Reddi et al.

References:
  Reddi et al., `Adaptive Federated Optimization
  <https://arxiv.org/abs/2003.00295>`_, ICLR 2021 (Appendix C).

  McMahan et al., `Communication-Efficient Learning of Deep Networks from
  Decentralized Data <https://arxiv.org/abs/1602.05629>`_, AISTATS 2017 (the
  Shakespeare character LSTM).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _lstm_stack(h: jax.Array, sizes: Sequence[int]) -> jax.Array:
  for i, size in enumerate(sizes):
    h = nn.RNN(nn.OptimizedLSTMCell(size, name=f'lstm_{i}'))(h)
  return h


class CharLSTM(nn.Module):
  """Character LSTM: embedding, stacked LSTMs, logits per position.

  Attributes:
    num_classes: the vocabulary size (inputs and outputs).
    embed_size: the character embedding width.
    lstm_sizes: the width of each LSTM layer, bottom to top.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = CharLSTM(num_classes=90)
    >>> x = jnp.zeros((2, 80), jnp.int32)
    >>> params = model.init(jax.random.key(0), x)
    >>> model.apply(params, x).shape
    (2, 80, 90)
  """
  num_classes: int
  embed_size: int = 8
  lstm_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits [B, T, num_classes] of token ids ``x`` [B, T]."""
    del train
    h = nn.Embed(self.num_classes, self.embed_size, name='embed')(
        x.astype(jnp.int32))
    h = _lstm_stack(h, self.lstm_sizes)
    return nn.Dense(self.num_classes, name='logits')(h)


class WordLSTM(nn.Module):
  """Word LSTM: embedding, LSTM(s), a projection, logits per position.

  Attributes:
    num_classes: the vocabulary size (inputs and outputs).
    embed_size: the word embedding width, also the projection's.
    lstm_sizes: the width of each LSTM layer.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = WordLSTM(num_classes=50, lstm_sizes=(16,))
    >>> x = jnp.zeros((2, 20), jnp.int32)
    >>> params = model.init(jax.random.key(0), x)
    >>> model.apply(params, x).shape
    (2, 20, 50)
  """
  num_classes: int
  embed_size: int = 96
  lstm_sizes: Sequence[int] = (670,)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits [B, T, num_classes] of token ids ``x`` [B, T]."""
    del train
    h = nn.Embed(self.num_classes, self.embed_size, name='embed')(
        x.astype(jnp.int32))
    h = _lstm_stack(h, self.lstm_sizes)
    h = nn.Dense(self.embed_size, name='projection')(h)
    return nn.Dense(self.num_classes, name='logits')(h)
