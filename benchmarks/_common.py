"""What every benchmark worker shares: specs, synthetic data, timing, output.

This module runs inside every peer's own virtualenv (FedJAX's jax 0.4.13,
PyTorch, Flower), so it imports only the standard library and NumPy.

A worker is started as ``PYTHON benchmarks/worker_<system>.py SPEC_JSON``,
runs one configuration (one system, one workload size, one variant), and
prints one line ``BENCH_RESULT {json}`` that the driver (`benchmarks.run`)
collects. Every configuration runs in a fresh process, so ``ru_maxrss`` is
the peak resident memory of that configuration alone.
"""

import json
import math
import os
import resource
import statistics
import sys
import time
import traceback

import numpy as np

RESULT_MARKER = 'BENCH_RESULT '


def load_spec() -> dict:
  """The spec given as the worker's only argument (a JSON object)."""
  if len(sys.argv) != 2:
    raise SystemExit(f'usage: {sys.argv[0]} SPEC_JSON')
  return json.loads(sys.argv[1])


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far, in MiB (Linux: KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def synthetic_data(spec: dict) -> tuple[np.ndarray, np.ndarray]:
  """Random inputs [C, S, B, *input_shape] float32 and labels [C, S, B].

  Every system trains on data of exactly these shapes: C clients, each with
  S batches of B examples (S * B examples, one local pass). Values are
  standard normal; labels uniform over `num_classes`. Only the shapes and
  the amount of work matter for timing.
  """
  rng = np.random.default_rng(spec.get('seed', 0))
  c, s, b = spec['clients'], spec['steps'], spec['batch']
  x = rng.standard_normal((c, s, b, *spec['input_shape']), dtype=np.float32)
  y = rng.integers(0, spec['num_classes'], size=(c, s, b), dtype=np.int32)
  return x, y


def time_rounds(run_round, spec: dict, *, first_includes_compile: bool):
  """Runs rounds and times them; `run_round(r)` must block until done.

  Policy (the same for every system): the first round is timed on its own
  (``first_round_s``: compilation, tracing, actor start-up and the like),
  then ``warmup - 1`` more untimed warm-up rounds, then up to ``repeats``
  timed rounds, stopping early once the timed rounds have used
  ``budget_s`` seconds (at least one timed round always runs). A round
  slower than ``slow_s`` skips the remaining warm-up: its cost is dominated
  by the steps themselves. When the first round excludes compilation
  (`first_includes_compile` False: ours, compiled ahead of time) and is
  slower than ``slow_s``, it is the one timed sample.

  Returns:
    A dict with ``first_round_s``, ``round_times_s`` (the timed rounds) and
    ``median_s`` (their median).
  """
  warmup = max(1, spec.get('warmup', 2))
  repeats = max(1, spec.get('repeats', 5))
  budget = spec.get('budget_s', 60.)
  slow = spec.get('slow_s', 15.)
  t = time.perf_counter()
  run_round(0)
  first = time.perf_counter() - t
  r = 1
  times = []
  if first > slow and not first_includes_compile:
    times.append(first)
  else:
    for _ in range(warmup - 1):
      t = time.perf_counter()
      run_round(r)
      r += 1
      if time.perf_counter() - t > slow:
        break
  while not times or (len(times) < repeats and sum(times) < budget):
    t = time.perf_counter()
    run_round(r)
    r += 1
    times.append(time.perf_counter() - t)
  return {
      'first_round_s': first,
      'round_times_s': times,
      'median_s': statistics.median(times),
      'rounds_run': r,
  }


def emit(result: dict) -> None:
  """Prints the result line the driver parses (and flushes)."""
  result = dict(result)
  result.setdefault('peak_rss_mb', peak_rss_mb())
  result.setdefault('pid', os.getpid())
  print(RESULT_MARKER + json.dumps(result, default=_jsonable), flush=True)


def _jsonable(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(f'not JSON serializable: {type(value)}')


def run_worker(main) -> None:
  """Runs ``main(spec) -> result dict`` and emits its result or its error."""
  spec = load_spec()
  try:
    result = main(spec)
    result['ok'] = True
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    message = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
    result = {'ok': False, 'error': message}
  result['spec'] = spec
  emit(result)


def is_finite(value: float) -> bool:
  return math.isfinite(float(value))
