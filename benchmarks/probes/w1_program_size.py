"""W1 probe: one unrolled multi-step program against jitted single steps.

Usage: python benchmarks/probes/w1_program_size.py REPEATS

Alternates, in one process, the machine limit (one jitted SGD step per
call) and programs that unroll a client's 10 plain SGD steps (no masks, no
metrics), one client or 3 clients per program, with and without an
`optimization_barrier` between steps (BUILD_NOTES, issue 3).
"""
import time, sys, numpy as np, jax, jax.numpy as jnp, optax
from fedjax_ext import clients, models
C, S, B = 10, 10, 20
model = models.create_model('cnn', num_classes=62)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((C, S, B, 28, 28, 1), dtype=np.float32))
y = jnp.asarray(rng.integers(0, 62, (C, S, B), dtype=np.int32))
params = model.init(jax.random.key(0), x[0, 0])['params']
def loss(p, bx, by):
  return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, bx, train=True), by).mean()
@jax.jit
def sgd_step(p, bx, by):
  g = jax.grad(loss)(p, bx, by)
  return jax.tree.map(lambda w, g: w - 0.1 * g, p, g)
NC = 3
def limit():
  ps = []
  for i in range(NC):
    p = params
    for j in range(S):
      p = sgd_step(p, x[i, j], y[i, j])
    ps.append(p)
  return ps
def make(barrier, nclients):
  @jax.jit
  def f(p0, bx, by):
    out = []
    for i in range(nclients):
      p = p0
      for j in range(S):
        g = jax.grad(loss)(p, bx[i, j], by[i, j])
        p = jax.tree.map(lambda w, g: w - 0.1 * g, p, g)
        if barrier:
          p = jax.lax.optimization_barrier(p)
      out.append(p)
    return out
  return f
variants = [('limit', limit)]
for nc in [1, NC]:
  for bar in [False, True]:
    f = make(bar, nc)
    variants.append((f'unrolled clients/prog={nc} barrier={bar}', (lambda f=f: [f(params, x[i:i+1], y[i:i+1]) for i in range(NC)]) if nc == 1 else (lambda f=f: f(params, x, y))))
for n, fn in variants:
  t = time.perf_counter(); jax.block_until_ready(fn()); print(n, 'first', round(time.perf_counter() - t, 1), flush=True)
times = {n: [] for n, _ in variants}
for rep in range(int(sys.argv[1])):
  for n, fn in variants:
    t = time.perf_counter(); jax.block_until_ready(fn()); times[n].append(time.perf_counter() - t)
for n in times:
  print(f'{n:40s} median {np.median(times[n]):.3f}s  ratio {np.median(times[n]) / np.median(times["limit"]):.2f}  mins ratio {min(times[n])/min(times["limit"]):.2f}')
