"""TFDS builders for the datasets that need no download.

Both are ordinary `tfds.core.GeneratorBasedBuilder`s, prepared locally as
array_record files (no TensorFlow needed) and read back with
`builder.as_data_source`:

* ``digits``: scikit-learn's bundled copy of the UCI optical recognition of
  handwritten digits test set (1,797 8x8 images, pixel values 0..16, 10
  classes). Split 80/20 per class (round(0.2 n_c) to test, seed 0):
  1,438 train / 359 test.
* ``leaf_synthetic``: the LEAF / FedProx Synthetic(alpha, beta) generator
  (`_synthetic`), one BuilderConfig per (alpha, beta) setting, with the
  device id as ``client_id``.

Importing this module registers both names with TFDS, so
``tfds.builder('leaf_synthetic/0.5_0.5', data_dir=...)`` works too.

References:
  Alpaydin and Kaynak, `Optical Recognition of Handwritten Digits
  <https://doi.org/10.24432/C50P49>`_, UCI Machine Learning Repository, 1998.

  Li et al., `Federated Optimization in Heterogeneous Networks
  <https://arxiv.org/abs/1812.06127>`_, MLSys 2020.
"""

import dataclasses

import numpy as np
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from fedjax_ext.data import _synthetic

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_VALUE = 16  # Pixel values are counts of set cells in 4x4 blocks.


def stratified_split(labels: np.ndarray, *, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) rows; ``round(f * n_c)`` of class c go to test."""
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    test.append(rows[:int(round(test_fraction * len(rows)))])
  test = np.sort(np.concatenate(test))
  return np.setdiff1d(np.arange(len(labels)), test), test


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits; 1,438 train / 359 test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 80/20 split, seed 0.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('8x8 handwritten digits bundled with scikit-learn, '
                     'pixel values 0..16.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://doi.org/10.24432/C50P49',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    digits = sk_datasets.load_digits()
    train, test = stratified_split(digits.target,
                                   test_fraction=DIGITS_TEST_FRACTION,
                                   seed=DIGITS_SPLIT_SEED)
    images = digits.images.astype(np.uint8)[..., None]
    return {'train': self._generate_examples(images, digits.target, train),
            'test': self._generate_examples(images, digits.target, test)}

  def _generate_examples(self, images, labels, rows):
    for row in rows:
      yield int(row), {'image': images[row], 'label': int(labels[row])}


@dataclasses.dataclass(eq=False, kw_only=True)
class LeafSyntheticConfig(tfds.core.BuilderConfig):
  """Synthetic(alpha, beta), or the iid variant."""
  spec: _synthetic.SyntheticSpec = _synthetic.DEFAULT_SPEC


def _synthetic_config(name: str, spec: _synthetic.SyntheticSpec,
                      description: str) -> LeafSyntheticConfig:
  return LeafSyntheticConfig(name=name, spec=spec, description=description)


class LeafSynthetic(tfds.core.GeneratorBasedBuilder):
  """LEAF / FedProx Synthetic(alpha, beta): 30 devices, 60 features."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'FedProx generator, seed 0, 90/10 per device.'}
  BUILDER_CONFIGS = [
      _synthetic_config('1_1', _synthetic.SyntheticSpec(alpha=1., beta=1.),
                        'Synthetic(1, 1): model and input heterogeneity.'),
      _synthetic_config('0.5_0.5',
                        _synthetic.SyntheticSpec(alpha=.5, beta=.5),
                        'Synthetic(0.5, 0.5).'),
      _synthetic_config('0_0', _synthetic.SyntheticSpec(alpha=0., beta=0.),
                        'Synthetic(0, 0): W_k, b_k, v_k still differ '
                        '(each ~ N(0, 1)).'),
      _synthetic_config('iid',
                        _synthetic.SyntheticSpec(alpha=0., beta=0., iid=True),
                        'Synthetic IID: one W, b and v = 0 for all devices.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '1_1'

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Synthetic federated softmax-regression data of '
                     'FedProx (Li et al., 2020). client_id is the device.'),
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(spec.num_features,),
                                      dtype=np.float32),
            'y': tfds.features.ClassLabel(num_classes=spec.num_classes),
            'client_id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('x', 'y'),
        homepage='https://github.com/litian96/FedProx',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    data = _synthetic.generate(self.builder_config.spec)
    return {split: self._generate_examples(columns)
            for split, columns in data.items()}

  def _generate_examples(self, columns):
    for i in range(len(columns['y'])):
      yield i, {name: column[i] for name, column in columns.items()}
