"""Federated EMNIST, Shakespeare and Stack Overflow from TFF-layout HDF5.

The fixtures are tiny HDF5 files written here in TFF's ``HDF5ClientData``
layout (``examples/<client>/<feature>``); nothing is downloaded.
"""

import collections
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import h5py
import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _datasets
from fedjax_ext.data import _federated
from fedjax_ext.data import _partition
from fedjax_ext.data import _tfds
from fedjax_ext.data import _validate

PAD, BOS, EOS = _federated.PAD, _federated.BOS, _federated.EOS
STRINGS = h5py.special_dtype(vlen=bytes)


def write_tff_h5(path, clients):
  """{client: {feature: array or list of bytes}} -> a TFF-layout HDF5 file."""
  with h5py.File(path, 'w') as f:
    examples = f.create_group('examples')
    for name, features in clients.items():
      group = examples.create_group(name)
      for key, value in features.items():
        if isinstance(value, list):
          group.create_dataset(key, data=np.array(value, dtype=object),
                               dtype=STRINGS)
        else:
          group.create_dataset(key, data=value)


def emnist_clients(sizes, num_classes, seed):
  rng = np.random.default_rng(seed)
  return {name: {'pixels': rng.integers(0, 256, (n, 28, 28)).astype(
      np.float32) / 255., 'label': rng.integers(0, num_classes, n).astype(
          np.int32)} for name, n in sizes.items()}


def char_id(c):
  return int(_federated.SHAKESPEARE_TABLE[ord(c)])


class PreprocessingTest(parameterized.TestCase):

  def test_shakespeare_matches_fedjax_docstring_example(self):
    x, y = _federated.shakespeare_sequences([b'ABCD', b'E'], 3)
    a, b, c, d, e = (char_id(ch) for ch in 'ABCDE')
    np.testing.assert_array_equal(
        x, [[BOS, a, b], [c, d, EOS], [BOS, e, PAD]])
    np.testing.assert_array_equal(
        y, [[a, b, c], [d, EOS, BOS], [e, EOS, PAD]])

  def test_shakespeare_vocabulary(self):
    self.assertLen(_federated.SHAKESPEARE_CHARS, 86)
    self.assertEqual(_federated.SHAKESPEARE_VOCAB_SIZE, 90)
    ids = {char_id(chr(c)) for c in _federated.SHAKESPEARE_CHARS}
    self.assertEqual(ids, set(range(3, 89)))
    self.assertEqual(char_id('~'), 89)  # Not in the table: OOV.
    x, y = _federated.shakespeare_sequences([b'a' * 200])
    self.assertEqual(x.shape, (3, 80))  # 201 transitions -> 3 sequences.
    np.testing.assert_array_equal(x[:2, 1:], y[:2, :-1])
    # The last id (EOS) is only a target: x is PAD from there on.
    self.assertEqual((y[2, 40], x[2, 41], y[2, 41]), (EOS, PAD, PAD))
    self.assertEqual(_federated.shakespeare_sequences([])[0].shape, (0, 80))

  def test_emnist_images_invert_to_ink(self):
    pixels = np.array([[1., 0.], [0.5, 254 / 255.]], np.float32)
    np.testing.assert_array_equal(
        _federated.emnist_images(pixels[None])[0, ..., 0],
        [[0, 255], [128, 1]])

  def test_stackoverflow_tokens_and_next_word(self):
    vocab = {'a': 0, 'b': 1}
    tokens = _federated.stackoverflow_tokens(
        [b'a b c', b'b a b a b a'], vocab, sequence_length=4, vocab_size=10)
    oov = 3 + 10
    np.testing.assert_array_equal(
        tokens, [[BOS, 3, 4, oov, EOS], [BOS, 4, 3, 4, 3]])
    x, y = _federated.next_word_examples(tokens)
    # As FedJAX's tokenizer: x = ids[:-1], y = ids[1:], cut and PAD-padded.
    np.testing.assert_array_equal(x, [[BOS, 3, 4, oov], [BOS, 4, 3, 4]])
    np.testing.assert_array_equal(y, [[3, 4, oov, EOS], [4, 3, 4, 3]])
    short = _federated.stackoverflow_tokens([b'a'], vocab, 4)
    x, y = _federated.next_word_examples(short)
    np.testing.assert_array_equal(x, [[BOS, 3, PAD, PAD]])
    np.testing.assert_array_equal(y, [[3, EOS, PAD, PAD]])

  def test_vocabulary_counts_users_and_breaks_ties_by_word(self):
    clients = [('u1', {'tokens': [b'b a a', b'c']}),
               ('u2', {'tokens': [b'a c']}), ('u3', {'tokens': [b'd']})]
    counts = _federated.user_word_counts(iter(clients))
    self.assertEqual(counts, collections.Counter(a=2, c=2, b=1, d=1))
    self.assertEqual(_federated.top_words(counts, 3), ['a', 'c', 'b'])


class BuilderTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp(prefix='fedjax_ext_federated_')
    self.addCleanup(shutil.rmtree, self.root)
    self.files = os.path.join(self.root, 'extracted', 'datasets')
    os.makedirs(self.files)
    self.data_dir = os.path.join(self.root, 'data')

  def prepare(self, cls, config=None):
    builder = cls(config=config, data_dir=self.data_dir,
                  file_format=tfds.core.FileFormat.ARRAY_RECORD)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.join(self.root, 'extracted')))
    return builder

  @parameterized.named_parameters(('digits_only', 'digits_only', 10),
                                  ('full', 'full', 62))
  def test_federated_emnist(self, config, num_classes):
    prefix = 'fed_emnist_digitsonly' if config == 'digits_only' else (
        'fed_emnist')
    train = emnist_clients({'f0001_41': 3, 'f0000_14': 2, 'f0002_07': 4},
                           num_classes, seed=0)
    train['f0000_14']['label'][0] = num_classes - 1
    test = emnist_clients({'f0000_14': 1, 'f0001_41': 2, 'f0003_00': 1},
                          num_classes, seed=1)
    write_tff_h5(os.path.join(self.files, f'{prefix}_train.h5'), train)
    write_tff_h5(os.path.join(self.files, f'{prefix}_test.h5'), test)
    self.prepare(_federated.FederatedEmnist, config)
    ds = _datasets.load_dataset(f'federated_emnist/{config}',
                                data_dir=self.data_dir)
    self.assertEqual((ds.name, ds.num_classes),
                     (f'federated_emnist/{config}', num_classes))
    self.assertEqual(ds.train['x'].shape, (9, 28, 28, 1))
    self.assertEqual(ds.test['x'].shape, (4, 28, 28, 1))
    self.assertEqual(ds.train['x'].dtype, np.float32)
    self.assertEqual(ds.train['client_id'].dtype, np.int64)
    # Ids index the sorted union of both splits' writers.
    np.testing.assert_array_equal(ds.train['client_id'],
                                  [0, 0, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(ds.test['client_id'], [0, 1, 1, 3])
    # Writer f0000_14 comes first: its pixels, inverted, and labels.
    np.testing.assert_allclose(ds.train['x'][0, ..., 0],
                               1. - train['f0000_14']['pixels'][0],
                               atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(ds.train['y'][:2],
                                  train['f0000_14']['label'])
    parts = _partition.partition('natural', ds.train, 3, seed=0)
    self.assertEqual([len(p) for p in parts], [2, 3, 4])
    _validate.validate_partition(parts, 9)
    self.assertEqual(_datasets.default_partition(ds.name), 'natural')

  def test_default_emnist_config_is_digits_only(self):
    write_tff_h5(os.path.join(self.files, 'fed_emnist_digitsonly_train.h5'),
                 emnist_clients({'a': 1}, 10, 0))
    write_tff_h5(os.path.join(self.files, 'fed_emnist_digitsonly_test.h5'),
                 emnist_clients({'a': 1}, 10, 1))
    self.prepare(_federated.FederatedEmnist)
    ds = _datasets.load_dataset('federated_emnist', data_dir=self.data_dir)
    self.assertEqual(ds.name, 'federated_emnist/digits_only')

  def test_shakespeare(self):
    train = {'THE_TEMPEST_PROSPERO': {'snippets': [b'a' * 100, b'Hi~']},
             'HAMLET_HAMLET': {'snippets': [b'To be']}}
    test = {'HAMLET_HAMLET': {'snippets': [b'or not']},
            'THE_TEMPEST_PROSPERO': {'snippets': [b'x']}}
    write_tff_h5(os.path.join(self.files, 'shakespeare_train.h5'), train)
    write_tff_h5(os.path.join(self.files, 'shakespeare_test.h5'), test)
    self.prepare(_federated.Shakespeare)
    ds = _datasets.load_dataset('shakespeare', data_dir=self.data_dir)
    self.assertEqual((ds.name, ds.num_classes), ('shakespeare', 90))
    # HAMLET: 7 ids -> 1 sequence; PROSPERO: 102 + 5 ids -> 2 sequences.
    self.assertEqual(ds.train['x'].shape, (3, 80))
    self.assertEqual(ds.train['y'].shape, (3, 80))
    self.assertEqual(ds.train['x'].dtype, np.int32)
    np.testing.assert_array_equal(ds.train['client_id'], [0, 1, 1])
    x, y = _federated.shakespeare_sequences([b'To be'])
    np.testing.assert_array_equal(ds.train['x'][0], x[0])
    np.testing.assert_array_equal(ds.train['y'][0], y[0])
    self.assertIn(89, ds.train['y'][2])  # '~' is out of vocabulary.
    self.assertEqual(ds.test['x'].shape, (2, 80))
    parts = _partition.natural_partition(ds.train['client_id'])
    self.assertEqual([len(p) for p in parts], [1, 2])

  def write_stackoverflow(self):
    train = {'00000001': {'tokens': [b'how do i sort a list', b'use sorted'],
                          'tags': [b'python|list', b'python|list']},
             '00000002': {'tokens': [b'sort it in place'],
                          'tags': [b'python']},
             '00000003': {'tokens': [b'i do not know', b'a list', b'list'],
                          'tags': [b'java', b'java', b'java']}}
    test = {'00000002': {'tokens': [b'sort a dict'], 'tags': [b'python']},
            '00000004': {'tokens': [b'unknownword list'], 'tags': [b'c']}}
    write_tff_h5(os.path.join(self.files, 'stackoverflow_train.h5'), train)
    write_tff_h5(os.path.join(self.files, 'stackoverflow_test.h5'), test)

  def test_stackoverflow_next_word(self):
    self.write_stackoverflow()
    builder = self.prepare(_federated.StackOverflow, 'next_word')
    ds = _datasets.load_dataset('stackoverflow', data_dir=self.data_dir)
    self.assertEqual((ds.name, ds.num_classes),
                     ('stackoverflow/next_word', 10004))
    self.assertEqual(ds.train['x'].shape, (6, 20))
    self.assertEqual(ds.train['y'].shape, (6, 20))
    np.testing.assert_array_equal(ds.train['client_id'], [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.test['client_id'], [1, 3])
    # The words of 2 users first (by spelling), then those of 1 user.
    reloaded = tfds.builder_from_directory(os.fspath(builder.data_path))
    vocabulary = reloaded.info.metadata['vocabulary']
    self.assertEqual(vocabulary[:6], ['a', 'do', 'i', 'list', 'sort', 'how'])
    ids = {w: 3 + i for i, w in enumerate(vocabulary)}
    sentence = [ids[w] for w in 'how do i sort a list'.split()]
    np.testing.assert_array_equal(ds.train['x'][0, :7], [BOS] + sentence)
    np.testing.assert_array_equal(ds.train['y'][0, :7], sentence + [EOS])
    self.assertTrue((ds.train['y'][0, 7:] == PAD).all())
    self.assertEqual(ds.test['y'][1, 0], 10003)  # unknownword -> OOV.
    parts = _partition.natural_partition(ds.train['client_id'])
    self.assertEqual([len(p) for p in parts], [2, 1, 3])

  def test_stackoverflow_subsampled_config(self):
    self.write_stackoverflow()
    config = _federated.StackOverflowConfig(
        name='tiny', max_train_clients=2, max_test_examples=1, vocab_size=4)
    builder = self.prepare(_federated.StackOverflow, config)
    train, test = builder.as_data_source(split=['train', 'test'])
    clients = {int(train[i]['client_id']) for i in range(len(train))}
    self.assertLen(clients, 2)
    self.assertLen(test, 1)
    # Vocabulary 4: ids 3..6, OOV 7.
    self.assertLessEqual(max(int(train[i]['tokens'].max())
                             for i in range(len(train))), 7)

  def test_not_prepared_names_the_prepare_command(self):
    with self.assertRaises(_tfds.DatasetNotFoundError) as caught:
      _datasets.load_dataset('shakespeare', data_dir=self.data_dir)
    message = str(caught.exception)
    self.assertIn('python -m fedjax_ext.data.prepare --dataset=shakespeare '
                  f'--data_dir={self.data_dir}', message)
    self.assertIn("pip install -e '.[prepare]'", message)
    self.assertIn(_federated.SOURCES['shakespeare'].url, message)
    self.assertFalse(os.path.exists(self.data_dir))  # Nothing written.
    with self.assertRaisesRegex(ValueError, 'digits_only, full'):
      _datasets.load_dataset('federated_emnist/letters',
                             data_dir=self.data_dir)


class SourcesTest(absltest.TestCase):

  def test_sources_are_tff_archives_with_checksums(self):
    self.assertEqual(sorted(_federated.SOURCES),
                     ['federated_emnist/digits_only', 'federated_emnist/full',
                      'shakespeare', 'stackoverflow'])
    for source in _federated.SOURCES.values():
      self.assertTrue(source.url.startswith(_federated.TFF_URL))
      self.assertRegex(source.sha256, '^[0-9a-f]{64}$')
    self.assertEqual(
        _federated.source_of('federated_emnist', None).filename,
        'fed_emnist_digitsonly.tar.bz2')
    self.assertEqual(_federated.source_of('federated_emnist', 'full').filename,
                     'fed_emnist.tar.bz2')
    self.assertEqual(
        _federated.source_of('stackoverflow', 'next_word_1k').filename,
        'stackoverflow.tar.bz2')

  def test_default_partition(self):
    for name in ('leaf_synthetic', 'leaf_synthetic/0_0', 'federated_emnist',
                 'federated_emnist/full', 'shakespeare',
                 'stackoverflow/next_word'):
      self.assertEqual(_datasets.default_partition(name), 'natural')
    for name in ('digits', 'mnist', 'emnist/balanced', 'cifar100', 'nope'):
      self.assertEqual(_datasets.default_partition(name), 'dirichlet')


if __name__ == '__main__':
  absltest.main()
