"""Models by name: ``create_model('cnn', num_classes=62)``."""

import flax.linen as nn

from fedjax_ext.models._cnn import EmnistCNN
from fedjax_ext.models._linear import LogisticRegression
from fedjax_ext.models._linear import MLP
from fedjax_ext.models._recurrent import CharLSTM
from fedjax_ext.models._recurrent import WordLSTM
from fedjax_ext.models._resnet import ResNetGN

# The names `create_model` accepts, simplest first.
MODELS = ('logistic', 'mlp', 'cnn', 'resnet', 'char_lstm', 'word_lstm')
# The models of token ids [B, T] -> logits [B, T, V] (next-token prediction);
# the others map features [B, ...] -> logits [B, V].
SEQUENCE_MODELS = ('char_lstm', 'word_lstm')

_CLASSES = {
    'logistic': LogisticRegression,
    'mlp': MLP,
    'cnn': EmnistCNN,
    'resnet': ResNetGN,
    'char_lstm': CharLSTM,
    'word_lstm': WordLSTM,
}


def create_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
  """The flax classifier called `name`, with ``num_classes`` logits.

  Args:
    name: one of `MODELS`: ``'logistic'`` (`LogisticRegression`), ``'mlp'``
      (`MLP`), ``'cnn'`` (`EmnistCNN`), ``'resnet'`` (`ResNetGN`), or a
      next-token model of `SEQUENCE_MODELS`: ``'char_lstm'`` (`CharLSTM`,
      Shakespeare) or ``'word_lstm'`` (`WordLSTM`, Stack Overflow), for
      which ``num_classes`` is the vocabulary size.
    num_classes: the number of output logits.
    **kwargs: the model's other attributes, e.g. ``hidden_sizes`` for
      ``'mlp'`` or ``num_filters`` for ``'resnet'``.

  Returns:
    An unbound module whose ``apply(variables, x, *, train=False)`` returns
    logits [B, num_classes] ([B, T, num_classes] for `SEQUENCE_MODELS`).

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
