"""Gossip at scale: a decentralized round against a FedAvg round, and mixing.

Usage (niced; the timings are min over repeats, the two rounds interleaved
so that machine load hits both alike)::

  python benchmarks/probes/gossip_scale.py round [N] [S] [B] [repeats]
  python benchmarks/probes/gossip_scale.py mix [N,N,...] [repeats]

``round``: N nodes (default 1,000) on ``topology.exponential(N, num_hops=4)``
(degree 8), W2's logistic regression at MNIST size (784 -> 10, 7,850
params), every node S local SGD steps of batch B (default 20 x 10, W2's):
one `decentralized.dfedavg` round (local steps + sparse `topology.mix` +
consensus metrics) vs one `algorithms.fed_avg` round of the same N-client
cohort (local steps + weighted mean). Prints both and their ratio.

``mix``: `topology.mix` alone on rows [N, 7850] float32 for each N (default
1k, 10k, 100k) on the degree-8 exponential graph: ms per call, ns per
(edge slot x float) and effective GB/s, to show linear scaling in edges.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms, clients, core, decentralized, models, topology

D_IN, CLASSES = 784, 10


def _time(fn, *args):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def round_probe(n=1000, steps=20, batch=10, repeats=5):
  model = models.create_model('logistic', num_classes=CLASSES)
  loss_fn = clients.classification_loss(model)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, steps, batch, D_IN), np.float32))
  y = jnp.asarray(rng.integers(0, CLASSES, (n, steps, batch), np.int32))
  cohort = core.Cohort(jnp.arange(n, dtype=jnp.int32),
                       {'x': x, 'y': y, 'mask': jnp.ones((n, steps, batch))},
                       jnp.full((n,), steps * batch, jnp.float32))
  params = model.init(jax.random.key(0), x[0, 0])['params']
  graph = topology.exponential(n, num_hops=4)
  algs = {
      'fedavg': algorithms.fed_avg(loss_fn, optax.sgd(0.1), optax.sgd(1.)),
      'dfedavg': decentralized.dfedavg(loss_fn, optax.sgd(0.1), graph,
                                       mixing='sparse'),
  }
  runs = {}
  for name, alg in algs.items():
    state = alg.init(jax.tree.map(jnp.array, params))
    store = core.tree_broadcast(alg.init_client_state(params), n)
    runs[name] = [jax.jit(alg.apply, donate_argnums=(0, 1)), state, store]
  times = {name: [] for name in algs}
  for i in range(repeats + 1):  # The first call compiles.
    for name, r in runs.items():
      t = time.perf_counter()
      r[1], r[2], metrics = r[0](r[1], r[2], cohort, jax.random.key(i))
      jax.block_until_ready((r[1], r[2], metrics))
      if i:
        times[name].append(time.perf_counter() - t)
  print(f'round: {n} nodes/clients, degree {graph.max_degree}, logistic '
        f'{D_IN}->{CLASSES}, {steps} steps x batch {batch}, {repeats} repeats')
  for name, ts in times.items():
    print(f'  {name:8s} min {min(ts) * 1e3:8.1f} ms  median '
          f'{np.median(ts) * 1e3:8.1f} ms')
  print(f'  dfedavg / fedavg (min): {min(times["dfedavg"]) / min(times["fedavg"]):.2f}x'
        f'  (median: {np.median(times["dfedavg"]) / np.median(times["fedavg"]):.2f}x)')


def mix_probe(sizes=(1000, 10_000, 100_000), repeats=3, width=D_IN * CLASSES
              + CLASSES):
  print(f'mix: rows [N, {width}] float32, exponential(N, num_hops=4), '
        f'{repeats} repeats')
  for n in sizes:
    graph = jax.jit(topology.exponential(n, num_hops=4).sample)(
        jax.random.key(0))
    rows = jax.jit(lambda k: jax.random.normal(k, (n, width)))(
        jax.random.key(1))
    jax.block_until_ready(topology.mix(graph, rows))  # Compile.
    best = min(_time(topology.mix, graph, rows) for _ in range(repeats))
    slots = n * graph.neighbors.shape[1]
    moved = (slots + 2 * n) * width * 4  # Gathered + read + written bytes.
    print(f'  N={n:7d}: {best * 1e3:9.1f} ms  '
          f'{best / (slots * width) * 1e9:6.3f} ns per slot-float  '
          f'{moved / best / 1e9:6.2f} GB/s')
    del rows, graph


if __name__ == '__main__':
  which = sys.argv[1] if len(sys.argv) > 1 else 'round'
  if which == 'round':
    round_probe(*map(int, sys.argv[2:6]))
  elif which == 'mix':
    sizes = tuple(map(int, sys.argv[2].split(','))) if len(sys.argv) > 2 else (
        1000, 10_000, 100_000)
    mix_probe(sizes, *map(int, sys.argv[3:4]))
  else:
    sys.exit(f'usage: {sys.argv[0]} round|mix ...')
