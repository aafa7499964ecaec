"""PNG plots of a run's ``metrics.jsonl``: accuracy and loss against rounds.

Uses `matplotlib.figure.Figure` directly (no pyplot), so plotting needs no
display, sets no global backend and leaks no figures.
"""

import json
import os

from matplotlib import figure
from matplotlib import ticker

# (key, legend label) of the curves in each panel; a curve is drawn when at
# least one line of metrics.jsonl has its key.
_ACCURACY_CURVES = (
    ('test_accuracy', 'test accuracy'),
    ('client_accuracy_mean', 'per-client accuracy, mean'),
    ('client_accuracy_p10', 'per-client accuracy, 10th percentile'),
)
_LOSS_CURVES = (
    ('test_loss', 'test loss'),
    ('train_loss', 'train loss'),
)


def read_curves(metrics_path: str,
                keys: tuple[str, ...]) -> dict[str, tuple[list, list]]:
  """``{key: (rounds, values)}`` from the lines of a jsonl that have `key`.

  Blank lines and a truncated last line (a run still writing) are skipped, as
  are lines without ``round`` or whose value is null or not a number.

  Args:
    metrics_path: a file of one JSON object per line, each with ``round``.
    keys: the metrics to read.

  Returns:
    For every key of `keys` present in at least one line, the rounds and
    values of the lines that have it, in file order.
  """
  with open(metrics_path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  curves = {}
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break  # A line still being written.
      raise
    if not isinstance(record, dict) or _number(record.get('round')) is None:
      continue
    for key in keys:
      value = _number(record.get(key))
      if value is not None:
        rounds, values = curves.setdefault(key, ([], []))
        rounds.append(record['round'])
        values.append(value)
  return curves


def _number(value) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def plot_metrics(metrics_path: str, png_path: str, *,
                 title: str | None = None) -> str:
  """Writes a two-panel PNG of a run's metrics against rounds.

  The left panel has the test accuracy and, when logged, the mean and 10th
  percentile of the per-client accuracy; the right panel has the test loss
  and, when logged, the training loss. Each curve uses only the lines that
  have its key (evaluation may run every few rounds).

  Args:
    metrics_path: a ``metrics.jsonl``: one JSON object per line with
      ``round`` and any of ``test_accuracy``, ``test_loss``, ``train_loss``,
      ``client_accuracy_mean``, ``client_accuracy_p10``.
    png_path: where to write the PNG; missing parent directories are made.
    title: an optional title above both panels.

  Returns:
    `png_path`.
  """
  curves = read_curves(metrics_path, tuple(
      key for key, _ in _ACCURACY_CURVES + _LOSS_CURVES))
  fig = figure.Figure(figsize=(10, 4), layout='constrained')
  acc_ax, loss_ax = fig.subplots(1, 2)
  for ax, specs, ylabel in ((acc_ax, _ACCURACY_CURVES, 'accuracy'),
                            (loss_ax, _LOSS_CURVES, 'loss')):
    for key, label in specs:
      if key in curves:
        rounds, values = curves[key]
        ax.plot(rounds, values, label=label, marker='.' if len(values) < 30
                else None)
    ax.set_xlabel('round')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
      ax.legend()
    else:
      ax.text(0.5, 0.5, 'no data', ha='center', va='center',
              transform=ax.transAxes)
  if title:
    fig.suptitle(title)
  directory = os.path.dirname(png_path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  fig.savefig(png_path, dpi=100)
  return png_path
