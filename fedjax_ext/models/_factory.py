"""Models by name: ``create_model('cnn', num_classes=62)``."""

import flax.linen as nn

from fedjax_ext.models._cnn import EmnistCNN
from fedjax_ext.models._linear import LogisticRegression
from fedjax_ext.models._linear import MLP
from fedjax_ext.models._resnet import ResNetGN

# The names `create_model` accepts, simplest first.
MODELS = ('logistic', 'mlp', 'cnn', 'resnet')

_CLASSES = {
    'logistic': LogisticRegression,
    'mlp': MLP,
    'cnn': EmnistCNN,
    'resnet': ResNetGN,
}


def create_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
  """The flax classifier called `name`, with ``num_classes`` logits.

  Args:
    name: one of `MODELS`: ``'logistic'`` (`LogisticRegression`), ``'mlp'``
      (`MLP`), ``'cnn'`` (`EmnistCNN`) or ``'resnet'`` (`ResNetGN`).
    num_classes: the number of output logits.
    **kwargs: the model's other attributes, e.g. ``hidden_sizes`` for
      ``'mlp'`` or ``num_filters`` for ``'resnet'``.

  Returns:
    An unbound module whose ``apply(variables, x, *, train=False)`` returns
    logits [B, num_classes].

  Raises:
    ValueError: for a name not in `MODELS`.

  Examples:
    >>> create_model('mlp', num_classes=10, hidden_sizes=(32,)).hidden_sizes
    (32,)
  """
  if name not in _CLASSES:
    raise ValueError(f'Unknown model {name!r}; valid names: '
                     f'{", ".join(MODELS)}.')
  return _CLASSES[name](num_classes=num_classes, **kwargs)
