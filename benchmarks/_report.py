"""BENCHMARKS.md and the PNG from the collected worker results.

Ratios are always within one run (the same machine state): a row's
``x ours`` is its median seconds/round divided by the fastest of our
strategies on the same workload (above 1: slower than ours), and ``x limit``
divides by the machine limit (separately jitted single SGD steps in our own
JAX; below 1: faster than one-step-at-a-time dispatch).
"""

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SYSTEM_NAMES = {
    'ours': 'fedjax_ext',
    'limit': 'machine limit (jitted single steps)',
    'fedjax': 'FedJAX 0.0.17',
    'torch': 'PyTorch loop',
    'flower': 'Flower simulation',
}
_COLORS = {'ours': '#1f77b4', 'limit': '#7f7f7f', 'fedjax': '#ff7f0e',
           'torch': '#d62728', 'flower': '#2ca02c'}


def variant(row, *, chunk: bool = True) -> str:
  """A short label of the row's system and variant (chunk size optional)."""
  spec = row['spec']
  system = spec['system']
  if system != 'ours':
    return SYSTEM_NAMES[system]
  unroll = spec.get('unroll', 'auto')
  unroll = 'all' if unroll is True else unroll
  text = f"ours {spec['execution']} unroll={unroll}"
  if chunk and spec['execution'] not in ('vmap', 'sequential'):
    text += f" chunk={spec.get('chunk_size')}"
  if spec.get('cpu_devices', 1) > 1:
    text += f" over {spec['cpu_devices']} CPU devices"
  if spec.get('same_as'):
    text += f" (= {spec['same_as']}, same run)"
  elif spec['execution'] == 'auto' and row.get('resolved_execution'):
    text += f" (-> {row['resolved_execution']})"
  return text


def describe(row) -> str:
  """One progress line."""
  head = f"{row['workload']} {row['label']:<16} {variant(row):<44}"
  if not row.get('ok'):
    return f"{head} FAILED: {row.get('error')}"
  reused = ' (reused)' if row.get('reused') else ''
  return (f"{head} {row['median_s']:9.4f} s/round, first "
          f"{row['first_round_s']:7.2f} s, RSS {row['peak_rss_mb']:6.0f} MiB"
          f"{reused}")


def _groups(rows):
  groups = {}
  for row in rows:
    groups.setdefault((row['workload'], row['label']), []).append(row)
  return groups


def _best(rows, system):
  ok = [r for r in rows if r['spec']['system'] == system and r.get('ok')]
  return min(ok, key=lambda r: r['median_s']) if ok else None


def _one(rows, system):
  ok = [r for r in rows if r['spec']['system'] == system and r.get('ok')]
  return ok[0] if ok else None


def _auto(rows):
  ok = [r for r in rows if r['spec']['system'] == 'ours' and r.get('ok') and
        r['spec'].get('execution') == 'auto' and
        r['spec'].get('cpu_devices', 1) == 1]
  # Several unrolls of auto may have run: the library default ('auto')
  # first, then whatever ran first.
  ok.sort(key=lambda r: r['spec'].get('unroll') != 'auto')
  return ok[0] if ok else None


def _fmt_s(seconds):
  if seconds is None or not math.isfinite(seconds):
    return '-'
  if seconds >= 10:
    return f'{seconds:.1f}'
  if seconds >= 1:
    return f'{seconds:.2f}'
  if seconds >= 0.01:
    return f'{seconds:.3f}'
  return f'{seconds:.4f}'


def _fmt_x(ratio):
  if ratio is None or not math.isfinite(ratio):
    return '-'
  return f'{ratio:.2f}x' if ratio < 10 else f'{ratio:.0f}x'


def _compile(row):
  if 'compile_s' in row:
    return row['compile_s']
  if row['spec']['system'] == 'flower':
    return row['first_round_s'] - row['median_s']  # Actor start-up.
  return max(0., row['first_round_s'] - row['median_s'])


def _table(rows):
  best = _best(rows, 'ours')
  limit = _one(rows, 'limit')
  lines = [
      '| system / variant | s/round (median) | timed rounds | first round '
      '(incl. compile) | compile or start-up | peak RSS, process (MiB) | '
      'peak RSS, process tree (MiB) | x best ours | x limit | load avg '
      '(before/after) |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for row in sorted(rows, key=lambda r: (not r.get('ok'),
                                         r.get('median_s', 0.))):
    name = variant(row)
    if best is not None and row is best:
      name = f'**{name}**'
    if not row.get('ok'):
      lines.append(f"| {name} | failed: {row.get('error', '?')} "
                   '| | | | | | | | |')
      continue
    vs_ours = row['median_s'] / best['median_s'] if best else None
    vs_limit = row['median_s'] / limit['median_s'] if limit else None
    tree = row.get('tree_peak_rss_mb')
    cells = [name, _fmt_s(row['median_s']), str(len(row['round_times_s'])),
             _fmt_s(row['first_round_s']), _fmt_s(_compile(row)),
             f"{row['peak_rss_mb']:.0f}", f'{tree:.0f}' if tree else '-',
             _fmt_x(vs_ours), _fmt_x(vs_limit),
             f"{row.get('load_before', 0):.1f} / "
             f"{row.get('load_after', 0):.1f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def targets(rows):
  """[(target, measured text, verdict)] for the issue's targets."""
  groups = _groups(rows)
  out = []

  def ratio(a, b):
    return a['median_s'] / b['median_s'] if a and b else None

  def best_text(best, other, flip=False):
    if not best:
      return ''
    r = ratio(other, best) if flip else ratio(best, other)
    return f' (fastest variant, {variant(best)}: {_fmt_x(r)})'

  # Verdicts are on `auto`, the library default: the fastest of many
  # variants run minutes apart on a shared machine is biased low.
  w1 = groups.get(('W1', 'cnn'))
  if w1:
    best, auto = _best(w1, 'ours'), _auto(w1)
    limit, fedjax = _one(w1, 'limit'), _one(w1, 'fedjax')
    r = ratio(auto, limit)
    out.append((
        'W1: our round within 1.1x of the machine limit',
        f'{variant(auto) if auto else "auto"} / limit = {_fmt_x(r)}'
        + best_text(best, limit),
        _verdict(r is not None and r <= 1.1, r is None)))
    r = ratio(fedjax, auto)
    out.append((
        'W1 (stretch): faster than FedJAX',
        f'FedJAX / auto = {_fmt_x(r)}' + best_text(best, fedjax, flip=True),
        _verdict(r is not None and r > 1, r is None)))
  for model in ('logistic', 'mlp'):
    w2 = groups.get(('W2', model))
    if not w2:
      continue
    best, auto = _best(w2, 'ours'), _auto(w2)
    for peer, need in (('fedjax', 20), ('flower', 20), ('torch', 1)):
      other = _one(w2, peer)
      r = ratio(other, auto)
      what = (f'at least {need}x faster than {SYSTEM_NAMES[peer]}'
              if need > 1 else f'faster than the {SYSTEM_NAMES[peer]}')
      out.append((
          f'W2 {model}: {what}',
          f'{SYSTEM_NAMES[peer]} / auto = {_fmt_x(r)}'
          + best_text(best, other, flip=True),
          _verdict(r is not None and r >= need if need > 1 else
                   r is not None and r > 1, r is None)))
  big = [k for k in groups if k[0] == 'W3']
  if big:
    key = max(big, key=lambda k: int(k[1].split('=')[1]))
    rows_big = [r for r in groups[key]
                if r['spec']['system'] == 'ours' and r.get('ok')]
    clients = key[1].split('=')[1]
    chunked = [r for r in rows_big if r['spec']['execution'] == 'chunked']
    pick = chunked[0] if chunked else (
        min(rows_big, key=lambda r: r['peak_rss_mb']) if rows_big else None)
    if pick:
      rss = max(pick['peak_rss_mb'], pick.get('tree_peak_rss_mb') or 0.)
      out.append((
          f'W3: {clients} clients/round run with peak RSS under 4 GB',
          f'{variant(pick)}: {rss:.0f} MiB peak RSS, '
          f"{_fmt_s(pick['median_s'])} s/round",
          _verdict(rss < 4000, False)))
    else:
      out.append((f'W3: {clients} clients/round under 4 GB',
                  'no successful run of ours', 'MISSED'))
  return out


def _verdict(met, unknown):
  if unknown:
    return 'not measured'
  return 'met' if met else 'MISSED'


def markdown(rows, meta, *, png_path):
  """The full BENCHMARKS.md text."""
  machine = meta['machine']
  parts = [
      '# Benchmarks',
      '',
      'Generated by `benchmarks/run.py`; do not edit by hand. Regenerate '
      'with the command below (peers need `bash benchmarks/setup_venvs.sh` '
      'once). See `benchmarks/README.md` for what each system runs.',
      '',
      f"- Command: `{meta['command']}`",
      f"- Run: {meta['started']} to "
      f"{meta.get('finished') or 'CUT SHORT (partial results)'} "
      f"({meta['total_s'] / 60:.1f} min; {len(rows)} of "
      f"{meta.get('planned', len(rows))} planned configurations)",
      f"- Machine: {machine['cpu']}, {machine['cores']} cores, "
      f"{machine['memory']} RAM, Python {machine['python']}, CPU only.",
      '- Compare ratios within this run, not absolute numbers across runs; '
      'the 1-minute load average before/after each configuration is in '
      'results.json next to the plot.',
      f"- Load average over the configurations: {_load_summary(rows)}.",
      f"- Backend: {meta.get('backend', 'cpu')}; a GPU/TPU path is "
      'measured only when the run has an accelerator.',
      f"- Our strategies (read from `fedjax_ext.core.STRATEGIES` at run "
      f"time): {', '.join(meta['strategies'])}.",
      '',
      'Columns: seconds per round are the median of the timed rounds '
      '(after warm-up); "first round" includes compilation (and, for '
      'Flower, Ray actor start-up); "compile or start-up" is our '
      'ahead-of-time compile time, or first round minus median for the '
      'peers. Peak RSS, process: `ru_maxrss` of the worker process, a fresh '
      'subprocess per configuration; process tree: the largest sampled sum '
      "over the worker and all its children (Ray's processes for Flower), "
      'sampled every 0.5 s. `x best ours`: seconds/round over the fastest '
      'of our variants (bold); `x limit`: over the machine limit.',
      '',
      f'![seconds per round and peak memory]({png_path})',
      '',
      '## Targets',
      '',
      'Verdicts are on `auto` with the default unroll, what a user gets '
      'without flags. The fastest of our variants is shown for '
      'information only: the minimum of many variants run minutes apart '
      'on a shared machine whose load varied (see the load column below) '
      'is biased low.',
      '',
      '| target | measured (this run) | verdict |',
      '|---|---|---|',
  ]
  for target, measured, verdict in targets(rows):
    parts.append(f'| {target} | {measured} | {verdict} |')
  titles = {
      'W1': 'W1: EMNIST-shaped CNN, 10 clients x 200 examples, batch 20, '
            'one local epoch',
      'W2': 'W2: LEAF-Synthetic-shaped (60 features, 10 classes), 100 '
            'clients, 20 local steps of batch 10',
      'W3': 'W3: W2 logistic regression, growing cohorts',
  }
  groups = _groups(rows)
  for workload in ('W1', 'W2', 'W3'):
    keys = [k for k in groups if k[0] == workload]
    if not keys:
      continue
    parts += ['', f'## {titles[workload]}']
    if workload == 'W3':
      parts += ['', _w3_summary(groups, keys)]
    for key in keys:
      parts += ['', f'### {workload} {key[1]}', '', _table(groups[key])]
  failed = [r for r in rows if not r.get('ok') and not r.get('reused')]
  if failed:
    parts += ['', '## Failures', '']
    for row in failed:
      parts.append(f"- {row['workload']} {row['label']} {variant(row)}: "
                   f"{row.get('error')}")
  parts.append('')
  return '\n'.join(parts)


def _load_summary(rows):
  loads = [r[k] for r in rows for k in ('load_before', 'load_after')
           if r.get(k) is not None]
  if not loads:
    return '-'
  return (f'min {min(loads):.1f}, median {sorted(loads)[len(loads) // 2]:.1f}'
          f', max {max(loads):.1f} (2 cores)')


def _clients(key):
  return int(key[1].split('=')[1])


def _w3_summary(groups, keys):
  keys = sorted(keys, key=_clients)
  series = {}
  for key in keys:
    for row in groups[key]:
      if row.get('ok'):
        series.setdefault(variant(row, chunk=False), {})[_clients(key)] = row
  sizes = [_clients(k) for k in keys]
  head = ('| system / variant (chunk = min(--w3_chunk, clients)) | ' +
          ' | '.join(f'{c} clients: s/round, RSS MiB' for c in sizes) + ' |')
  lines = [head, '|---|' + '---:|' * len(sizes)]
  for name, by_size in series.items():
    cells = []
    for c in sizes:
      row = by_size.get(c)
      cells.append(f"{_fmt_s(row['median_s'])}, {row['peak_rss_mb']:.0f}"
                   if row else '-')
    lines.append(f"| {name} | {' | '.join(cells)} |")
  return '\n'.join(lines)


def plot(rows, path):
  """Bar charts of s/round per workload; W3 s/round and RSS vs clients."""
  groups = _groups(rows)
  bar_keys = [k for k in groups if k[0] != 'W3']
  w3_keys = sorted((k for k in groups if k[0] == 'W3'), key=_clients)
  panels = len(bar_keys) + (2 if w3_keys else 0)
  cols = min(3, max(1, panels))
  nrows = max(1, math.ceil(panels / cols))
  fig = Figure(figsize=(6.5 * cols, 5.5 * nrows))
  FigureCanvasAgg(fig)
  index = 1
  for key in bar_keys:
    ax = fig.add_subplot(nrows, cols, index)
    index += 1
    ok = sorted((r for r in groups[key] if r.get('ok')),
                key=lambda r: r['median_s'])
    names = [variant(r).replace(' (-> ', '\n(-> ') for r in ok]
    values = [r['median_s'] for r in ok]
    colors = [_COLORS[r['spec']['system']] for r in ok]
    ax.barh(range(len(ok)), values, color=colors)
    ax.set_yticks(range(len(ok)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale('log')
    ax.set_xlabel('seconds per round (median, log scale)')
    ax.set_title(f'{key[0]} {key[1]}')
    for i, v in enumerate(values):
      ax.text(v, i, f' {_fmt_s(v)}', va='center', fontsize=7)
  if w3_keys:
    series = {}
    for key in w3_keys:
      for row in groups[key]:
        if row.get('ok'):
          series.setdefault((variant(row, chunk=False),
                             row['spec']['system']),
                            []).append((_clients(key), row))
    ax_t = fig.add_subplot(nrows, cols, index)
    ax_m = fig.add_subplot(nrows, cols, index + 1)
    for (name, system), points in series.items():
      xs = [c for c, _ in points]
      style = '-o' if system == 'ours' else '--s'
      ax_t.plot(xs, [r['median_s'] for _, r in points], style, label=name,
                color=None if system == 'ours' else _COLORS[system])
      ax_m.plot(xs, [max(r['peak_rss_mb'], r.get('tree_peak_rss_mb') or 0.)
                     for _, r in points], style, label=name,
                color=None if system == 'ours' else _COLORS[system])
    ax_t.set(xscale='log', yscale='log', xlabel='clients per round',
             ylabel='seconds per round', title='W3: s/round vs cohort')
    ax_m.set(xscale='log', yscale='log', xlabel='clients per round',
             ylabel='peak RSS (MiB, max of process and tree)',
             title='W3: peak memory vs cohort')
    ax_m.axhline(4000, color='k', lw=0.8, ls=':')
    ax_t.legend(fontsize=6)
    ax_m.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
