"""A CIFAR ResNet with GroupNorm instead of BatchNorm, for federated learning.

BatchNorm's running statistics are mutable state that non-IID clients pull
apart; Hsieh et al., `The Non-IID Data Quagmire of Decentralized Machine
Learning`, ICML 2020, replace it with GroupNorm (2 groups per layer), and
Reddi et al., `Adaptive Federated Optimization`, ICLR 2021, train a ResNet-18
with GroupNorm on federated CIFAR-10/100. The basic-block ResNet itself is He
et al., `Deep Residual Learning for Image Recognition`, CVPR 2016, with the
CIFAR stem (one 3x3 convolution, no max-pool). The default ResNet-18 on
32x32x3 inputs with 10 classes has 11,173,962 parameters.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class _BasicBlock(nn.Module):
  """Two 3x3 conv + GroupNorm layers with an identity or 1x1-conv shortcut."""
  filters: int
  strides: int
  num_groups: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(self.filters, (3, 3), strides=self.strides, use_bias=False,
                name='conv1')(x)
    y = nn.relu(nn.GroupNorm(self.num_groups, name='norm1')(y))
    y = nn.Conv(self.filters, (3, 3), use_bias=False, name='conv2')(y)
    y = nn.GroupNorm(self.num_groups, name='norm2')(y)
    if x.shape != y.shape:
      x = nn.Conv(self.filters, (1, 1), strides=self.strides, use_bias=False,
                  name='shortcut_conv')(x)
      x = nn.GroupNorm(self.num_groups, name='shortcut_norm')(x)
    return nn.relu(x + y)


class ResNetGN(nn.Module):
  """A basic-block ResNet with GroupNorm and a CIFAR stem.

  Stem: Conv(num_filters, 3x3, stride 1) + GroupNorm + relu, no max-pool.
  Stage ``i`` has ``stage_sizes[i]`` basic blocks of ``num_filters * 2**i``
  channels; every stage after the first halves the resolution in its first
  block (1x1-conv + GroupNorm shortcut). Head: global average pool, Dense.
  Convolutions have no bias (the GroupNorm after each has one).

  There is no mutable state, so ``model.apply(params, x)`` is a pure
  function of the parameters.

  Attributes:
    num_classes: the number of output logits.
    stage_sizes: blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
    num_filters: channels of the stem and the first stage (64 for ResNet-18;
      small widths such as 16 suit tests and CPU runs).
    num_groups: groups of every GroupNorm; must divide each layer's channels.
      Hsieh et al. (2020) use 2.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = ResNetGN(num_classes=10, stage_sizes=(1, 1), num_filters=8)
    >>> x = jnp.ones((2, 32, 32, 3))
    >>> params = model.init(jax.random.key(0), x)
    >>> model.apply(params, x).shape
    (2, 10)

  References:
    He et al., `Deep Residual Learning for Image Recognition
    <https://arxiv.org/abs/1512.03385>`_, 2016.

    Hsieh et al., `The Non-IID Data Quagmire of Decentralized Machine
    Learning <https://arxiv.org/abs/1910.00189>`_, 2020.

    Reddi et al., `Adaptive Federated Optimization
    <https://arxiv.org/abs/2003.00295>`_, 2021.

  .. warning::
    Expects images [B, H, W, C].
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  num_groups: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits [B, num_classes] of images ``x`` [B, H, W, C]; `train` unused."""
    del train
    if x.ndim != 4:
      raise ValueError(f'ResNetGN expects images [B, H, W, C], got shape '
                       f'{x.shape}.')
    x = nn.Conv(self.num_filters, (3, 3), use_bias=False, name='stem_conv')(x)
    x = nn.relu(nn.GroupNorm(self.num_groups, name='stem_norm')(x))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = _BasicBlock(self.num_filters * 2**i,
                        strides=2 if i > 0 and j == 0 else 1,
                        num_groups=self.num_groups,
                        name=f'stage{i + 1}_block{j + 1}')(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='logits')(x)
