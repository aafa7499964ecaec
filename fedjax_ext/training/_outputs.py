"""What a run writes: metrics.jsonl, TensorBoard event files, the PNG plot.

`metrics.jsonl` is append-only: each evaluation appends one line and
flushes + fsyncs it, so a kill at any moment loses at most the line being
written (a cut last line, which readers skip and a resume drops). Rows
after a resumed checkpoint's round are dropped by rewriting the kept rows
to a temporary file that atomically replaces the old one. Values that are
not finite numbers are written as ``null`` (with the key listed under
``nonfinite``), so every line is valid JSON.

TensorBoard event files come from tensorboardX (no TensorFlow needed):
``tensorboard --logdir <workdir>/tensorboard``.

Every path goes through `etils.epath` (the path layer of orbax and
big_vision), so a workdir may be ``gs://...``; object stores have no
append, so there each evaluation rewrites the file (temp + rename), and
only the process that writes (process 0) creates a writer.
"""

import json
import math
import os
from typing import Any, Mapping

from etils import epath
import numpy as np

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'metrics.png'
TENSORBOARD_DIR = 'tensorboard'


def json_safe(line: Mapping[str, Any]) -> dict[str, Any]:
  """`line` with NumPy scalars as Python numbers and non-finite as null."""
  out, nonfinite = {}, []
  for key, value in line.items():
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
      value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      nonfinite.append(key)
      value = None
    out[key] = value
  if nonfinite:
    out['nonfinite'] = nonfinite
  return out


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on a local file system (append and fsync work)."""
  return '://' not in os.fspath(path)


def read_metrics(path: epath.PathLike) -> list[dict[str, Any]]:
  """The complete lines of a metrics.jsonl (a cut last line is skipped).

  Raises:
    ValueError: naming the file and line when a line other than the last
      is not a JSON object.
  """
  path = epath.Path(path)
  if not path.exists():
    return []
  raw = path.read_text().splitlines()
  lines = []
  for number, text in enumerate(raw, start=1):
    if not text.strip():
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError:
      if number == len(raw):
        break  # Cut by a kill while it was written.
      raise ValueError(f'{path}: line {number} is not valid JSON.') from None
    if not isinstance(record, dict) or 'round' not in record:
      raise ValueError(f'{path}: line {number} is not a metrics record.')
    lines.append(record)
  return lines


def write_atomically(path: epath.PathLike, text: str | bytes) -> None:
  """Replaces `path` by `text` (a temp file, fsync'ed, then renamed)."""
  path = epath.Path(path)
  temp = path.parent / (path.name + '.tmp')
  with temp.open('wb' if isinstance(text, bytes) else 'w') as f:
    f.write(text)
    if is_local(path):
      f.flush()
      os.fsync(f.fileno())
  temp.replace(path)


def rewrite_metrics(path: epath.PathLike,
                    lines: list[Mapping[str, Any]]) -> None:
  """Atomically replaces `path` by `lines`."""
  write_atomically(path, ''.join(json.dumps(json_safe(line)) + '\n'
                                 for line in lines))


class MetricsWriter:
  """Appends evaluation lines to metrics.jsonl and TensorBoard.

  Only the process that writes (process 0) creates one; others write
  nothing.
  """

  def __init__(self, workdir: epath.PathLike, *, tensorboard: bool = True,
               lines: list[Mapping[str, Any]] = ()):
    """Opens ``<workdir>/metrics.jsonl`` after `lines` (already in it)."""
    self.path = epath.Path(workdir) / METRICS_FILE
    self._lines = [json_safe(line) for line in lines]
    self._file = self.path.open('a') if is_local(self.path) else None
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.fspath(epath.Path(workdir) /
                                         TENSORBOARD_DIR), flush_secs=30)

  def write(self, line: Mapping[str, Any]) -> None:
    safe = json_safe(line)
    self._lines.append(safe)
    if self._file is None:
      rewrite_metrics(self.path, self._lines)
    else:
      self._file.write(json.dumps(safe) + '\n')
      self._file.flush()
      os.fsync(self._file.fileno())
    if self._tb is not None:
      step = int(safe['round'])
      for key, value in safe.items():
        if key != 'round' and isinstance(value, (int, float)) and not (
            isinstance(value, bool)):
          self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
