"""Reading TFDS datasets as NumPy columns, without TensorFlow.

TFDS serves random access to array_record files through
`builder.as_data_source(split)`; that path needs no TensorFlow (only
`array_record` and `importlib_resources`). This module opens splits that
way, reads them with the sources' batched ``__getitems__`` and stacks the
features into equal-length NumPy columns. Decoding is the slow part (PNG
through PIL: ~15 s of CPU for MNIST's 70k images), so the decoded columns
are kept as ``.npy`` files next to the prepared dataset and reused.

The catalogue datasets (MNIST, EMNIST ``byclass``, Fashion-MNIST, CIFAR-10,
CIFAR-100) are never downloaded here: when a split is absent, or was built
in a format without random access (TFDS's default, tfrecord), the loader
raises `DatasetNotFoundError` naming the directory TFDS looked in and the
command that prepares it, ``python -m fedjax_ext.data.prepare
--dataset=NAME --data_dir=DIR`` (it needs TensorFlow, which TFDS's catalogue
builders use to read the original files: the ``[prepare]`` extra,
``pip install -e '.[prepare]'``).

References:
  LeCun et al., `Gradient-based learning applied to document recognition
  <https://doi.org/10.1109/5.726791>`_, 1998 (MNIST).

  Cohen et al., `EMNIST: an extension of MNIST to handwritten letters
  <https://arxiv.org/abs/1702.05373>`_, 2017.

  Xiao, Rasul and Vollgraf, `Fashion-MNIST
  <https://arxiv.org/abs/1708.07747>`_, 2017.

  Krizhevsky, `Learning Multiple Layers of Features from Tiny Images
  <https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf>`_, 2009
  (CIFAR-10/100).
"""

import hashlib
import json
import os
import tempfile
from typing import Any, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _validate

DATA_DIR_ENV = 'FEDJAX_EXT_DATA_DIR'
# Our name -> TFDS name (with config) of the catalogue datasets.
CATALOGUE = {
    'mnist': 'mnist',
    'emnist': 'emnist/byclass',  # 62 classes: digits, upper, lower case.
    'fashion_mnist': 'fashion_mnist',
    'cifar10': 'cifar10',
    'cifar100': 'cifar100',  # The 100 fine labels.
}
SPLITS = ('train', 'test')
# Rows per `__getitems__` call: bounds the decoded Python objects in memory.
READ_CHUNK = 16384
_PIXEL_MAX = 255.
# Decoded NumPy columns, inside a prepared dataset's directory.
CACHE_DIR = 'fedjax_ext_numpy'
# `<split>.manifest.json`: the source's identity and each column's SHA-256.
MANIFEST_SUFFIX = 'manifest.json'
_MANIFEST_FORMAT = 1
# Bytes hashed per `update` call (bounds the temporary views).
_HASH_CHUNK = 1 << 24


class DatasetNotFoundError(_validate.DataError):
  """A dataset is not prepared (as array_record) in the data dir."""


def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $FEDJAX_EXT_DATA_DIR, else TFDS's default."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
  if not data_dir:
    # $TFDS_DATA_DIR or ~/tensorflow_datasets.
    data_dir = tfds.core.constants.DATA_DIR
  return os.path.expanduser(data_dir)


def prepare_command(name: str, data_dir: str) -> str:
  """The command that prepares catalogue dataset `name` (ours, not TFDS's)."""
  return (f'python -m fedjax_ext.data.prepare --dataset={name} '
          f'--data_dir={data_dir}')


def _not_found(builder: tfds.core.DatasetBuilder, tfds_name: str,
               data_dir: str, name: str | None = None) -> DatasetNotFoundError:
  """The error for a catalogue dataset that cannot be read here."""
  if builder.is_prepared():
    problem = (f'is prepared at {builder.data_dir} in a format without '
               f'random access ({builder.info.file_format}); it must be '
               'array_record')
  else:
    problem = f'is not prepared: TFDS looked for it in {builder.data_dir}'
  return DatasetNotFoundError(
      f'Dataset {tfds_name!r} {problem}. load_dataset never downloads it. '
      "Prepare it (this downloads; TFDS's catalogue builders need "
      f"TensorFlow, from the [prepare] extra: pip install -e '.[prepare]') "
      f'with\n'
      f'  {prepare_command(name or tfds_name, data_dir)}\n'
      f'or, on another machine, prepare it there and copy the result into '
      f'{data_dir} (or pass data_dir= / set ${DATA_DIR_ENV} to where it is).')


def open_catalogue(tfds_name: str, data_dir: str, name: str | None = None
                   ) -> tuple[tfds.core.DatasetBuilder, list[Any]]:
  """The builder and its (train, test) data sources; never downloads.

  `name` (ours, e.g. 'emnist/balanced') names the dataset in the error's
  prepare command; it defaults to `tfds_name`.
  """
  # No file_format here: TFDS refuses to construct a builder whose requested
  # format differs from that of a copy already prepared (a tfrecord build).
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  try:
    sources = builder.as_data_source(split=list(SPLITS))
  except (KeyError, ValueError, FileNotFoundError, NotImplementedError,
          AssertionError):
    if (builder.is_prepared() and
        builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD):
      raise  # Prepared and readable: a different problem, shown as is.
    # TFDS's own traceback says no more than the message.
    raise _not_found(builder, tfds_name, data_dir, name) from None
  return builder, sources


def read_columns(source: Any, keys: Sequence[str], *,
                 where: str) -> dict[str, np.ndarray]:
  """All rows of a TFDS data source as stacked NumPy columns `keys`.

  Args:
    source: a data source with ``__len__`` and batched ``__getitems__``.
    keys: the features to keep.
    where: names the split in errors.

  Returns:
    {key: [N, ...] array}, in the source's order.
  """
  num_rows = len(source)
  if not num_rows:
    raise _validate.DataError(f'{where}: the split is empty (0 examples).')
  chunks = {key: [] for key in keys}
  for start in range(0, num_rows, READ_CHUNK):
    rows = list(range(start, min(start + READ_CHUNK, num_rows)))
    items = source.__getitems__(rows)
    for key in keys:
      chunks[key].append(np.stack([np.asarray(item[key]) for item in items]))
  return {key: np.concatenate(parts) for key, parts in chunks.items()}


def _cache_files(builder: tfds.core.DatasetBuilder, split: str,
                 keys: Sequence[str]) -> dict[str, str] | None:
  """Cache file of each column, or None if nothing is prepared on disk."""
  if not builder.is_prepared():
    return None  # E.g. under `tfds.testing.mock_data`: nothing to cache.
  cache_dir = os.path.join(os.fspath(builder.data_dir), CACHE_DIR)
  return {key: os.path.join(cache_dir, f'{split}.{key}.npy') for key in keys}


def _manifest_path(files: dict[str, str], split: str) -> str:
  """``<cache dir>/<split>.manifest.json``, next to the columns."""
  cache_dir = os.path.dirname(next(iter(files.values())))
  return os.path.join(cache_dir, f'{split}.{MANIFEST_SUFFIX}')


def source_identity(builder: tfds.core.DatasetBuilder, split: str,
                    num_rows: int) -> dict[str, Any]:
  """What the cache of `split` was decoded from.

  The TFDS name, config and version, the split's example count and its
  array_record file names (with their shard lengths): a re-prepared split
  with other files, or another version, invalidates the cache.
  """
  identity = {'dataset': builder.info.full_name,
              'version': str(builder.info.version),
              'split': split,
              'num_examples': int(num_rows)}
  try:
    split_info = builder.info.splits[split]
    identity['files'] = sorted(os.path.basename(os.fspath(name))
                               for name in split_info.filenames)
    identity['shard_lengths'] = [int(n) for n in split_info.shard_lengths]
  except (KeyError, ValueError, TypeError, AttributeError):
    identity['files'] = None  # No file list recorded: the rest still keys.
  return identity


def column_digest(column: np.ndarray) -> str:
  """SHA-256 of a column's dtype, shape and bytes (C order)."""
  digest = hashlib.sha256()
  digest.update(f'{column.dtype.str}|{column.shape}|'.encode())
  view = np.ascontiguousarray(column).reshape(-1).view(np.uint8)
  for start in range(0, view.size, _HASH_CHUNK):
    digest.update(view[start:start + _HASH_CHUNK].data)
  return digest.hexdigest()


def _manifest(columns: dict[str, np.ndarray],
              identity: dict[str, Any]) -> dict[str, Any]:
  """The content record of a split's cached columns."""
  return {'format': _MANIFEST_FORMAT,
          'source': identity,
          'columns': {key: {'dtype': column.dtype.str,
                            'shape': list(column.shape),
                            'sha256': column_digest(column)}
                      for key, column in sorted(columns.items())}}


def _load_cache(files: dict[str, str], manifest_path: str,
                identity: dict[str, Any]) -> dict[str, np.ndarray] | None:
  """The cached columns if their manifest matches the source and content.

  Returns None, and logs one warning line, for a cache that exists but
  cannot be trusted: no manifest or an unreadable one, a manifest for
  another source (version, example count, files), a missing column, or a
  column whose dtype, shape or SHA-256 differs from the manifest's (e.g.
  labels altered in place with the same row count). Returns None silently
  when nothing is cached yet.
  """
  if not (os.path.exists(manifest_path) or
          any(os.path.exists(path) for path in files.values())):
    return None  # First read: nothing cached.
  columns, problem = _verified_columns(files, manifest_path, identity)
  if problem:
    logging.warning('Ignoring the decoded cache %s (%s); re-reading %s/%s '
                    'from its array_record files.', manifest_path, problem,
                    identity['dataset'], identity['split'])
    return None
  return columns


def _verified_columns(files: dict[str, str], manifest_path: str,
                      identity: dict[str, Any]
                      ) -> tuple[dict[str, np.ndarray] | None, str | None]:
  """(The verified columns, None), or (None, what is wrong with them)."""
  try:
    with open(manifest_path, encoding='utf-8') as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return None, 'no content manifest'
  except (OSError, ValueError) as e:
    return None, f'unreadable manifest: {e}'
  if not isinstance(manifest, dict) or manifest.get(
      'format') != _MANIFEST_FORMAT:
    return None, 'manifest of another format'
  if manifest.get('source') != identity:
    return None, (f'decoded from {manifest.get("source")}, the split now '
                  f'is {identity}')
  expected = manifest.get('columns')
  if not isinstance(expected, dict) or set(expected) != set(files):
    return None, 'manifest lists other columns'
  columns = {}
  for key, path in sorted(files.items()):
    try:
      column = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      return None, f'column {key!r} unreadable: {e}'
    record = expected[key]
    if (not isinstance(record, dict) or
        record.get('dtype') != column.dtype.str or
        record.get('shape') != list(column.shape)):
      return None, (f'column {key!r} is {column.dtype.str} '
                    f'{list(column.shape)}, the manifest says {record}')
    if record.get('sha256') != column_digest(column):
      return None, f'column {key!r} does not match its SHA-256'
    columns[key] = column
  return columns, None


def _atomic_write(path: str, write, suffix: str) -> None:
  """`write(file)` into a temporary file, then renamed onto `path`."""
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=suffix,
                                   delete=False) as f:
    try:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    except BaseException:
      os.unlink(f.name)
      raise
  os.chmod(f.name, 0o644)  # As readable as the dataset's own files.
  os.replace(f.name, path)


def _save_cache(files: dict[str, str], manifest_path: str,
                columns: dict[str, np.ndarray],
                identity: dict[str, Any]) -> None:
  """Writes each column, then their manifest, atomically.

  The old manifest is removed first, so a write cut short leaves columns
  without a manifest (rebuilt on the next read), never a manifest vouching
  for columns it did not hash. A read-only data dir is not an error.
  """
  path = manifest_path
  try:
    os.makedirs(os.path.dirname(manifest_path), exist_ok=True)
    if os.path.exists(manifest_path):
      os.remove(manifest_path)
    for key, path in files.items():
      _atomic_write(path, lambda f, key=key: np.save(f, columns[key],
                                                     allow_pickle=False),
                    '.npy')
    path = manifest_path
    text = json.dumps(_manifest({k: columns[k] for k in files}, identity),
                      indent=1, sort_keys=True).encode('utf-8')
    _atomic_write(manifest_path, lambda f: f.write(text), '.json')
  except OSError as e:
    logging.warning('Not caching %s: %s', path, e)


def read_split(builder: tfds.core.DatasetBuilder, split: str, source: Any,
               keys: Sequence[str], *, where: str) -> dict[str, np.ndarray]:
  """`read_columns`, through a NumPy copy kept in the dataset's directory.

  Decoding a TFDS example costs ~100-250 us of CPU (PNG images through
  PIL), i.e. ~15 s for MNIST's 70k images; the first read therefore saves
  the decoded columns as ``<dataset dir>/fedjax_ext_numpy/<split>.<key>.npy``
  and later reads load them in a fraction of a second. The copy lives in
  the TFDS version's directory and carries a content manifest,
  ``<split>.manifest.json``: the source's identity (`source_identity`:
  name, version, example count, array_record files) and each column's
  dtype, shape and SHA-256 (`column_digest`). A cache whose manifest is
  missing or disagrees with the source or with the columns' content is
  never used: it is re-read from TFDS and rewritten, with one warning line.
  The copy is safe to delete.

  Args:
    builder: the dataset's builder.
    split: the split's name.
    source: its data source (``builder.as_data_source(split)``).
    keys: the features to keep.
    where: names the split in errors.

  Returns:
    {key: [N, ...] array}, in the source's order.
  """
  files = _cache_files(builder, split, keys)
  if files:
    manifest_path = _manifest_path(files, split)
    identity = source_identity(builder, split, len(source))
    columns = _load_cache(files, manifest_path, identity)
    if columns is not None:
      return columns
  columns = read_columns(source, keys, where=where)
  if files:
    _save_cache(files, manifest_path, columns, identity)
  return columns


def image_examples(image: np.ndarray, label: np.ndarray, *,
                   max_value: float) -> dict[str, np.ndarray]:
  """{'x': float32 [N, H, W, C] in [0, 1], 'y': int32 [N]}."""
  if image.ndim == 3:
    image = image[..., None]
  x = image.astype(np.float32)
  x /= max_value
  return {'x': x, 'y': label.astype(np.int32)}


def load_catalogue(name: str, *, data_dir: str, config: str | None = None
                   ) -> tuple[str, dict[str, np.ndarray],
                              dict[str, np.ndarray], int]:
  """Reads a prepared catalogue dataset.

  Images become float32 in [0, 1] with a channel axis and labels int32.
  EMNIST images, which TFDS stores transposed (as the original EMNIST
  files), are transposed back to MNIST's upright orientation.

  Args:
    name: a key of `CATALOGUE`.
    data_dir: the TFDS data dir holding it as array_record.
    config: a TFDS config replacing the default one (e.g. 'balanced').

  Returns:
    (TFDS name, train columns, test columns, number of classes).

  Raises:
    DatasetNotFoundError: if it is not prepared as array_record there.
  """
  tfds_name = CATALOGUE[name]
  if config:
    tfds_name = f'{tfds_name.split("/")[0]}/{config}'
  builder, sources = open_catalogue(
      tfds_name, data_dir, f'{name}/{config}' if config else name)
  splits = []
  for split, source in zip(SPLITS, sources):
    columns = read_split(builder, split, source, ('image', 'label'),
                         where=f'{tfds_name}/{split}')
    if name == 'emnist':
      columns['image'] = np.ascontiguousarray(
          np.swapaxes(columns['image'], 1, 2))
    splits.append(image_examples(columns['image'], columns['label'],
                                 max_value=_PIXEL_MAX))
  num_classes = builder.info.features['label'].num_classes
  return tfds_name, splits[0], splits[1], num_classes
