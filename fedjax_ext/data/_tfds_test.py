"""Catalogue loaders under `tfds.testing.mock_data`, and their errors.

`mock_data` patches `DatasetBuilder.as_data_source` (and so
`tfds.data_source`), the data dir and GCS access. In tfds 4.9.10 its
default fake source's batched ``__getitems__`` is attached to a MagicMock
without binding ``self`` and fails when called, so these tests pass
`as_data_source_fn`: a fake source that serves TFDS's own random examples
of each dataset's real features (`RandomFakeGenerator`).
"""

import os
import shutil
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from fedjax_ext.data import _tfds
from fedjax_ext.data import _validate

NUM_EXAMPLES = 12


class FakeSource:
  """TFDS's fake examples of `features`, served in batches."""

  def __init__(self, features, num_examples=NUM_EXAMPLES):
    self.generator = mocking.RandomFakeGenerator(features, num_examples)
    self.num_examples = num_examples
    self.calls = 0

  def __len__(self):
    return self.num_examples

  def __getitems__(self, keys):
    self.calls += 1
    return [self.generator[k] for k in keys]


def make_tempdir(test):
  """A fresh directory removed after `test` (absl's needs parsed flags)."""
  path = tempfile.mkdtemp(prefix='fedjax_ext_tfds_')
  test.addCleanup(shutil.rmtree, path)
  return path


def fake_as_data_source(builder, split, **kwargs):
  del kwargs
  return [FakeSource(builder.info.features) for _ in split]


def offline_mock_data():
  """mock_data from the dataset code, with any network use failing."""
  stack = mock.patch('socket.socket.connect',
                     side_effect=AssertionError('network access'))
  return stack, tfds.testing.mock_data(
      num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE,
      as_data_source_fn=fake_as_data_source)


class CatalogueTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('mnist', 'mnist', 'mnist', (28, 28, 1), 10),
      ('emnist', 'emnist', 'emnist/byclass', (28, 28, 1), 62),
      ('fashion_mnist', 'fashion_mnist', 'fashion_mnist', (28, 28, 1), 10),
      ('cifar10', 'cifar10', 'cifar10', (32, 32, 3), 10),
      ('cifar100', 'cifar100', 'cifar100', (32, 32, 3), 100),
  )
  def test_shapes_dtypes_and_scaling(self, name, tfds_name, shape,
                                     num_classes):
    no_network, mocked = offline_mock_data()
    with no_network, mocked:
      loaded_name, train, test, classes = _tfds.load_catalogue(
          name, data_dir=make_tempdir(self))
      features = tfds.builder(tfds_name).info.features
    self.assertEqual((loaded_name, classes), (tfds_name, num_classes))
    for examples in (train, test):
      self.assertEqual(examples['x'].shape, (NUM_EXAMPLES,) + shape)
      self.assertEqual(examples['x'].dtype, np.float32)
      self.assertEqual(examples['y'].dtype, np.int32)
      self.assertBetween(examples['x'].min(), 0., 1.)
      self.assertBetween(examples['x'].max(), 0., 1.)
      _validate.validate_examples(examples, num_classes=classes, where=name)
    # Exactly the fake pixels / 255 (EMNIST transposed upright), in order.
    fake = FakeSource(features).generator
    for i in (0, NUM_EXAMPLES - 1):
      image = fake[i]['image']
      if name == 'emnist':
        image = np.swapaxes(image, 0, 1)
      np.testing.assert_allclose(train['x'][i], image / 255., rtol=1e-6)
      self.assertEqual(train['y'][i], fake[i]['label'])

  def test_config_replaces_the_default(self):
    no_network, mocked = offline_mock_data()
    with no_network, mocked:
      name, train, _, classes = _tfds.load_catalogue(
          'emnist', data_dir='/unused', config='balanced')
    self.assertEqual((name, classes), ('emnist/balanced', 47))
    self.assertEqual(train['x'].shape[1:], (28, 28, 1))

  def test_absent_dataset_says_where_and_how(self):
    data_dir = make_tempdir(self)
    with self.assertRaises(_tfds.DatasetNotFoundError) as caught:
      _tfds.load_catalogue('cifar10', data_dir=data_dir)
    message = str(caught.exception)
    self.assertIsInstance(caught.exception, _validate.DataError)
    self.assertIn(os.path.join(data_dir, 'cifar10', '3.0.2'), message)
    self.assertIn('python -m fedjax_ext.data.prepare --dataset=cifar10 '
                  f'--data_dir={data_dir}', message)
    self.assertIn("the [prepare] extra: pip install -e '.[prepare]'",
                  message)
    self.assertNotIn('tfds build', message)
    self.assertIsNone(caught.exception.__cause__)
    self.assertEqual(os.listdir(data_dir), [])  # Nothing was downloaded.

  def test_tfrecord_copy_is_reported_as_wrong_format(self):
    data_dir = make_tempdir(self)
    builder = tfds.builder('mnist', data_dir=data_dir, file_format='tfrecord')
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    with self.assertRaisesRegex(_tfds.DatasetNotFoundError,
                                r'prepared at .*TFRECORD.*must be '
                                r'array_record'):
      _tfds.load_catalogue('mnist', data_dir=data_dir)


class PreparedOnDiskTest(parameterized.TestCase):
  """The real read path: catalogue array_record files, PNG decoding, no TF.

  The catalogue builder itself writes the files, with its
  `_split_generators` swapped for a few fake images (nothing downloaded).
  """

  @parameterized.named_parameters(('mnist', 'mnist', (28, 28, 1)),
                                  ('cifar10', 'cifar10', (32, 32, 3)))
  def test_reads_what_the_catalogue_builder_wrote(self, name, shape):
    data_dir = make_tempdir(self)
    images = np.random.default_rng(0).integers(0, 256, (5,) + shape,
                                               dtype=np.uint8)
    def fake_split_generators(builder, dl_manager):
      del builder, dl_manager
      def generate(rows):
        for i in rows:
          example = {'image': PIL.Image.fromarray(images[i].squeeze()),
                     'label': i}
          if name == 'cifar10':
            example['id'] = f'fake_{i}'
          yield i, example
      return {'train': generate([0, 1, 2]), 'test': generate([3, 4])}
    builder_cls = type(tfds.builder(name))
    no_network = mock.patch('socket.socket.connect',
                            side_effect=AssertionError('network access'))
    with no_network, mock.patch.object(builder_cls, '_split_generators',
                                       fake_split_generators):
      tfds.builder(name, data_dir=data_dir,
                   file_format='array_record').download_and_prepare()
      _, train, test, num_classes = _tfds.load_catalogue(name,
                                                         data_dir=data_dir)
    self.assertEqual(num_classes, 10)
    self.assertEqual(train['x'].shape, (3,) + shape)
    # TFDS shuffles catalogue splits on write; the label is the image row.
    for examples, rows in ((train, [0, 1, 2]), (test, [3, 4])):
      order = np.argsort(examples['y'])
      np.testing.assert_array_equal(examples['y'][order], rows)
      np.testing.assert_array_equal(np.round(examples['x'][order] * 255),
                                    images[rows])
    self.assertNotIn('tensorflow', sys.modules)
    # The decoded columns were cached; a second load reads only the cache.
    cache_dir = os.path.join(data_dir, name, str(builder_cls.VERSION),
                             _tfds.CACHE_DIR)
    self.assertEqual(sorted(os.listdir(cache_dir)),
                     ['test.image.npy', 'test.label.npy',
                      'test.manifest.json', 'train.image.npy',
                      'train.label.npy', 'train.manifest.json'])
    with mock.patch.object(_tfds, 'read_columns',
                           side_effect=AssertionError('decoded again')):
      _, cached_train, _, _ = _tfds.load_catalogue(name, data_dir=data_dir)
    np.testing.assert_array_equal(cached_train['x'], train['x'])
    np.testing.assert_array_equal(cached_train['y'], train['y'])
    # A cache whose length disagrees with the split is ignored and rewritten.
    np.save(os.path.join(cache_dir, 'train.label.npy'), np.zeros(7, np.int64))
    _, reread, _, _ = _tfds.load_catalogue(name, data_dir=data_dir)
    np.testing.assert_array_equal(reread['y'], train['y'])
    self.assertLen(np.load(os.path.join(cache_dir, 'train.label.npy')), 3)
    # One label altered in place, same shape and dtype: the content hash
    # disagrees, so the cache is ignored (one warning) and rebuilt.
    label_path = os.path.join(cache_dir, 'train.label.npy')
    altered = np.load(label_path)
    altered[0] = altered[0] + 1
    np.save(label_path, altered)
    with self.assertLogs(level='WARNING') as logs:
      _, reread, _, _ = _tfds.load_catalogue(name, data_dir=data_dir)
    np.testing.assert_array_equal(reread['y'], train['y'])
    self.assertLen(logs.output, 1)
    self.assertIn("column 'label' does not match its SHA-256",
                  logs.output[0])
    self.assertNotIn('\n', logs.output[0])
    np.testing.assert_array_equal(np.load(label_path), train['y'])
    with mock.patch.object(_tfds, 'read_columns',
                           side_effect=AssertionError('decoded again')):
      _, cached_train, _, _ = _tfds.load_catalogue(name, data_dir=data_dir)
    np.testing.assert_array_equal(cached_train['y'], train['y'])


class CacheTest(parameterized.TestCase):
  """The decoded cache's content manifest, without a TFDS builder."""

  IDENTITY = {'dataset': 'toy/1.0.0', 'version': '1.0.0', 'split': 'train',
              'num_examples': 4, 'files': ['toy-train.array_record-00000'],
              'shard_lengths': [4]}

  def setUp(self):
    super().setUp()
    cache_dir = make_tempdir(self)
    self.files = {key: os.path.join(cache_dir, f'train.{key}.npy')
                  for key in ('image', 'label')}
    self.manifest = os.path.join(cache_dir, 'train.manifest.json')
    self.columns = {'image': np.arange(24, dtype=np.uint8).reshape(4, 2, 3),
                    'label': np.array([0, 1, 2, 3])}
    _tfds._save_cache(self.files, self.manifest, self.columns,
                      self.IDENTITY)

  def load(self, identity=None):
    return _tfds._load_cache(self.files, self.manifest,
                             identity or self.IDENTITY)

  def test_round_trip_is_silent(self):
    with mock.patch.object(_tfds.logging, 'warning') as warning:
      columns = self.load()
    warning.assert_not_called()
    for key, column in self.columns.items():
      np.testing.assert_array_equal(columns[key], column)
      self.assertEqual(columns[key].dtype, column.dtype)

  def test_nothing_cached_is_silent(self):
    for path in list(self.files.values()) + [self.manifest]:
      os.remove(path)
    with mock.patch.object(_tfds.logging, 'warning') as warning:
      self.assertIsNone(self.load())
    warning.assert_not_called()

  @parameterized.named_parameters(
      ('label_altered_same_shape',
       lambda t: np.save(t.files['label'], np.array([0, 1, 2, 9])),
       "column 'label' does not match its SHA-256"),
      ('dtype_changed',
       lambda t: np.save(t.files['label'], np.array([0, 1, 2, 3], np.int8)),
       "column 'label' is |i1"),
      ('column_truncated',
       lambda t: open(t.files['image'], 'r+b').truncate(100),
       "column 'image' unreadable"),
      ('column_missing', lambda t: os.remove(t.files['image']),
       "column 'image' unreadable"),
      ('manifest_missing', lambda t: os.remove(t.manifest),
       'no content manifest'),
      ('manifest_garbage',
       lambda t: open(t.manifest, 'w').write('{not json'),
       'unreadable manifest'),
  )
  def test_untrusted_cache_is_ignored_with_one_warning(self, damage,
                                                       expected):
    damage(self)
    with self.assertLogs(level='WARNING') as logs:
      self.assertIsNone(self.load())
    self.assertLen(logs.output, 1)
    self.assertIn(expected, logs.output[0])
    self.assertIn('re-reading toy/1.0.0/train', logs.output[0])

  @parameterized.named_parameters(
      ('other_version', {'version': '2.0.0'}),
      ('other_example_count', {'num_examples': 5}),
      ('other_files', {'files': ['toy-train.array_record-00001']}),
  )
  def test_cache_of_another_source_is_ignored(self, change):
    with self.assertLogs(level='WARNING') as logs:
      self.assertIsNone(self.load({**self.IDENTITY, **change}))
    self.assertIn('decoded from', logs.output[0])

  def test_digest_covers_dtype_shape_and_bytes(self):
    column = np.arange(6, dtype=np.int32)
    digests = {_tfds.column_digest(c) for c in (
        column, column.reshape(2, 3), column.astype(np.uint32),
        column + np.eye(1, 6, dtype=np.int32)[0])}
    self.assertLen(digests, 4)
    self.assertEqual(_tfds.column_digest(column),
                     _tfds.column_digest(column.copy()))
    # Non-contiguous views hash as their contiguous copy.
    wide = np.arange(12, dtype=np.int32).reshape(6, 2)
    self.assertEqual(_tfds.column_digest(wide[:, 0]),
                     _tfds.column_digest(np.ascontiguousarray(wide[:, 0])))

  def test_interrupted_rewrite_leaves_no_vouching_manifest(self):
    with mock.patch.object(np, 'save', side_effect=OSError('disk full')):
      _tfds._save_cache(self.files, self.manifest,
                        {k: c + 1 for k, c in self.columns.items()},
                        self.IDENTITY)
    self.assertFalse(os.path.exists(self.manifest))
    with self.assertLogs(level='WARNING'):
      self.assertIsNone(self.load())
    self.assertEqual(sorted(os.listdir(os.path.dirname(self.manifest))),
                     ['train.image.npy', 'train.label.npy'])


class ReadTest(parameterized.TestCase):

  def test_read_columns_in_chunks(self):
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(2, 3), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=4)})
    source = FakeSource(features, num_examples=5)
    with mock.patch.object(_tfds, 'READ_CHUNK', 2):
      columns = _tfds.read_columns(source, ('image', 'label'), where='t')
    self.assertEqual(source.calls, 3)
    self.assertEqual(columns['image'].shape, (5, 2, 3))
    np.testing.assert_array_equal(columns['label'],
                                  [source.generator[i]['label']
                                   for i in range(5)])

  def test_empty_split_named(self):
    with self.assertRaisesRegex(_validate.DataError, 'toy/test: .*empty'):
      _tfds.read_columns([], ('image',), where='toy/test')

  def test_image_examples_adds_channel_axis_and_scales(self):
    examples = _tfds.image_examples(np.full((2, 4, 4), 8, np.uint8),
                                    np.array([1, 0]), max_value=16)
    self.assertEqual(examples['x'].shape, (2, 4, 4, 1))
    np.testing.assert_array_equal(examples['x'], 0.5)
    self.assertEqual(examples['y'].dtype, np.int32)

  def test_data_dir_precedence(self):
    with mock.patch.dict(os.environ, {_tfds.DATA_DIR_ENV: '/from/env'}):
      self.assertEqual(_tfds.resolve_data_dir('/given'), '/given')
      self.assertEqual(_tfds.resolve_data_dir(None), '/from/env')
    with mock.patch.dict(os.environ):
      os.environ.pop(_tfds.DATA_DIR_ENV, None)
      self.assertEqual(_tfds.resolve_data_dir(None),
                       os.path.expanduser(tfds.core.constants.DATA_DIR))


if __name__ == '__main__':
  absltest.main()
