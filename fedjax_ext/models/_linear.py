"""Linear and fully connected classifiers: logistic regression and an MLP.

Both flatten every input (an image [B, H, W, C] or a vector [B, D]) to
[B, H * W * C] first. The two-hidden-layer MLP of McMahan et al., AISTATS 2017
(`Communication-Efficient Learning of Deep Networks from Decentralized Data`,
the "2NN" of Section 3) is ``MLP(num_classes, hidden_sizes=(200, 200))``.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax


class LogisticRegression(nn.Module):
  r"""Multinomial logistic regression: :math:`\mathrm{logits} = x W + b`.

  Attributes:
    num_classes: the number of output logits.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = LogisticRegression(num_classes=3)
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> params = model.init(jax.random.key(0), x)
    >>> model.apply(params, x).shape
    (2, 3)
  """
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits [B, num_classes] of a batch ``x`` [B, ...]; `train` is unused."""
    del train
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, name='logits')(x)


class MLP(nn.Module):
  """A multilayer perceptron: hidden Dense + activation layers, then Dense.

  Attributes:
    num_classes: the number of output logits.
    hidden_sizes: the width of each hidden layer, input to output; ``()``
      gives logistic regression.
    activation: the nonlinearity after every hidden layer.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(num_classes=10, hidden_sizes=(200, 200))
    >>> x = jnp.ones((2, 28, 28, 1))
    >>> params = model.init(jax.random.key(0), x)
    >>> model.apply(params, x).shape
    (2, 10)

  References:
    McMahan et al., `Communication-Efficient Learning of Deep Networks from
    Decentralized Data <https://arxiv.org/abs/1602.05629>`_, 2017 (the "2NN").
  """
  num_classes: int
  hidden_sizes: Sequence[int] = (200,)
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits [B, num_classes] of a batch ``x`` [B, ...]; `train` is unused."""
    del train
    x = x.reshape((x.shape[0], -1))
    for i, size in enumerate(self.hidden_sizes):
      x = self.activation(nn.Dense(size, name=f'hidden_{i}')(x))
    return nn.Dense(self.num_classes, name='logits')(x)
