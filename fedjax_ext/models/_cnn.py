"""The federated EMNIST CNN of Reddi et al. (2021) and FedJAX.

The architecture follows Table 3 / Appendix D of Reddi et al., `Adaptive
Federated Optimization`, ICLR 2021, and FedJAX's
``fedjax.models.emnist.create_conv_model``: two VALID 3x3 convolutions (32 and
64 channels), a 2x2 max-pool, dropout, Dense 128, dropout, Dense. On
28x28x1 EMNIST with 62 classes it has 1,206,590 parameters.
"""

import flax.linen as nn
import jax


class EmnistCNN(nn.Module):
  """The standard federated EMNIST convolutional classifier.

  Layers: Conv(32, 3x3, VALID) relu, Conv(64, 3x3, VALID) relu,
  max-pool(2x2, stride 2), dropout, flatten, Dense(128) relu, dropout,
  Dense(num_classes). The Dense(128) input size depends on the image size
  (12 * 12 * 64 = 9216 for 28x28), so images must be at least 6x6.

  Attributes:
    num_classes: the number of output logits (62 for EMNIST-62).
    dropout_rate: the rate of both dropout layers. Reddi et al. use 0.25
      and 0.5; 0 (the default) disables dropout.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = EmnistCNN()
    >>> x = jnp.ones((2, 28, 28, 1))
    >>> params = model.init(jax.random.key(0), x)
    >>> model.apply(params, x).shape
    (2, 62)

  References:
    Reddi et al., `Adaptive Federated Optimization
    <https://arxiv.org/abs/2003.00295>`_, 2021.

    Ro et al., `FedJAX: Federated learning simulation with JAX
    <https://arxiv.org/abs/2108.02117>`_, 2021.

  .. warning::
    Expects images [B, H, W, C]. With ``train=True`` and
    ``dropout_rate > 0`` it needs a ``'dropout'`` rng:
    ``model.apply(params, x, train=True, rngs={'dropout': key})``.
  """
  num_classes: int = 62
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits [B, num_classes] of images ``x`` [B, H, W, C].

    Args:
      x: float images [B, H, W, C].
      train: whether dropout is active (only when ``dropout_rate > 0``).

    Returns:
      Logits [B, num_classes].
    """
    if x.ndim != 4:
      raise ValueError(f'EmnistCNN expects images [B, H, W, C], got shape '
                       f'{x.shape}.')
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID', name='conv1')(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding='VALID', name='conv2')(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    dropout = train and self.dropout_rate > 0
    if dropout:
      x = nn.Dropout(self.dropout_rate, deterministic=False)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, name='dense')(x))
    if dropout:
      x = nn.Dropout(self.dropout_rate, deterministic=False)(x)
    return nn.Dense(self.num_classes, name='logits')(x)

