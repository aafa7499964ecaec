"""W2 probe: our vmapped round against a bare vmap-of-scan FedAvg round.

Usage: python benchmarks/probes/w2_floor.py {logistic,mlp}

Prints median/min milliseconds per round of `algorithms.fed_avg` (vmap,
unroll 1 and 4), of a bare `vmap(scan(sgd_step))` with a plain mean, and of
the bare round with our masked loss and per-step key folding: how far our
round is from the fused program it compiles to (BUILD_NOTES, issue 3).
"""
import time, sys, numpy as np, jax, jax.numpy as jnp, optax
from fedjax_ext import algorithms, clients, core, models
C, S, B = 100, 20, 10
which = sys.argv[1] if len(sys.argv) > 1 else 'logistic'
model = models.create_model(which, num_classes=10, **({'hidden_sizes': (64,)} if which == 'mlp' else {}))
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((C, S, B, 60), dtype=np.float32))
y = jnp.asarray(rng.integers(0, 10, (C, S, B), dtype=np.int32))
params = model.init(jax.random.key(0), x[0, 0])['params']
key = jax.random.key(1)
def timeit(name, f, *args, n=30):
  out = f(*args); jax.block_until_ready(out)
  ts = []
  for _ in range(n):
    t = time.perf_counter(); out = f(*args); jax.block_until_ready(out); ts.append(time.perf_counter() - t)
  print(f'{name:45s} median {np.median(ts)*1e3:7.2f} ms  min {min(ts)*1e3:7.2f}', flush=True)

cohort = core.Cohort(jnp.arange(C, dtype=jnp.int32), {'x': x, 'y': y, 'mask': jnp.ones((C, S, B))}, jnp.full((C,), S * B, jnp.float32))
for unroll in [1, 4]:
  alg = algorithms.fed_avg(clients.classification_loss(model), optax.sgd(0.1), optax.sgd(1.), execution=core.Execution('vmap', unroll=unroll))
  st = alg.init(params)
  f = jax.jit(alg.apply)
  timeit(f'ours vmap unroll={unroll}', f, st, (), cohort, key)

# bare vmap of scan
def loss(p, bx, by):
  return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, bx), by).mean()
def client(p, xs, ys):
  def step(p, b):
    g = jax.grad(loss)(p, *b)
    return jax.tree.map(lambda a, g: a - 0.1 * g, p, g), None
  q, _ = jax.lax.scan(step, p, (xs, ys))
  return jax.tree.map(jnp.subtract, p, q)
@jax.jit
def bare(p, x, y):
  d = jax.vmap(client, in_axes=(None, 0, 0))(p, x, y)
  return jax.tree.map(lambda p, d: p - d.mean(0), p, d)
timeit('bare vmap scan', bare, params, x, y)
# bare + mask + metrics
lossfn = clients.classification_loss(model)
def client2(p, batches, k):
  def step(p, inp):
    s, b = inp
    g, _ = jax.grad(lambda p: lossfn(p, b, jax.random.fold_in(k, s)), has_aux=True)(p)
    return jax.tree.map(lambda a, g: a - 0.1 * g, p, g), None
  q, _ = jax.lax.scan(step, p, (jnp.arange(S), batches))
  return jax.tree.map(jnp.subtract, p, q)
@jax.jit
def bare2(p, batches, keys):
  d = jax.vmap(client2, in_axes=(None, 0, 0))(p, batches, keys)
  return jax.tree.map(lambda p, d: p - d.mean(0), p, d)
timeit('bare with our loss_fn + fold_in', bare2, params, cohort.batches, jax.random.split(key, C))
