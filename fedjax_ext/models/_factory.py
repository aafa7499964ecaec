"""Models by name: ``create_model('cnn', num_classes=62)``."""

import dataclasses
import numbers

import flax.linen as nn

from fedjax_ext._src.checks import check_int
from fedjax_ext._src.checks import check_number

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
    ValueError: for a name not in `MODELS`, or a size outside its range
      (``num_classes`` >= 1, layer sizes non-empty lists of ints >= 1,
      ``dropout_rate`` in [0, 1), ``num_filters`` a multiple of
      ``num_groups``), naming the argument.
    TypeError: for an attribute the model does not have.

  Examples:
    >>> create_model('mlp', num_classes=10, hidden_sizes=(32,)).hidden_sizes
    (32,)
  """
  if name not in _CLASSES:
    raise ValueError(f'Unknown model {name!r}; valid names: '
                     f'{", ".join(MODELS)}.')
  cls = _CLASSES[name]
  fields = sorted(f.name for f in dataclasses.fields(cls)
                  if f.init and f.name not in ('parent', 'name',
                                               'num_classes'))
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise TypeError(f'create_model({name!r}) got unknown argument(s) '
                    f'{", ".join(unknown)}; {cls.__name__} takes '
                    f'{", ".join(fields)}.')
  check_int('num_classes', num_classes, low=1)
  for key, value in kwargs.items():
    if key in _SIZE_LISTS:
      _check_sizes(key, value)
    elif key in _SIZES:
      check_int(key, value, low=1)
    elif key == 'dropout_rate':
      check_number(key, value, low=0, high=1, high_open=True)
  if name == 'resnet':
    filters = kwargs.get('num_filters', cls.num_filters)
    groups = kwargs.get('num_groups', cls.num_groups)
    if filters % groups:
      raise ValueError(f'num_filters ({filters}) must be a multiple of '
                       f'num_groups ({groups}) (GroupNorm splits channels).')
  return cls(num_classes=num_classes, **kwargs)


# Attributes that are lists of layer sizes, and single sizes.
_SIZE_LISTS = ('hidden_sizes', 'lstm_sizes', 'stage_sizes')
_SIZES = ('embed_size', 'num_filters', 'num_groups')


def _check_sizes(name: str, sizes) -> None:
  """A non-empty sequence of ints >= 1, else a ValueError naming `name`."""
  if (isinstance(sizes, (str, bytes)) or not hasattr(sizes, '__len__') or
      not len(sizes) or
      not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
              and s >= 1 for s in sizes)):
    hint = (" (for no hidden layer use 'logistic')"
            if name == 'hidden_sizes' else '')
    raise ValueError(f'{name} must be a non-empty list of integers >= 1'
                     f'{hint}, got {sizes!r}.')
