"""Flax classifiers: logistic regression, MLP, EMNIST CNN, ResNet-GN, LSTMs.

Every model maps float inputs [B, ...] to logits [B, num_classes], or (the
next-token `SEQUENCE_MODELS`) int token ids [B, T] to logits
[B, T, num_classes], and takes ``train`` as a keyword of ``__call__``, so
callers treat them uniformly.
"""

from fedjax_ext.models._cnn import EmnistCNN
from fedjax_ext.models._factory import create_model
from fedjax_ext.models._factory import MODELS
from fedjax_ext.models._factory import SEQUENCE_MODELS
from fedjax_ext.models._recurrent import CharLSTM
from fedjax_ext.models._recurrent import WordLSTM
from fedjax_ext.models._linear import LogisticRegression
from fedjax_ext.models._linear import MLP
from fedjax_ext.models._resnet import ResNetGN
