"""`load_dataset`: names, shapes, caching of local builds, validation."""

import glob
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _builders
from fedjax_ext.data import _datasets
from fedjax_ext.data import _partition
from fedjax_ext.data import _tfds
from fedjax_ext.data import _tfds_test
from fedjax_ext.data import _validate


def file_times(data_dir):
  return {f: os.stat(f).st_mtime_ns for f in glob.glob(
      os.path.join(data_dir, '**', '*'), recursive=True)}


class LocalDatasetsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='fedjax_ext_datasets_')

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    super().tearDownClass()

  def test_digits(self):
    ds = _datasets.load_dataset('digits', data_dir=self.data_dir)
    self.assertEqual((ds.name, ds.num_classes), ('digits', 10))
    self.assertEqual(ds.train['x'].shape, (1438, 8, 8, 1))
    self.assertEqual(ds.test['x'].shape, (359, 8, 8, 1))
    self.assertEqual(sorted(ds.train), ['x', 'y'])
    for examples in ds.train, ds.test:
      self.assertEqual(examples['x'].dtype, np.float32)
      self.assertEqual(examples['y'].dtype, np.int32)
      self.assertEqual((examples['x'].min(), examples['x'].max()), (0., 1.))
      # Scaled from the 17 grey levels 0..16.
      np.testing.assert_array_equal(examples['x'] * 16,
                                    np.round(examples['x'] * 16))
      self.assertEqual(set(examples['y'].tolist()), set(range(10)))

  def test_second_load_does_not_rebuild(self):
    data_dir = tempfile.mkdtemp(prefix='fedjax_ext_cache_')
    self.addCleanup(shutil.rmtree, data_dir)
    first = _datasets.load_dataset('digits', data_dir=data_dir)
    times = file_times(data_dir)
    self.assertTrue(any(f.endswith('.array_record-00000-of-00001')
                        for f in times))
    with mock.patch.object(_builders.Digits, '_split_generators',
                           side_effect=AssertionError('rebuilt')) as gen:
      second = _datasets.load_dataset('digits', data_dir=data_dir)
    gen.assert_not_called()
    self.assertEqual(file_times(data_dir), times)
    np.testing.assert_array_equal(first.train['x'], second.train['x'])
    np.testing.assert_array_equal(first.test['y'], second.test['y'])

  def test_env_var_picks_the_data_dir(self):
    data_dir = tempfile.mkdtemp(prefix='fedjax_ext_env_')
    self.addCleanup(shutil.rmtree, data_dir)
    with mock.patch.dict(os.environ, {_tfds.DATA_DIR_ENV: data_dir}):
      _datasets.load_dataset('digits')
    self.assertTrue(os.path.exists(
        os.path.join(data_dir, 'digits', '1.0.0', 'dataset_info.json')))

  def test_leaf_synthetic_default_has_30_natural_clients(self):
    ds = _datasets.load_dataset('leaf_synthetic', data_dir=self.data_dir)
    self.assertEqual((ds.name, ds.num_classes), ('leaf_synthetic/1_1', 10))
    self.assertEqual(ds.train['x'].shape, (4833, 60))
    self.assertEqual(ds.test['x'].shape, (552, 60))
    self.assertEqual(ds.train['x'].dtype, np.float32)
    self.assertEqual(ds.train['y'].dtype, np.int32)
    self.assertEqual(ds.train['client_id'].dtype, np.int64)
    self.assertTrue(np.isfinite(ds.train['x']).all())
    for examples in ds.train, ds.test:
      parts = _partition.natural_partition(examples['client_id'])
      self.assertLen(parts, 30)
      _validate.validate_partition(parts, len(examples['y']))
    parts = _partition.partition('natural', ds.train, 30, seed=0)
    self.assertGreaterEqual(min(len(p) for p in parts), 45)  # 0.9 * 50.

  def test_leaf_synthetic_config_by_name(self):
    default = _datasets.load_dataset('leaf_synthetic', data_dir=self.data_dir)
    half = _datasets.load_dataset('leaf_synthetic/0.5_0.5',
                                  data_dir=self.data_dir)
    self.assertEqual(half.name, 'leaf_synthetic/0.5_0.5')
    # Same device sizes (drawn first from the seed), different data.
    np.testing.assert_array_equal(half.train['client_id'],
                                  default.train['client_id'])
    self.assertFalse(np.allclose(half.train['x'], default.train['x']))


class NamesTest(parameterized.TestCase):

  def test_datasets(self):
    self.assertEqual(_datasets.DATASETS,
                     ('digits', 'leaf_synthetic', 'bbc_news', 'mnist', 'emnist',
                      'fashion_mnist', 'cifar10', 'cifar100',
                      'federated_emnist', 'shakespeare', 'stackoverflow'))
    self.assertEqual(_datasets.NATURAL_CLIENTS,
                     ('leaf_synthetic', 'federated_emnist', 'shakespeare',
                      'stackoverflow'))

  @parameterized.parameters('imagenet', 'mnist_corrupted', '')
  def test_unknown_name_lists_datasets(self, name):
    with self.assertRaisesRegex(ValueError, 'digits, leaf_synthetic, bbc_news, mnist, '
                                'emnist, fashion_mnist, cifar10, cifar100, '
                                'federated_emnist, shakespeare, '
                                'stackoverflow'):
      _datasets.load_dataset(name, data_dir='/nonexistent')

  def test_unknown_config_lists_configs(self):
    with self.assertRaisesRegex(ValueError, '1_1, 0.5_0.5, 0_0, iid'):
      _datasets.load_dataset('leaf_synthetic/2_2', data_dir='/nonexistent')
    with self.assertRaisesRegex(ValueError, "'digits'; configs: none"):
      _datasets.load_dataset('digits/big', data_dir='/nonexistent')


class CatalogueTest(parameterized.TestCase):

  def test_emnist_under_mock_data(self):
    no_network, mocked = _tfds_test.offline_mock_data()
    with no_network, mocked:
      ds = _datasets.load_dataset('emnist', data_dir='/unused')
    self.assertEqual((ds.name, ds.num_classes), ('emnist/byclass', 62))
    self.assertEqual(ds.train['x'].shape,
                     (_tfds_test.NUM_EXAMPLES, 28, 28, 1))
    self.assertEqual(ds.test['y'].dtype, np.int32)

  def test_bad_catalogue_labels_fail_validation(self):
    def bad_labels(builder, split, **kwargs):
      del kwargs
      sources = _tfds_test.fake_as_data_source(builder, split)
      for source in sources:
        source.generator = [{'image': np.zeros((28, 28, 1), np.uint8),
                             'label': 10}] * source.num_examples
      return sources
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=bad_labels):
      with self.assertRaisesRegex(_validate.DataError,
                                  r"mnist/train: column 'y' .*\[0, 10\).*"
                                  'value 10'):
        _datasets.load_dataset('mnist', data_dir='/unused')

  def test_absent_catalogue_dataset(self):
    data_dir = tempfile.mkdtemp(prefix='fedjax_ext_absent_')
    self.addCleanup(shutil.rmtree, data_dir)
    with self.assertRaisesRegex(
        _tfds.DatasetNotFoundError,
        'python -m fedjax_ext.data.prepare --dataset=fashion_mnist '
        f'--data_dir={data_dir}'):
      _datasets.load_dataset('fashion_mnist', data_dir=data_dir)
    with self.assertRaisesRegex(_tfds.DatasetNotFoundError,
                                '--dataset=emnist/balanced '):
      _datasets.load_dataset('emnist/balanced', data_dir=data_dir)


if __name__ == '__main__':
  absltest.main()
