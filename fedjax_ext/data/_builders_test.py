"""The local TFDS builders prepare real array_record datasets, no TF needed."""

import glob
import os
import shutil
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from fedjax_ext.data import _builders
from fedjax_ext.data import _synthetic


def read_all(builder, split):
  source = builder.as_data_source(split=split)
  return source.__getitems__(list(range(len(source))))


class StratifiedSplitTest(absltest.TestCase):

  def test_each_class_sends_rounded_fraction_to_test(self):
    labels = np.repeat([0, 1, 2], [10, 7, 3])
    train, test = _builders.stratified_split(labels, test_fraction=0.2,
                                             seed=0)
    np.testing.assert_array_equal(np.bincount(labels[test]), [2, 1, 1])
    np.testing.assert_array_equal(np.sort(np.r_[train, test]), np.arange(20))
    again = _builders.stratified_split(labels, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(test, again[1])


class BuildersTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='fedjax_ext_builders_')

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    super().tearDownClass()

  def builder(self, cls, config=None):
    return cls(config=config, data_dir=self.data_dir,
               file_format=tfds.core.FileFormat.ARRAY_RECORD)

  def test_tensorflow_is_not_needed(self):
    # The whole prepare/read path below runs in this process.
    self.builder(_builders.Digits).download_and_prepare()
    self.assertNotIn('tensorflow', sys.modules)

  def test_digits_prepares_array_record_and_reads_back_sklearn_data(self):
    builder = self.builder(_builders.Digits)
    builder.download_and_prepare()
    self.assertTrue(builder.is_prepared())
    files = sorted(os.path.basename(f) for f in glob.glob(
        os.path.join(builder.data_dir, '*.array_record*')))
    self.assertEqual(files, ['digits-test.array_record-00000-of-00001',
                             'digits-train.array_record-00000-of-00001'])
    train, test = read_all(builder, 'train'), read_all(builder, 'test')
    self.assertEqual((len(train), len(test)), (1438, 359))
    self.assertEqual(train[0]['image'].shape, (8, 8, 1))
    self.assertEqual(train[0]['image'].dtype, np.uint8)
    # Together the splits are exactly scikit-learn's 1,797 digits.
    digits = sk_datasets.load_digits()
    def rows(images, labels):
      flat = np.c_[np.reshape(images, (len(labels), -1)), labels]
      return flat[np.lexsort(flat.T[::-1])]
    ours = train + test
    np.testing.assert_array_equal(
        rows([e['image'] for e in ours], [e['label'] for e in ours]),
        rows(digits.images.astype(np.uint8), digits.target))
    # Stratified: every class sends round(0.2 * n_c) examples to test.
    np.testing.assert_array_equal(
        np.bincount([e['label'] for e in test]),
        np.round(0.2 * np.bincount(digits.target)).astype(int))

  @parameterized.parameters('1_1', 'iid')  # 0.5_0.5 is built below.
  def test_leaf_synthetic_configs_match_the_generator(self, config):
    builder = self.builder(_builders.LeafSynthetic, config)
    builder.download_and_prepare()
    self.assertEqual(builder.builder_config.name, config)
    self.assertTrue(builder.data_dir.endswith(
        os.path.join('leaf_synthetic', config, '1.0.0')))
    expected = _synthetic.generate(builder.builder_config.spec)
    for split in ('train', 'test'):
      items = read_all(builder, split)
      # disable_shuffling keeps the generator's order.
      np.testing.assert_array_equal(np.stack([e['x'] for e in items]),
                                    expected[split]['x'])
      np.testing.assert_array_equal([e['y'] for e in items],
                                    expected[split]['y'])
      np.testing.assert_array_equal([e['client_id'] for e in items],
                                    expected[split]['client_id'])

  def test_registered_with_tfds_by_name_and_config(self):
    self.builder(_builders.LeafSynthetic, '0.5_0.5').download_and_prepare()
    builder = tfds.builder('leaf_synthetic/0.5_0.5', data_dir=self.data_dir)
    self.assertIsInstance(builder, _builders.LeafSynthetic)
    self.assertEqual(builder.builder_config.spec.alpha, 0.5)
    self.assertTrue(builder.is_prepared())
    self.assertEqual(tfds.builder('leaf_synthetic').builder_config.name, '1_1')


if __name__ == '__main__':
  absltest.main()
