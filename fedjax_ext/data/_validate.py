"""Checks that examples and client partitions are usable before training.

A NaN pixel, a label of 10 in a 10-class problem or a client with no data
shows up many rounds later as a NaN loss or an XLA shape error far from its
cause. These checks run on the host, once, when a dataset is loaded or a
federation is built, and name the column, client or index at fault.
"""

from typing import Mapping, Sequence

import numpy as np

from fedjax_ext._src.checks import check_int
from fedjax_ext._src.checks import check_number

FEATURES = 'x'
LABELS = 'y'


class DataError(ValueError):
  """The data itself is unusable; the message names the field at fault."""


def _check_columns(examples: Mapping[str, np.ndarray], where: str) -> int:
  """Required columns present, all of one length; returns that length."""
  missing = [k for k in (FEATURES, LABELS) if k not in examples]
  if missing:
    raise DataError(f'{where}: missing column(s) {missing}; have '
                    f'{sorted(examples)}.')
  lengths = {k: len(v) for k, v in examples.items()}
  if len(set(lengths.values())) > 1:
    described = ', '.join(f'{k!r}: {n}' for k, n in sorted(lengths.items()))
    raise DataError(f'{where}: columns have different lengths ({described}).')
  num_examples = lengths[LABELS]
  if num_examples == 0:
    raise DataError(f'{where}: the dataset is empty (0 examples).')
  return num_examples


def _check_features(x: np.ndarray, where: str) -> None:
  """Numeric and finite."""
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise DataError(f"{where}: column 'x' must be numeric, got dtype "
                    f'{x.dtype}.')
  if not np.issubdtype(x.dtype, np.inexact):
    return
  finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise DataError(f"{where}: column 'x' has non-finite values (NaN or Inf) "
                    f'in {len(bad)} example(s); first at index {bad[0]}.')


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
  """Integer, one per example ([N]) or per token ([N, T]), in range."""
  y = np.asarray(y)
  if y.ndim not in (1, 2):
    raise DataError(f"{where}: column 'y' must be [N] (a class per example) "
                    f'or [N, T] (a class per token), got shape {y.shape}.')
  if not np.issubdtype(y.dtype, np.integer):
    raise DataError(f"{where}: column 'y' must be integer class ids, got "
                    f'dtype {y.dtype}.')
  flat = y.reshape(-1)
  bad = np.flatnonzero((flat < 0) | (flat >= num_classes))
  if len(bad):
    index = bad[0] if y.ndim == 1 else np.unravel_index(bad[0], y.shape)
    index = tuple(int(i) for i in index) if y.ndim > 1 else int(index)
    raise DataError(f"{where}: column 'y' has {len(bad)} label(s) outside "
                    f'[0, {num_classes}); first at index {index}: value '
                    f'{flat[bad[0]]}.')


def validate_examples(examples: Mapping[str, np.ndarray], *, num_classes: int,
                      where: str) -> None:
  """Raises `DataError` unless `examples` is a usable classification set.

  Checks, in order: columns 'x' and 'y' present; all columns of one length;
  at least one example; 'x' numeric and finite; 'y' integer in
  ``[0, num_classes)``, [N] or [N, T] (next-token targets, padding
  included as the PAD class 0).

  Args:
    examples: equal-length NumPy columns.
    num_classes: the number of classes labels must index.
    where: names the data in messages, e.g. ``'digits/train'``.

  Raises:
    DataError: naming the column, the problem and an offending index/value.
  """
  check_int('num_classes', num_classes, low=1)
  _check_columns(examples, where)
  _check_features(examples[FEATURES], where)
  _check_labels(examples[LABELS], num_classes, where)


def validate_partition(client_indices: Sequence[np.ndarray],
                       num_examples: int) -> None:
  """Raises `DataError` unless every client holds distinct, valid rows.

  Args:
    client_indices: for each client, integer indices into `num_examples` rows.
    num_examples: the number of rows the indices point into.

  Raises:
    DataError: for no clients, an empty client (named by its index),
      non-integer or out-of-range indices, or a row held twice (within a
      client or by two clients).
  """
  check_int('num_examples', num_examples, low=1)
  if not len(client_indices):
    raise DataError('partition: there are no clients.')
  for client, indices in enumerate(client_indices):
    indices = np.asarray(indices)
    if indices.size == 0:
      raise DataError(f'partition: client {client} is empty.')
    if not np.issubdtype(indices.dtype, np.integer):
      raise DataError(f'partition: client {client} has non-integer indices '
                      f'(dtype {indices.dtype}).')
    bad = indices[(indices < 0) | (indices >= num_examples)]
    if bad.size:
      raise DataError(f'partition: client {client} has index {bad[0]} outside '
                      f'[0, {num_examples}).')
  owners = np.concatenate([np.full(len(p), c) for c, p in
                           enumerate(client_indices)])
  rows = np.concatenate([np.asarray(p) for p in client_indices])
  counts = np.bincount(rows, minlength=num_examples)
  if (counts > 1).any():
    row = int(np.flatnonzero(counts > 1)[0])
    clients = sorted(set(owners[rows == row].tolist()))
    raise DataError(f'partition: index {row} is held {counts[row]} times (by '
                    f'client(s) {clients}).')
