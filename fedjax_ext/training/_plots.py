"""PNG plots of a run's ``metrics.jsonl``: accuracy and loss against rounds.

Uses `matplotlib.figure.Figure` directly (no pyplot), so plotting needs no
display, sets no global backend and leaks no figures.
"""

import io
import json

from etils import epath
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
  lines = [line for line in epath.Path(metrics_path).read_text().splitlines()
           if line.strip()]
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


def _finish_round_axes(ax, ylabel: str, *, legend_size=None) -> None:
  """Round x axis, grid, legend (or 'no data') of one panel."""
  ax.set_xlabel('round')
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  if ax.get_lines():
    ax.legend(fontsize=legend_size)
  else:
    ax.text(0.5, 0.5, 'no data', ha='center', va='center',
            transform=ax.transAxes)


def _save(fig, png_path: str, title: str | None, *, dpi: int = 100) -> str:
  """Writes `fig` to `png_path` (any `etils.epath` path, e.g. gs://)."""
  if title:
    fig.suptitle(title)
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=dpi)
  path = epath.Path(png_path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return png_path


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
    _finish_round_axes(ax, ylabel)
  return _save(fig, png_path, title)


def mean_curve(runs, key: str) -> tuple[list, list[float]]:
  """(rounds, mean of `key` over `runs`) at the rounds every run has `key`.

  Args:
    runs: metrics lines of several runs (e.g. seeds): a list of lists of
      dicts with ``round`` (`training.RunResult.metrics`, `read_metrics`).
    key: the metric.
  """
  at = [{l['round']: _number(l.get(key)) for l in lines
         if _number(l.get(key)) is not None} for lines in runs]
  rounds = sorted(set.intersection(*(set(a) for a in at))) if at else []
  return rounds, [sum(a[r] for a in at) / len(at) for r in rounds]


def plot_runs(panels, png_path: str, *, key: str,
              title: str | None = None) -> str:
  """Writes a PNG comparing groups of runs on one metric, panel by panel.

  The summary plot of a sweep (ISR vs plain, FL vs CL, ...): each curve is
  the mean over its runs (seeds) of `key` at each evaluated round
  (`mean_curve`).

  Args:
    panels: ``{panel title: {curve label: runs}}``, `runs` as in
      `mean_curve`; panels left to right, curves in the mappings' order. A
      panel without data says 'no data'.
    png_path: where to write the PNG; missing parent directories are made.
    key: the metric, also the y-axis label.
    title: an optional title above the panels.

  Returns:
    `png_path`.
  """
  fig = figure.Figure(figsize=(4 * max(len(panels), 1) + 1, 3.6),
                      layout='constrained')
  axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
  for ax, (name, curves) in zip(axes, panels.items()):
    for label, runs in curves.items():
      rounds, values = mean_curve(runs, key)
      if rounds:
        ax.plot(rounds, values, label=label,
                marker='.' if len(values) < 30 else None)
    ax.set_title(name)
    _finish_round_axes(ax, key, legend_size=7)
  return _save(fig, png_path, title)


def plot_heatmaps(panels, png_path: str, *, vmin: float | None = None,
                  vmax: float | None = None, fmt: str = '{:.0f}',
                  title: str | None = None) -> str:
  """Writes a PNG of annotated heatmaps, one panel above the other.

  The summary plot of a grid sweep (aggregator x attack, ...): each cell is
  coloured by its value and shows it as text; a NaN cell (a run that
  diverged) is left blank and reads 'nan'.

  Args:
    panels: ``{panel title: (row labels, column labels, values)}``, values
      an array-like [rows, columns] (NaN allowed).
    png_path: where to write the PNG; missing parent directories are made.
    vmin, vmax: the colour scale (default: the finite values' range).
    fmt: format of the value written in each cell.
    title: an optional title above the panels.

  Returns:
    `png_path`.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  shapes = [np.shape(values) for _, _, values in panels.values()]
  rows = sum(s[0] for s in shapes) if shapes else 1
  cols = max((s[1] for s in shapes), default=1)
  fig = figure.Figure(figsize=(0.9 * cols + 3.5,
                               0.32 * rows + 1.1 * max(len(panels), 1)),
                      layout='constrained')
  axes = fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
  for ax, (name, (row_labels, col_labels, values)) in zip(axes,
                                                          panels.items()):
    grid = np.asarray(values, np.float64).reshape(len(row_labels),
                                                  len(col_labels))
    image = ax.imshow(np.ma.masked_invalid(grid), vmin=vmin, vmax=vmax,
                      cmap='viridis', aspect='auto')
    low, high = image.get_clim()
    for (i, j), value in np.ndenumerate(grid):
      light = np.isfinite(value) and value > low + 0.6 * (high - low)
      ax.text(j, i, fmt.format(value) if np.isfinite(value) else 'nan',
              ha='center', va='center', fontsize=7,
              color='k' if light or not np.isfinite(value) else 'w')
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
  return _save(fig, png_path, title, dpi=110)
