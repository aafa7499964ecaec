"""Probe: SCAFFOLD with a million-client population on a host client store.

SCAFFOLD on the W2 logistic model (784 x 10 + 10 parameters; one control
variate of that size per client) with 1,000 clients per round, for

* ``million``: N = 1,000,000 clients in a `training._population`
  `HostClientStore` (``--backend`` sparse or memmap): the round gathers
  the cohort's rows, runs the jitted ``algorithm.apply`` on them and
  scatters them back (`run_round_with_host_store`);
* ``thousand``: N = 1,000 clients in the usual in-device store [N, ...]
  passed whole to the jitted ``apply`` (what `run_rounds` does), every
  client in every round;

each in its own process, so ``ru_maxrss`` (peak RSS) is that
configuration's. Cohorts come from `sample_population` (O(C) per round)
and their data is synthetic, generated per cohort from the client ids (4
examples each, one local step of batch 4), so no per-client dataset is
ever materialised. The round time is the median over rounds 2.. of
gather + apply + scatter; data generation (what `run_rounds` prefetches on
a thread) is reported apart.

Usage (a few rounds, < 3 minutes niced on 2 cores):

  nice -n 10 python -m benchmarks.probes.population
  nice -n 10 python -m benchmarks.probes.population --configs=million \\
      --backend=memmap --rounds=4
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext.training import _population

COHORT = 1000
EXAMPLES = 4


def synthetic_cohort(ids: np.ndarray, seed: int) -> core.Cohort:
  """Deterministic data of clients ``ids``: EXAMPLES digits-shaped
  examples each, from a generator seeded by (seed, client id)."""
  xs, ys = [], []
  for i in ids.tolist():
    rng = np.random.default_rng([seed, i])
    label = rng.integers(0, 10, EXAMPLES)
    x = rng.normal(size=(EXAMPLES, 28, 28, 1)).astype(np.float32)
    x[:, label, 0, 0] += 3.  # A learnable signal.
    xs.append(x)
    ys.append(label.astype(np.int32))
  count = len(ids)
  return core.Cohort(
      client_ids=np.asarray(ids, np.int32),
      batches={'x': np.stack(xs)[:, None], 'y': np.stack(ys)[:, None],
               'mask': np.ones((count, 1, EXAMPLES), np.float32)},
      num_examples=np.full((count,), float(EXAMPLES), np.float32))


def run_config(config: str, num_clients: int, rounds: int, backend: str,
               seed: int) -> dict:
  model = models.create_model('logistic', num_classes=10)
  params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1),
                                                  np.float32))['params']
  algorithm = algorithms.scaffold(
      clients.classification_loss(model), 0.05, optax.sgd(1.0),
      num_clients=num_clients)
  apply = jax.jit(algorithm.apply, donate_argnums=(0, 1))
  state = algorithm.init(params)
  init_row = jax.device_get(algorithm.init_client_state(params))
  key = jax.random.key(seed)
  tmp = None
  if config == 'million':
    path = None
    if backend == 'memmap':
      tmp = tempfile.TemporaryDirectory()
      path = os.path.join(tmp.name, 'store')
    store = _population.HostClientStore(init_row, num_clients, backend,
                                        path)
  else:
    store = core.tree_broadcast(algorithm.init_client_state(params),
                                num_clients)
  round_s, data_s, sample_s = [], [], []
  for r in range(rounds):
    t0 = time.perf_counter()
    ids = _population.sample_population(num_clients, COHORT, seed, r)
    t1 = time.perf_counter()
    cohort = synthetic_cohort(ids, seed)
    t2 = time.perf_counter()
    if config == 'million':
      state, metrics = _population.run_round_with_host_store(
          apply, state, store, cohort, key)
    else:
      state, store, metrics = apply(state, store, cohort, key)
    jax.block_until_ready((state, metrics))
    t3 = time.perf_counter()
    sample_s.append(t1 - t0)
    data_s.append(t2 - t1)
    round_s.append(t3 - t2)
    print(f'  {config} round {r}: {t3 - t2:.3f} s (data {t2 - t1:.3f} s, '
          f'sample {1e3 * (t1 - t0):.2f} ms, loss '
          f'{float(metrics["train_loss"]):.4f})', flush=True)
  out = {
      'config': config, 'num_clients': num_clients, 'cohort': COHORT,
      'backend': backend if config == 'million' else 'device',
      'rounds': rounds,
      'round_s_median': float(np.median(round_s[1:])),
      'first_round_s': round_s[0],
      'data_s_median': float(np.median(data_s)),
      'sample_ms_median': 1e3 * float(np.median(sample_s)),
      'peak_rss_gb': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux.
      'final_train_loss': float(metrics['train_loss']),
  }
  if config == 'million':
    out['visited'] = store.num_visited
    out['store_bytes'] = store.num_visited * store.row_nbytes
  if tmp is not None:
    tmp.cleanup()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='million,thousand',
                      help='Comma-separated: million, thousand.')
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--backend', default='sparse',
                      choices=_population.BACKENDS)
  parser.add_argument('--population', type=int, default=1_000_000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rounds < 2:
    parser.error('--rounds must be >= 2 (round 1 compiles).')
  configs = args.configs.split(',')
  if not set(configs) <= {'million', 'thousand'} or not configs:
    parser.error('--configs must name some of: million, thousand.')
  if args.child:
    n = args.population if args.child == 'million' else COHORT
    print(json.dumps(run_config(args.child, n, args.rounds, args.backend,
                                args.seed)), flush=True)
    return
  results = []
  for config in configs:
    print(f'{config}: ...', flush=True)
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.probes.population',
         '--child', config, '--rounds', str(args.rounds), '--backend',
         args.backend, '--population', str(args.population), '--seed',
         str(args.seed)], capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    print('\n'.join(lines[:-1]), flush=True)
    if proc.returncode:
      print(proc.stderr[-3000:], file=sys.stderr)
      sys.exit(proc.returncode)
    results.append(json.loads(lines[-1]))
    print(json.dumps(results[-1]), flush=True)
  if len(results) == 2:
    ratio = results[0]['round_s_median'] / results[1]['round_s_median']
    print(f'round time {results[0]["config"]} / {results[1]["config"]}: '
          f'{ratio:.2f}x', flush=True)


if __name__ == '__main__':
  main()
