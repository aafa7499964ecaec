r"""Federated datasets with natural clients, from the TFF HDF5 releases.

Three datasets every FL paper uses (and FedJAX's ``fedjax.datasets``
serves), read from the HDF5 files TensorFlow Federated publishes and served
as local TFDS builders (array_record, read without TensorFlow) with a
``client_id`` column, so ``--partition=natural`` gives their real clients:

* ``federated_emnist`` (configs ``digits_only``, 3,383 writers / 10 classes,
  and ``full``, 3,400 writers / 62 classes): LEAF's EMNIST grouped by
  writer (Caldas et al., 2018). Files ``fed_emnist[_digitsonly]_{train,
  test}.h5`` with ``examples/<writer>/pixels`` float32 [n, 28, 28] (1.0 is
  the background) and ``examples/<writer>/label`` int32 [n]. Stored as uint8
  ``round(255 (1 - pixels))`` (ink 255, background 0: MNIST's convention, as
  FedJAX's ``x = 1 - pixels``), read back as float32 [N, 28, 28, 1] in
  [0, 1].
* ``shakespeare``: one client per speaking role of each play (715 roles
  in TFF's release; McMahan et al., 2017). Files
  ``shakespeare_{train,test}.h5`` with ``examples/<role>/snippets`` (byte
  strings). Next-character prediction exactly as FedJAX's
  ``shakespeare.preprocess_client``: a client's snippets are joined, each
  wrapped in BOS ... EOS, mapped through the 86-character table of the TFF
  text-generation tutorial (ids 3..88; PAD = 0, BOS = 1, EOS = 2, OOV = 89:
  `SHAKESPEARE_VOCAB_SIZE` = 90 classes), and cut into sequences of
  `SHAKESPEARE_SEQUENCE_LENGTH` = 80: ``x`` = ids[k : k + 80],
  ``y`` = ids[k + 1 : k + 81], the tail padded with PAD. Both are int32 [80].
* ``stackoverflow`` (config ``next_word``; ``next_word_1k`` for a 1,000
  client subset): one client per user (342,477 in train). Files
  ``stackoverflow_{train,test}.h5`` with ``examples/<user>/tokens`` (one
  space-separated, lower-cased sentence per example) plus ``title``,
  ``tags``, ``type``, ``score``, ``creation_date`` (unused). Next-word
  prediction as FedJAX's ``StackoverflowTokenizer`` and Reddi et al.
  (2021): the vocabulary is the `STACKOVERFLOW_VOCAB_SIZE` = 10,000 words
  used by the most training users (TFF's ``stackoverflow.word_count``
  definition; ties by the word, recomputed here from the training split),
  ids PAD = 0, BOS = 1, EOS = 2, words 3..10002, OOV = 10003 (10,004
  classes); a sentence becomes [BOS, w_1, ..., w_n, EOS], truncated or
  PAD-padded to `STACKOVERFLOW_SEQUENCE_LENGTH` + 1 = 21 ids stored as
  ``tokens``; ``x`` = tokens[:20] (with a trailing EOS replaced by PAD, so
  that x equals FedJAX's) and ``y`` = tokens[1:]. Tag prediction is not
  implemented (see the module's "Limits").

``client_id`` is the client's index in the sorted union of the ids of both
splits (int64), so a client has the same id in train and test.

Downloads happen only in ``python -m fedjax_ext.data.prepare`` (`SOURCES`:
the URL and the SHA-256 TFF's own ``load_data`` checks); the builders here
read the extracted files from the download config's ``manual_dir``.

Limits:
  StackOverflow is large: 135,818,730 training sentences. ``next_word``
  loads as two int32 [N, 20] columns (about 11 GB of host memory for the
  training split, 1.3 GB for the 16.6M test sentences) and its preparation
  makes two passes over the 30+ GB of HDF5 in Python (hours).
  ``next_word_1k`` keeps 1,000 training users drawn uniformly (seed 0) and
  10,000 test sentences drawn uniformly (seed 0), with the vocabulary of
  the full training split; it loads in well under 1 GB. Tag prediction
  (Reddi et al.'s bag-of-words logistic regression over 500 tags,
  multi-label) needs multi-label targets, which the library's
  classification loss does not model, and is left out.

References:
  Caldas et al., `LEAF: A Benchmark for Federated Settings
  <https://arxiv.org/abs/1812.01097>`_, 2018.

  McMahan et al., `Communication-Efficient Learning of Deep Networks from
  Decentralized Data <https://arxiv.org/abs/1602.05629>`_, AISTATS 2017.

  Reddi et al., `Adaptive Federated Optimization
  <https://arxiv.org/abs/2003.00295>`_, ICLR 2021.

  The TensorFlow Federated Authors, `tff.simulation.datasets
  <https://www.tensorflow.org/federated/api_docs/python/tff/simulation/datasets>`_
  (``emnist``, ``shakespeare``, ``stackoverflow``), 2019.
"""

import collections
import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

TFF_URL = 'https://storage.googleapis.com/tff-datasets-public/'


@dataclasses.dataclass(frozen=True)
class Source:
  """A published archive and the files a builder reads from it.

  Attributes:
    url: where the archive is published.
    sha256: its SHA-256 as TFF's ``load_data`` checks it
      (``tf.keras.utils.get_file(..., file_hash=...)``), or None if unknown
      (then the prepare command needs ``--allow_unverified``).
    files: (train, test) HDF5 file names inside the archive.
  """
  url: str
  sha256: str | None
  files: tuple[str, str]

  @property
  def filename(self) -> str:
    return self.url.rsplit('/', 1)[-1]


# Checksums copied from TFF's simulation/datasets/{emnist,shakespeare,
# stackoverflow}.py (`file_hash=` of each `get_file` call).
SOURCES = {
    'federated_emnist/digits_only': Source(
        TFF_URL + 'fed_emnist_digitsonly.tar.bz2',
        '55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b',
        ('fed_emnist_digitsonly_train.h5', 'fed_emnist_digitsonly_test.h5')),
    'federated_emnist/full': Source(
        TFF_URL + 'fed_emnist.tar.bz2',
        'fe1ed5a502cea3a952eb105920bff8cffb32836b5173cb18a57a32c3606f3ea0',
        ('fed_emnist_train.h5', 'fed_emnist_test.h5')),
    'shakespeare': Source(
        TFF_URL + 'shakespeare.tar.bz2',
        '0285be9906cb5f268092eee4edeeacfc2af4574f2941f7cc2f08a321d7f5c707',
        ('shakespeare_train.h5', 'shakespeare_test.h5')),
    'stackoverflow': Source(
        TFF_URL + 'stackoverflow.tar.bz2',
        '99eca2f8b8327a09e5fc123979df2d237acbc5e52322f6d86bf523ee47b961a2',
        ('stackoverflow_train.h5', 'stackoverflow_test.h5')),
}

MANUAL_INSTRUCTIONS = (
    'Run `python -m fedjax_ext.data.prepare --dataset=NAME '
    '--data_dir=DIR`: it downloads the TFF archive, checks its SHA-256, '
    'extracts it and builds this dataset from the extracted HDF5 files.')

EMNIST_PIXEL_MAX = 255

# Shakespeare, as fedjax.datasets.shakespeare (reserved ids first).
SHAKESPEARE_CHARS = (
    b'dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:\n'
    b'aeimquyAEIMQUY]!%)-159\r')
PAD, BOS, EOS = 0, 1, 2
NUM_RESERVED = 3
SHAKESPEARE_OOV = NUM_RESERVED + len(SHAKESPEARE_CHARS)  # 89.
SHAKESPEARE_VOCAB_SIZE = SHAKESPEARE_OOV + 1  # 90.
SHAKESPEARE_SEQUENCE_LENGTH = 80

STACKOVERFLOW_VOCAB_SIZE = 10_000
STACKOVERFLOW_OOV = NUM_RESERVED + STACKOVERFLOW_VOCAB_SIZE  # 10003.
STACKOVERFLOW_NUM_CLASSES = STACKOVERFLOW_OOV + 1  # 10004.
STACKOVERFLOW_SEQUENCE_LENGTH = 20


def _char_table() -> np.ndarray:
  table = np.full(256, SHAKESPEARE_OOV, np.int32)
  for i, c in enumerate(SHAKESPEARE_CHARS):
    table[c] = NUM_RESERVED + i
  return table


SHAKESPEARE_TABLE = _char_table()


def _h5py():
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("Reading the TFF HDF5 files needs h5py: pip install -e "
                      "'.[prepare]'") from None
  return h5py


def find_file(root: str, name: str) -> str:
  """The path of file `name` anywhere under `root` (archives nest them)."""
  for dirpath, _, filenames in os.walk(root):
    if name in filenames:
      return os.path.join(dirpath, name)
  raise FileNotFoundError(f'{name} not found under {root}.')


def client_ids(paths: Sequence[str]) -> dict[str, int]:
  """{client name: index} over the sorted union of the files' clients."""
  h5py = _h5py()
  names = set()
  for path in paths:
    with h5py.File(path, 'r') as f:
      names.update(f['examples'].keys())
  return {name: i for i, name in enumerate(sorted(names))}


def read_clients(path: str, features: Sequence[str],
                 names: Sequence[str] | None = None
                 ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """(client name, {feature: array}) of each client of a TFF HDF5 file.

  The layout is TFF's ``HDF5ClientData``: ``examples/<client>/<feature>``,
  one dataset per feature with the client's examples on axis 0. Clients come
  in sorted order, one at a time (memory: one client).
  """
  h5py = _h5py()
  with h5py.File(path, 'r') as f:
    examples = f['examples']
    for name in sorted(examples.keys()) if names is None else names:
      group = examples[name]
      yield name, {k: group[k][()] for k in features}


# ----------------------------------------------------------------------------
# Preprocessing (pure NumPy, unit-tested on hand examples).


def emnist_images(pixels: np.ndarray) -> np.ndarray:
  """TFF pixels (float, 1.0 = background) -> uint8 [n, 28, 28, 1], ink 255."""
  ink = 1. - np.asarray(pixels, np.float64)
  return np.round(np.clip(ink, 0., 1.) * EMNIST_PIXEL_MAX).astype(
      np.uint8)[..., None]


def _as_bytes(s) -> bytes:
  return s if isinstance(s, bytes) else str(s).encode('utf-8')


def shakespeare_sequences(
    snippets: Sequence[bytes],
    sequence_length: int = SHAKESPEARE_SEQUENCE_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
  """One client's snippets -> (x, y) int32 [M, sequence_length].

  As ``fedjax.datasets.shakespeare.preprocess_client``: with length 3,
  ``[b'ABCD', b'E']`` gives x = [[BOS, A, B], [C, D, EOS], [BOS, E, PAD]]
  and y = [[A, B, C], [D, EOS, BOS], [E, EOS, PAD]].
  """
  parts = []
  for snippet in snippets:
    ids = SHAKESPEARE_TABLE[np.frombuffer(_as_bytes(snippet), np.uint8)]
    parts.append(np.concatenate([[BOS], ids, [EOS]]).astype(np.int32))
  joined = np.concatenate(parts) if parts else np.zeros(0, np.int32)
  n = len(joined) - 1
  if n <= 0:
    empty = np.zeros((0, sequence_length), np.int32)
    return empty, empty
  padded = -(-n // sequence_length) * sequence_length
  x = np.full(padded, PAD, np.int32)
  y = np.full(padded, PAD, np.int32)
  x[:n] = joined[:-1]
  y[:n] = joined[1:]
  return (x.reshape(-1, sequence_length), y.reshape(-1, sequence_length))


def user_word_counts(
    clients: Iterator[tuple[str, dict[str, np.ndarray]]]) -> collections.Counter:
  """word -> number of clients using it (TFF's word_count definition)."""
  counts = collections.Counter()
  for _, features in clients:
    words = set()
    for sentence in features['tokens']:
      words.update(_as_bytes(sentence).decode('utf-8').split())
    counts.update(words)
  return counts


def top_words(counts: collections.Counter, size: int) -> list[str]:
  """The `size` most used words; ties broken by the word itself."""
  return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
          ][:size]


def stackoverflow_tokens(sentences: Sequence[bytes], vocab: dict[str, int],
                         sequence_length: int = STACKOVERFLOW_SEQUENCE_LENGTH,
                         vocab_size: int | None = None) -> np.ndarray:
  """Sentences -> int32 [n, sequence_length + 1]: BOS words EOS, cut/padded.

  Word w has id ``3 + vocab[w]``; unknown words are OOV, id ``3 +
  vocab_size`` (default ``len(vocab)``; a training split with fewer distinct
  words than the configured size keeps the configured OOV id).
  """
  oov = NUM_RESERVED + (len(vocab) if vocab_size is None else vocab_size)
  out = np.full((len(sentences), sequence_length + 1), PAD, np.int32)
  for i, sentence in enumerate(sentences):
    words = _as_bytes(sentence).decode('utf-8').split()
    ids = [BOS] + [NUM_RESERVED + vocab[w] if w in vocab else oov
                   for w in words] + [EOS]
    ids = ids[:sequence_length + 1]
    out[i, :len(ids)] = ids
  return out


def next_word_examples(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """tokens [N, T + 1] -> (x, y) [N, T]; x's EOS (only at padding) -> PAD."""
  x = tokens[:, :-1]
  x = np.where(x == EOS, PAD, x).astype(np.int32)
  return x, np.ascontiguousarray(tokens[:, 1:], np.int32)


# ----------------------------------------------------------------------------
# TFDS builders.


def _split_paths(dl_manager, source: Source) -> tuple[str, str]:
  root = os.fspath(dl_manager.manual_dir)
  return tuple(find_file(root, name) for name in source.files)


class _PerClientBuilder(tfds.core.GeneratorBasedBuilder):
  """A TFF release read client by client: ``_generate_examples(path, ids)``
  yields one split's examples; ids are shared by both splits."""

  source: Source

  def _split_generators(self, dl_manager):
    paths = _split_paths(dl_manager, self.source)
    ids = client_ids(paths)
    return {split: self._generate_examples(path, ids)
            for split, path in zip(('train', 'test'), paths)}


@dataclasses.dataclass(eq=False, kw_only=True)
class FederatedEmnistConfig(tfds.core.BuilderConfig):
  only_digits: bool = True


class FederatedEmnist(_PerClientBuilder):
  """TFF's federated EMNIST: LEAF's EMNIST grouped by writer."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'From the TFF HDF5 release; uint8, ink 255.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      FederatedEmnistConfig(name='digits_only', only_digits=True,
                            description='3,383 writers, digits 0-9.'),
      FederatedEmnistConfig(name='full', only_digits=False,
                            description='3,400 writers, 62 classes: digits, '
                            'upper then lower case.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'digits_only'

  @property
  def source(self) -> Source:
    return SOURCES[f'federated_emnist/{self.builder_config.name}']

  def _info(self) -> tfds.core.DatasetInfo:
    classes = 10 if self.builder_config.only_digits else 62
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Federated EMNIST of TFF (LEAF), one client per writer; '
                     'images uint8 with ink 255.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=classes),
            'client_id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://www.tensorflow.org/federated/api_docs/python/tff/'
                 'simulation/datasets/emnist/load_data',
        disable_shuffling=True,
    )

  def _generate_examples(self, path, ids):
    for name, features in read_clients(path, ('pixels', 'label')):
      images = emnist_images(features['pixels'])
      for i, (image, label) in enumerate(zip(images, features['label'])):
        yield f'{name}/{i}', {'image': image, 'label': int(label),
                              'client_id': ids[name]}


class Shakespeare(_PerClientBuilder):
  """TFF's Shakespeare: next character, one client per speaking role."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "FedJAX's preprocessing, sequences of 80."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  source = SOURCES['shakespeare']

  def _info(self) -> tfds.core.DatasetInfo:
    length = SHAKESPEARE_SEQUENCE_LENGTH
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Shakespeare of TFF (LEAF), one client per role; '
                     'next-character sequences of 80 ids (PAD 0, BOS 1, '
                     'EOS 2, 86 characters, OOV 89).'),
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(length,), dtype=np.int32),
            'y': tfds.features.Tensor(shape=(length,), dtype=np.int32),
            'client_id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('x', 'y'),
        homepage='https://www.tensorflow.org/federated/api_docs/python/tff/'
                 'simulation/datasets/shakespeare/load_data',
        disable_shuffling=True,
    )

  def _generate_examples(self, path, ids):
    for name, features in read_clients(path, ('snippets',)):
      x, y = shakespeare_sequences(features['snippets'])
      for i in range(len(x)):
        yield f'{name}/{i}', {'x': x[i], 'y': y[i], 'client_id': ids[name]}


@dataclasses.dataclass(eq=False, kw_only=True)
class StackOverflowConfig(tfds.core.BuilderConfig):
  max_train_clients: int | None = None  # None: all; else drawn, seed 0.
  max_test_examples: int | None = None  # None: all; else drawn, seed 0.
  vocab_size: int = STACKOVERFLOW_VOCAB_SIZE
  sequence_length: int = STACKOVERFLOW_SEQUENCE_LENGTH
  seed: int = 0


class StackOverflow(tfds.core.GeneratorBasedBuilder):
  """TFF's Stack Overflow: next word, one client per user."""

  name = 'stackoverflow'  # Not TFDS's default 'stack_overflow'.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Next word, vocabulary 10,000, 20 tokens.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      StackOverflowConfig(name='next_word',
                          description='All 342,477 training users.'),
      StackOverflowConfig(name='next_word_1k', max_train_clients=1000,
                          max_test_examples=10_000,
                          description='1,000 training users and 10,000 test '
                          'sentences, drawn with seed 0.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'next_word'
  source = SOURCES['stackoverflow']

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Stack Overflow of TFF, one client per user; tokens = '
                     'BOS words EOS, cut/padded to sequence_length + 1 '
                     '(PAD 0, BOS 1, EOS 2, words 3.., OOV last). '
                     "metadata['vocabulary'] lists the words."),
        features=tfds.features.FeaturesDict({
            'tokens': tfds.features.Tensor(
                shape=(config.sequence_length + 1,), dtype=np.int32),
            'client_id': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage='https://www.tensorflow.org/federated/api_docs/python/tff/'
                 'simulation/datasets/stackoverflow/load_data',
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  @property
  def num_classes(self) -> int:
    return NUM_RESERVED + self.builder_config.vocab_size + 1

  def _split_generators(self, dl_manager):
    config = self.builder_config
    train_path, test_path = _split_paths(dl_manager, self.source)
    ids = client_ids((train_path, test_path))
    words = top_words(user_word_counts(read_clients(train_path, ('tokens',))),
                      config.vocab_size)
    self.info.metadata['vocabulary'] = words
    vocab = {w: i for i, w in enumerate(words)}
    rng = np.random.default_rng(config.seed)
    train_names = None
    if config.max_train_clients is not None:
      h5py = _h5py()
      with h5py.File(train_path, 'r') as f:
        names = sorted(f['examples'].keys())
      if config.max_train_clients < len(names):
        keep = rng.choice(len(names), config.max_train_clients, replace=False)
        train_names = [names[i] for i in np.sort(keep)]
    test_rows = None
    if config.max_test_examples is not None:
      sizes = {name: len(f['tokens']) for name, f in
               read_clients(test_path, ('tokens',))}
      total = sum(sizes.values())
      if config.max_test_examples < total:
        test_rows = set(rng.choice(total, config.max_test_examples,
                                   replace=False).tolist())
    return {'train': self._generate_examples(train_path, ids, vocab,
                                             train_names, None),
            'test': self._generate_examples(test_path, ids, vocab, None,
                                            test_rows)}

  def _generate_examples(self, path, ids, vocab, names, rows):
    length = self.builder_config.sequence_length
    offset = 0
    for name, features in read_clients(path, ('tokens',), names):
      sentences = features['tokens']
      keep = range(len(sentences))
      if rows is not None:
        keep = [i for i in keep if offset + i in rows]
      offset += len(sentences)
      if not keep:
        continue
      tokens = stackoverflow_tokens([sentences[i] for i in keep], vocab,
                                    length, self.builder_config.vocab_size)
      for i, row in zip(keep, tokens):
        yield f'{name}/{i}', {'tokens': row, 'client_id': ids[name]}


BUILDERS = {
    'federated_emnist': FederatedEmnist,
    'shakespeare': Shakespeare,
    'stackoverflow': StackOverflow,
}


def source_of(base: str, config: str | None) -> Source:
  """The archive of dataset `base` (config `config` or the default)."""
  cls = BUILDERS[base]
  if cls.BUILDER_CONFIGS and base == 'federated_emnist':
    return SOURCES[f'{base}/{config or cls.DEFAULT_BUILDER_CONFIG_NAME}']
  return SOURCES[base]
