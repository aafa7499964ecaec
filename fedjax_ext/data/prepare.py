r"""Prepares a dataset as array_record: the only code here that downloads.

Usage::

  python -m fedjax_ext.data.prepare --dataset=NAME --data_dir=DIR

* Catalogue datasets (``mnist``, ``emnist`` [``/CONFIG``],
  ``fashion_mnist``, ``cifar10``, ``cifar100``): TFDS's own builder,
  ``download_and_prepare(file_format='array_record')``. TFDS's catalogue
  builders read the original files with TensorFlow, so this needs the
  ``[prepare]`` extra (``pip install -e '.[prepare]'``, which pulls
  ``tensorflow-cpu``); reading the prepared files later does not.
* Federated datasets (``federated_emnist/digits_only``,
  ``federated_emnist/full``, ``shakespeare``, ``stackoverflow/next_word``,
  ``stackoverflow/next_word_1k``): downloads the TFF archive
  (`_federated.SOURCES`) into ``DIR/downloads/fedjax_ext``, checks its
  SHA-256 (a mismatch is an error; an archive without a known checksum is
  refused unless ``--allow_unverified``), extracts it next to it and runs
  the local TFDS builder on the extracted HDF5 files (needs ``h5py``, also
  in ``[prepare]``). An archive already downloaded is checked again and
  reused.
* ``digits`` and ``leaf_synthetic`` need no download; they are built here
  as on their first `load_dataset`.

Any failure is one line on stderr and exit status 2.
"""

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import sys
import tarfile
import urllib.request

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from fedjax_ext.data import _datasets
from fedjax_ext.data import _federated
from fedjax_ext.data import _tfds

EXTRA = _datasets.PREPARE_EXTRA
DOWNLOAD_SUBDIR = os.path.join('downloads', 'fedjax_ext')
_CHUNK = 1 << 20


class PrepareError(Exception):
  """A one-line reason the dataset could not be prepared."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What preparing one dataset does.

  Attributes:
    kind: 'catalogue', 'federated' or 'local'.
    name: the dataset, as given (``NAME`` or ``NAME/CONFIG``).
    data_dir: the TFDS data dir it is prepared in.
    needs: modules that must be importable ('tensorflow', 'h5py').
    tfds_name: the TFDS name with config (catalogue datasets).
    source: the archive (federated datasets).
    archive: where the archive is downloaded (federated datasets).
    extract_dir: where it is extracted (federated datasets).
  """
  kind: str
  name: str
  data_dir: str
  needs: tuple[str, ...] = ()
  tfds_name: str | None = None
  source: _federated.Source | None = None
  archive: str | None = None
  extract_dir: str | None = None


def make_plan(name: str, data_dir: str | None) -> Plan:
  """The `Plan` of dataset `name` in `data_dir` (resolved as `load_dataset`)."""
  base, _, config = name.partition('/')
  config = config or None
  if base not in _datasets.DATASETS:
    raise PrepareError(f'unknown dataset {name!r}; choose one of '
                       f'{", ".join(_datasets.DATASETS)} (optionally '
                       '/CONFIG).')
  data_dir = _tfds.resolve_data_dir(data_dir)
  if base in _tfds.CATALOGUE:
    tfds_name = _tfds.CATALOGUE[base]
    if config:
      tfds_name = f'{tfds_name.split("/")[0]}/{config}'
    return Plan('catalogue', name, data_dir, ('tensorflow',),
                tfds_name=tfds_name)
  if base in _datasets.LOCAL_BUILDERS:
    return Plan('local', name, data_dir)
  try:
    _datasets.local_builder(base, config=config, data_dir=data_dir)
  except ValueError as e:
    raise PrepareError(str(e)) from None
  source = _federated.source_of(base, config)
  downloads = os.path.join(data_dir, DOWNLOAD_SUBDIR)
  archive = os.path.join(downloads, source.filename)
  extract_dir = os.path.join(downloads,
                             source.filename.split('.tar')[0])
  return Plan('federated', name, data_dir, ('h5py',), source=source,
              archive=archive, extract_dir=extract_dir)


def check_modules(plan: Plan) -> None:
  """Raises `PrepareError` naming the extra if a needed module is missing."""
  for module in plan.needs:
    if importlib.util.find_spec(module) is None:
      why = ("TFDS's catalogue builders read the original files with it"
             if module == 'tensorflow' else 'it reads the TFF HDF5 files')
      raise PrepareError(f'preparing {plan.name} needs {module} ({why}), '
                         f'which is not installed; install the [prepare] '
                         f'extra: {EXTRA}')


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(_CHUNK), b''):
      digest.update(block)
  return digest.hexdigest()


def fetch(url: str, path: str) -> None:
  """Downloads `url` to `path` (through ``path.partial``)."""
  partial = path + '.partial'
  with urllib.request.urlopen(url) as response, open(partial, 'wb') as f:
    shutil.copyfileobj(response, f, _CHUNK)
  os.replace(partial, path)


def download(plan: Plan, *, allow_unverified: bool,
             log=print) -> None:
  """Downloads (unless present) and verifies the plan's archive."""
  source = plan.source
  if source.sha256 is None and not allow_unverified:
    raise PrepareError(f'no verified SHA-256 is known for {source.url}; '
                       'pass --allow_unverified to build from it anyway')
  os.makedirs(os.path.dirname(plan.archive), exist_ok=True)
  if not os.path.exists(plan.archive):
    log(f'Downloading {source.url} to {plan.archive}')
    try:
      fetch(source.url, plan.archive)
    except OSError as e:
      raise PrepareError(f'downloading {source.url} failed: {e}') from None
  digest = sha256_of(plan.archive)
  if source.sha256 is None:
    log(f'{plan.archive}: SHA-256 {digest} (unverified)')
  elif digest != source.sha256:
    raise PrepareError(f'{plan.archive} has SHA-256 {digest}, expected '
                       f'{source.sha256}; delete it and run again')


def extract(plan: Plan, log=print) -> None:
  """Extracts the archive into ``plan.extract_dir`` unless already done."""
  done = os.path.join(plan.extract_dir, '.extracted')
  if os.path.exists(done):
    return
  log(f'Extracting {plan.archive} to {plan.extract_dir}')
  try:
    with tarfile.open(plan.archive) as tar:
      if hasattr(tarfile, 'data_filter'):  # Python >= 3.11.4 / 3.10.12.
        tar.extractall(plan.extract_dir, filter='data')
      else:
        tar.extractall(plan.extract_dir)
  except (tarfile.TarError, OSError) as e:
    raise PrepareError(f'extracting {plan.archive} failed: {e}') from None
  for name in plan.source.files:
    try:
      _federated.find_file(plan.extract_dir, name)
    except FileNotFoundError:
      raise PrepareError(f'{plan.archive} holds no {name}') from None
  with open(done, 'w'):
    pass


def prepare(name: str, data_dir: str | None, *,
            allow_unverified: bool = False, log=print) -> str:
  """Prepares dataset `name`; returns where it is. Raises `PrepareError`."""
  plan = make_plan(name, data_dir)
  check_modules(plan)
  base, _, config = name.partition('/')
  config = config or None
  if plan.kind == 'local':
    try:
      builder = _datasets.prepare_local(base, config=config,
                                        data_dir=plan.data_dir)
    except ValueError as e:
      raise PrepareError(str(e)) from None
    return os.fspath(builder.data_dir)
  if plan.kind == 'catalogue':
    builder = tfds.builder(plan.tfds_name, data_dir=plan.data_dir,
                           file_format=tfds.core.FileFormat.ARRAY_RECORD)
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)
  download(plan, allow_unverified=allow_unverified, log=log)
  extract(plan, log=log)
  builder = _datasets.local_builder(base, config=config,
                                    data_dir=plan.data_dir)
  if not builder.is_prepared():
    log(f'Building {_datasets.canonical_name(builder)} in '
        f'{builder.data_dir}')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=plan.extract_dir))
  return os.fspath(builder.data_dir)


def run(name: str, data_dir: str | None, *, allow_unverified: bool = False,
        log=print, err=sys.stderr) -> int:
  """`prepare` for the command line: 0, or 2 after a one-line error."""
  try:
    where = prepare(name, data_dir, allow_unverified=allow_unverified,
                    log=log)
  except PrepareError as e:
    print(f'prepare: error: {e}', file=err)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    message = ' '.join(str(e).split()) or type(e).__name__
    print(f'prepare: error: {name}: {message}', file=err)
    return 2
  log(f'Prepared {name} in {where}')
  return 0


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so importing
  this module never clashes with another program's --dataset/--data_dir."""
  flags.DEFINE_string(
      'dataset', None, 'Dataset to prepare: '
      f'{", ".join(_datasets.DATASETS)} (optionally /CONFIG).')
  flags.DEFINE_string(
      'data_dir', None, 'TFDS data dir (default: $FEDJAX_EXT_DATA_DIR, else '
      "TFDS's default).")
  flags.DEFINE_bool(
      'allow_unverified', False, 'Build from a download whose SHA-256 is '
      'not known (never from one that mismatches a known checksum).')


def main(argv) -> None:
  if len(argv) > 1:
    print(f'prepare: error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  values = flags.FLAGS
  if not values.dataset:
    print('prepare: error: --dataset is required; choose one of '
          f'{", ".join(_datasets.DATASETS)}', file=sys.stderr)
    sys.exit(2)
  sys.exit(run(values.dataset, values.data_dir,
               allow_unverified=values.allow_unverified))


if __name__ == '__main__':
  define_flags()
  app.run(main)
