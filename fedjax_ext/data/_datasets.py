"""`load_dataset`: a dataset name -> validated NumPy train/test columns.

Names are ``NAME`` or ``NAME/CONFIG`` (a TFDS builder config), e.g.
``leaf_synthetic/0.5_0.5`` or ``emnist/balanced``. ``digits`` and
``leaf_synthetic`` are built locally into the data dir on first use (TFDS
array_record files, about a second) and read from there afterwards;
the catalogue datasets must have been prepared there beforehand (see
`_tfds`).

The data dir is the `data_dir` argument, else ``$FEDJAX_EXT_DATA_DIR``,
else TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _builders
from fedjax_ext.data import _tfds
from fedjax_ext.data import _validate

LOCAL_BUILDERS = {
    'digits': _builders.Digits,
    'leaf_synthetic': _builders.LeafSynthetic,
}
DATASETS = tuple(LOCAL_BUILDERS) + tuple(_tfds.CATALOGUE)


class Dataset(NamedTuple):
  """Pooled train and test columns of one dataset."""
  name: str  # Canonical: with the TFDS config if it has configs.
  train: dict[str, np.ndarray]  # 'x' float32 [N, ...], 'y' int32 [N], ...
  test: dict[str, np.ndarray]  # The same columns as `train`.
  num_classes: int


def _parse_name(name: str) -> tuple[str, str | None]:
  """'base/config' -> (base, config); checks base is known."""
  base, _, config = name.partition('/')
  if base not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; choose one of '
                     f'{", ".join(DATASETS)} (optionally /CONFIG).')
  return base, config or None


def prepare_local(name: str, *, config: str | None,
                  data_dir: str) -> tfds.core.DatasetBuilder:
  """The local builder, prepared as array_record unless it already is."""
  cls = LOCAL_BUILDERS[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config is not None and config not in configs:
    choices = ', '.join(configs) if configs else 'none'
    raise ValueError(f'Unknown config {config!r} of dataset {name!r}; '
                     f'configs: {choices}.')
  builder = cls(config=config, data_dir=data_dir,
                file_format=tfds.core.FileFormat.ARRAY_RECORD)
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder


def _local_splits(builder: tfds.core.DatasetBuilder, canonical: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Reads a local builder's splits into the library's columns."""
  sources = builder.as_data_source(split=list(_tfds.SPLITS))
  splits = []
  for split, source in zip(_tfds.SPLITS, sources):
    where = f'{canonical}/{split}'
    if builder.name == 'digits':
      columns = _tfds.read_split(builder, split, source, ('image', 'label'),
                                 where=where)
      splits.append(_tfds.image_examples(
          columns['image'], columns['label'],
          max_value=_builders.DIGITS_MAX_VALUE))
    else:
      columns = _tfds.read_split(builder, split, source,
                                 ('x', 'y', 'client_id'), where=where)
      splits.append({'x': columns['x'].astype(np.float32),
                     'y': columns['y'].astype(np.int32),
                     'client_id': columns['client_id'].astype(np.int64)})
  return splits[0], splits[1]


def load_dataset(name: str, *, data_dir: str | None = None) -> Dataset:
  """Loads a dataset as validated NumPy columns.

  Args:
    name: one of `DATASETS`, optionally ``/CONFIG``.
    data_dir: the TFDS data dir (see the module docstring for defaults).

  Returns:
    A `Dataset`: 'x' float32 (images [N, H, W, C] in [0, 1]), 'y' int32,
    and 'client_id' int64 for datasets with natural clients
    (``leaf_synthetic``).

  Raises:
    ValueError: for an unknown name or config (listing the choices).
    DatasetNotFoundError: a catalogue dataset is not prepared in `data_dir`.
    DataError: the data fails `validate_examples`.
  """
  base, config = _parse_name(name)
  data_dir = _tfds.resolve_data_dir(data_dir)
  if base in LOCAL_BUILDERS:
    builder = prepare_local(base, config=config, data_dir=data_dir)
    canonical = builder.name
    if builder.builder_config is not None:
      canonical = f'{builder.name}/{builder.builder_config.name}'
    train, test = _local_splits(builder, canonical)
    label = 'label' if base == 'digits' else 'y'
    num_classes = builder.info.features[label].num_classes
  else:
    canonical, train, test, num_classes = _tfds.load_catalogue(
        base, data_dir=data_dir, config=config)
  for split, examples in (('train', train), ('test', test)):
    _validate.validate_examples(examples, num_classes=num_classes,
                                where=f'{canonical}/{split}')
  return Dataset(canonical, train, test, num_classes)
