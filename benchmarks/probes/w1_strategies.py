"""W1 probe (issue 16): CPU strategies for the conv round; why scans were slow.

Usage (niced; ~5-8 minutes on the shared 2-core machine):

  nice -n 10 .venv/bin/python benchmarks/probes/w1_strategies.py \
      [--repeats=2] [--rounds=2] [--variants=limit,auto,...] \
      [--interleaved=N]

Each variant runs in its own subprocess (so ``ru_maxrss`` is that variant's
peak RSS), the variants alternate `--repeats` times, and the table keeps
each variant's minimum steady round, its first round and compile time from
the same repeat, and its ratio to the limit of the same repeat (the machine
is shared; compare ratios). The W1 round: EMNIST CNN (1.2M parameters),
10 clients x 10 local steps of batch 20, FedAvg (client SGD 0.1, server
SGD 1), synthetic data, as `benchmarks/worker_ours.py`.

Variants:
  limit: the machine limit of `worker_ours.run_limit`: one jitted plain SGD
    step, a Python loop over clients and steps, jitted accumulation and
    server step; blocks once at the end of the round.
  host: per-step programs dispatched from the host with OUR step (masked
    `clients.run_local_steps` of one step, metrics included): one jitted
    ``step(params, opt_state, batch, key)``, Python loop, no blocking until
    the end; the aggregation and server step jitted separately.
  old_auto: `algorithms.fed_avg` jitted whole, Execution('unrolled',
    unroll=True): the former `auto` (every client and step unrolled).
  auto: the same with Execution('auto'): now 'sequential' (`lax.map` over
    clients), rolled local steps, canonical convolutions.
  unrolled_rolled: Execution('unrolled', unroll=1): clients unrolled, steps
    rolled.
  raw_scan / raw_scan_canon: no library: `lax.map` over clients of a rolled
    `lax.scan` of the plain SGD step, without / with
    `core._map.canonicalize_convs`: the cause of the slow scans in
    isolation (one timed round for raw_scan, which is ~10x slower). Not in
    the default `--variants`.

Cause of the slow rolled scan (compiled HLO, `jax.jit(f).lower(...).compile()
.as_text()`): XLA:CPU's `ConvCanonicalization` pass, which turns a conv into
the NHWC x HWIO form its Eigen kernel needs, only visits the entry
computation. A conv's gradients are convs in other layouts (kernel gradient
``f01b_i01o->01bf``, input gradient ``b01f_01oi`` after a reverse); in the
while body of a scan they stay so and run on the naive emitted loop nest.
Measured on one client (10 steps, load ~4): per-step limit 0.58 s, rolled
scan 13.6 s (23x), unrolled 0.73 s (1.25x).

Measured (2 shared cores, load 9-11 from other jobs; absolute seconds are
~3x a quiet machine's, compare ratios). Subprocess runs (default mode,
repeat 0; repeat 1 gave limit 10.9, auto 15.1 / 11.8 / 28.7 / 517):

  | variant | steady s | compile s | first round s | peak RSS MiB |
  | limit | 11.5 | - | 20.6 | 521 |
  | auto (sequential, rolled, canonical convs) | 15.6 | 11.7 | 27.0 | 509 |
  | old_auto (unrolled x unrolled) | 20.7 | 128.9 | 157.1 | 2754 |
  | host (per-step dispatch, our step) | 14.9 | - | 16.8 | 605 |
  | unrolled_rolled | 12.5 | 20.1 | 36.4 | 557 |

The steady column moved with the load between subprocesses (the limit
itself 10.9-11.5, auto 15.1-15.6 at load ~10); the same variants
alternated round by round in one process (`--interleaved=3 --repeats=0`)
give the ratios that count:

  | variant | min s | x limit (min) | x limit (median per-round ratio) |
  | limit | 11.95 | 1.00 | 1.00 |
  | auto | 9.48 | 0.79 | 0.99 |
  | unrolled_rolled | 10.60 | 0.89 | 0.90 |
  | host | 11.51 | 0.96 | 1.05 |
  | raw_scan_canon | 11.71 | 0.98 | 0.98 |

Conclusion: with canonical convs every rolled variant is at the limit;
`auto` = 'sequential' + rolled compiles ~10x faster than the unrolled
round and uses ~1/5 of its memory, so it is `auto`'s CPU choice for large
models; host dispatch brings nothing and is not a strategy.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

C, S, B, LR = 10, 10, 20, 0.1
VARIANTS = ('limit', 'host', 'old_auto', 'auto', 'unrolled_rolled',
            'raw_scan_canon', 'raw_scan')
DEFAULT_VARIANTS = ('limit', 'auto', 'old_auto', 'host', 'unrolled_rolled')


def _rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def _data():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fedjax_ext import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('cnn', num_classes=62)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((C, S, B, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 62, (C, S, B), dtype=np.int32)
  params = jax.jit(model.init)(jax.random.key(1), jnp.asarray(x[0, 0]))
  return model, x, y, params['params']


def _time(run_round, rounds, compile_s=0.):
  t = time.perf_counter()
  run_round()
  first = time.perf_counter() - t
  times = []
  for _ in range(rounds):
    t = time.perf_counter()
    run_round()
    times.append(time.perf_counter() - t)
  return dict(compile_s=compile_s, first_round_s=compile_s + first,
              steady_s=min(times), rounds=times)


def _plain_step(model):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def loss_fn(p, bx, by):
    logits = model.apply({'params': p}, bx, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, by).mean()

  def sgd_step(p, bx, by):
    grads = jax.grad(loss_fn)(p, bx, by)
    return jax.tree.map(lambda w, g: w - LR * g, p, grads)

  return sgd_step


def build_limit():
  import jax  # pylint: disable=g-import-not-at-top
  model, x, y, params = _data()
  sgd_step = jax.jit(_plain_step(model))
  xs = jax.device_put([list(xi) for xi in x])
  ys = jax.device_put([list(yi) for yi in y])
  accumulate = jax.jit(lambda t, g, l: jax.tree.map(
      lambda t, g, l: t + (g - l), t, g, l))
  server = jax.jit(lambda g, t: jax.tree.map(lambda g, t: g - t / C, g, t))
  zeros = jax.tree.map(jax.numpy.zeros_like, params)
  holder = {'p': params}

  def run_round():
    g = holder['p']
    total = zeros
    for i in range(C):
      p = g
      for j in range(S):
        p = sgd_step(p, xs[i][j], ys[i][j])
      total = accumulate(total, g, p)
    holder['p'] = jax.block_until_ready(server(g, total))

  return run_round, 0., {}


def build_host():
  """Per-step programs of our own masked step, dispatched from the host."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from fedjax_ext import clients  # pylint: disable=g-import-not-at-top
  model, x, y, params = _data()
  loss_fn = clients.classification_loss(model)
  opt = optax.sgd(LR)

  def sgd_step(p, st, batch, key):
    grads, (loss, metrics) = jax.grad(
        lambda p: (lambda l, m: (l, (l, m)))(*loss_fn(p, batch, key)),
        has_aux=True)(p)
    updates, st = opt.update(grads, st, p)
    return optax.apply_updates(p, updates), st, loss, metrics, ()

  @jax.jit
  def step(p, st, batch, key):
    run = clients.run_local_steps(
        p, st, jax.tree.map(lambda v: v[None], batch), key, sgd_step)
    return run.params, run.opt_state, run.stats

  batches = [[{'x': jnp.asarray(x[i, j]), 'y': jnp.asarray(y[i, j]),
               'mask': jnp.ones((B,), jnp.float32)} for j in range(S)]
             for i in range(C)]
  keys = list(jax.random.split(jax.random.key(0), C * S))
  accumulate = jax.jit(lambda t, g, l: jax.tree.map(
      lambda t, g, l: t + (g - l), t, g, l))
  server = jax.jit(lambda g, t: jax.tree.map(lambda g, t: g - t / C, g, t))
  zeros = jax.tree.map(jnp.zeros_like, params)
  holder = {'p': params}
  opt_state = opt.init(params)

  def run_round():
    g = holder['p']
    total = zeros
    for i in range(C):
      p, st = g, opt_state
      for j in range(S):
        p, st, _ = step(p, st, batches[i][j], keys[i * S + j])
      total = accumulate(total, g, p)
    holder['p'] = jax.block_until_ready(server(g, total))

  return run_round, 0., {}


def build_ours(strategy, unroll):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from fedjax_ext import algorithms  # pylint: disable=g-import-not-at-top
  from fedjax_ext import clients  # pylint: disable=g-import-not-at-top
  from fedjax_ext import core  # pylint: disable=g-import-not-at-top
  model, x, y, params = _data()
  execution = core.Execution(strategy=strategy, unroll=unroll)
  algorithm = algorithms.fed_avg(clients.classification_loss(model),
                                 optax.sgd(LR), optax.sgd(1.),
                                 execution=execution)
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params), C)
  cohort = core.Cohort(
      client_ids=jnp.arange(C, dtype=jnp.int32),
      batches={'x': jnp.asarray(x), 'y': jnp.asarray(y),
               'mask': jnp.ones((C, S, B), jnp.float32)},
      num_examples=jnp.full((C,), S * B, jnp.float32))
  key = jax.random.key(0)
  t = time.perf_counter()
  compiled = jax.jit(algorithm.apply, donate_argnums=(0, 1)).lower(
      state, store, cohort, key).compile()
  compile_s = time.perf_counter() - t
  holder = {'state': state, 'store': store}

  def run_round():
    s, st, m = compiled(holder['state'], holder['store'], cohort, key)
    jax.block_until_ready((s, st, m))
    holder.update(state=s, store=st, loss=float(m['train_loss']))

  def extra():
    return dict(resolved=core.resolve_strategy(strategy, [params]),
                loss=holder['loss'], finite=bool(np.isfinite(holder['loss'])))

  return run_round, compile_s, extra


def build_raw_scan(canonical):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fedjax_ext.core import _map  # pylint: disable=g-import-not-at-top
  model, x, y, params = _data()
  step = _plain_step(model)
  if canonical:
    step = _map.canonicalize_convs(step)

  def client(p, xy):
    return jax.lax.scan(lambda p, b: (step(p, *b), None), p, xy)[0]

  @jax.jit
  def round_fn(p, x, y):
    local = jax.lax.map(lambda xy: client(p, xy), (x, y))
    return jax.tree.map(lambda g, l: g - jnp.mean(g[None] - l, 0), p, local)

  x, y = jnp.asarray(x), jnp.asarray(y)
  t = time.perf_counter()
  compiled = round_fn.lower(params, x, y).compile()
  compile_s = time.perf_counter() - t
  holder = {'p': params}

  def run_round():
    holder['p'] = jax.block_until_ready(compiled(holder['p'], x, y))

  return run_round, compile_s, {}


BUILDERS = {
    'limit': build_limit,
    'host': build_host,
    'old_auto': lambda: build_ours('unrolled', True),
    'auto': lambda: build_ours('auto', 'auto'),
    'unrolled_rolled': lambda: build_ours('unrolled', 1),
    'raw_scan_canon': lambda: build_raw_scan(True),
    'raw_scan': lambda: build_raw_scan(False),
}


def worker(variant, rounds):
  run_round, compile_s, extra = BUILDERS[variant]()
  out = _time(run_round, 1 if variant == 'raw_scan' else rounds, compile_s)
  out.update(extra() if callable(extra) else extra)
  out.update(variant=variant, peak_rss_mb=_rss_mb())
  print('RESULT ' + json.dumps(out), flush=True)


def interleaved(variants, rounds):
  """Steady rounds of every variant alternated in ONE process.

  Load on the shared machine drifts over minutes; alternating the variants
  round by round exposes each to the same load, so these ratios are the
  steadier ones (peak RSS is not per variant here).
  """
  runs = {}
  for variant in variants:
    run_round, _, _ = BUILDERS[variant]()
    run_round()  # Compile and warm up.
    runs[variant] = run_round
  times = {v: [] for v in variants}
  for _ in range(rounds):
    for variant, run_round in runs.items():
      t = time.perf_counter()
      run_round()
      times[variant].append(time.perf_counter() - t)
  print('\n| variant (interleaved) | min s/round | median s/round | '
        'x limit (min) | x limit (median of per-round ratios) |')
  print('|---|---:|---:|---:|---:|')
  for variant, ts in times.items():
    ratios = sorted(t / l for t, l in zip(ts, times.get('limit', ts)))
    print(f'| {variant} | {min(ts):.2f} | {sorted(ts)[len(ts) // 2]:.2f} | '
          f'{min(ts) / min(times.get("limit", ts)):.2f} | '
          f'{ratios[len(ratios) // 2]:.2f} |')
  print(json.dumps(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS))
  parser.add_argument('--interleaved', type=int, default=0,
                      help='also alternate the variants in one process for '
                      'this many rounds each (steadier ratios)')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args.worker, args.rounds)
  variants = args.variants.split(',')
  bad = sorted(set(variants) - set(VARIANTS))
  if bad:
    parser.error(f'unknown --variants {bad}; valid: {", ".join(VARIANTS)}')
  if args.interleaved:
    interleaved([v for v in variants if v != 'raw_scan'], args.interleaved)
  if not args.repeats:
    return None
  results = {v: [] for v in variants}
  t0 = time.time()
  for repeat in range(args.repeats):
    for variant in variants:
      if variant == 'raw_scan' and repeat:
        continue  # One sample is enough for the ~10x slow case.
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__), '--worker', variant,
           f'--rounds={args.rounds}'], capture_output=True, text=True,
          check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if proc.returncode or not lines:
        print(f'{variant}: failed\n{proc.stderr[-3000:]}', flush=True)
        continue
      result = json.loads(lines[-1][len('RESULT '):])
      result['repeat'] = repeat
      result['load'] = os.getloadavg()[0]
      results[variant].append(result)
      print(f'[{time.time() - t0:5.0f}s] repeat {repeat} {variant}: '
            f'steady {result["steady_s"]:.2f} s, compile '
            f'{result["compile_s"]:.1f} s, first {result["first_round_s"]:.1f}'
            f' s, RSS {result["peak_rss_mb"]:.0f} MiB, load '
            f'{result["load"]:.1f}', flush=True)
  limit = {r['repeat']: r['steady_s'] for r in results.get('limit', [])}
  print('\n| variant | steady s/round (min) | x limit (same repeat) | '
        'compile s | first round s | peak RSS MiB |')
  print('|---|---:|---:|---:|---:|---:|')
  for variant, runs in results.items():
    if not runs:
      continue
    best = min(runs, key=lambda r: r['steady_s'])
    ratios = [r['steady_s'] / limit[r['repeat']] for r in runs
              if r['repeat'] in limit]
    ratio = f'{min(ratios):.2f} (of {len(ratios)})' if ratios else '-'
    print(f'| {variant} | {best["steady_s"]:.2f} | {ratio} | '
          f'{min(r["compile_s"] for r in runs):.1f} | '
          f'{min(r["first_round_s"] for r in runs):.1f} | '
          f'{max(r["peak_rss_mb"] for r in runs):.0f} |')
  print(json.dumps(results))


if __name__ == '__main__':
  main()
