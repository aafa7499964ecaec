"""ZO probe: median time per step of the fine-tuning methods, interleaved.

Usage: python benchmarks/probes/zo_step_times.py

The centralized step of each method of `experiments.zo_finetune` (first-
order SGD, MeZO, uniform sparse ZO, CurvZO with a fixed and an adaptive
budget) on its default model, the 64-64 MLP on 8x8 digits (batch 32, the
methods' default rates), as one jitted scan of 200 steps. The CPU is shared,
so each of the 15 repeats runs one chunk of every method back to back: load
changes hit all methods alike, and the median drops outliers. Prints
milliseconds per step and the ratio to MeZO's (BUILD_NOTES: the target "step
time within 1.15x of MeZO's"). Data are random: step time does not depend on
the values.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import clients, models, zo

STEPS, REPEATS, BATCH, FEATURES, CLASSES = 200, 15, 32, 64, 5
ESTIMATORS = {
    'sgd': None,
    'mezo': (zo.mezo, 2e-3, {}),
    'uniform_sparse': (zo.sparse_zo, 1.25e-3, dict(budget=0.4)),
    'curvzo_fixed': (zo.curvzo, 1e-3, dict(budget=0.4,
                                           adaptive_budget=False)),
    'curvzo': (zo.curvzo, 1e-3, dict(budget=0.4)),
}

model = models.create_model('mlp', num_classes=CLASSES, hidden_sizes=(64, 64))
loss_fn = clients.classification_loss(model)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((STEPS, BATCH, FEATURES), np.float32))
y = jnp.asarray(rng.integers(0, CLASSES, (STEPS, BATCH)), jnp.int32)
params = model.init(jax.random.key(0), x[0], train=False)['params']


def chunk_fn(method):
  """A compiled scan of STEPS steps of `method`, and its starting carry."""
  if ESTIMATORS[method] is None:
    tx = optax.sgd(0.05)
  else:
    factory, lr, kwargs = ESTIMATORS[method]
    tx = optax.chain(factory(epsilon=1e-3, key=7, **kwargs), optax.sgd(lr))

  def step(carry, batch):
    p, state = carry
    batch = dict(x=batch[0], y=batch[1], mask=jnp.ones(batch[1].shape))
    obj = lambda q: loss_fn(q, batch, jax.random.key(0))[0]
    if ESTIMATORS[method] is None:
      updates, state = tx.update(jax.grad(obj)(p), state, p)
    else:
      updates, state = tx.update(None, state, p, obj_fn=obj)
    return (optax.apply_updates(p, updates), state), None

  carry = (params, tx.init(params))
  run = jax.jit(lambda c, xs, ys: jax.lax.scan(step, c, (xs, ys))[0])
  return run.lower(carry, x, y).compile(), carry


runners = {method: chunk_fn(method) for method in ESTIMATORS}
times = {method: [] for method in runners}
for _ in range(REPEATS):
  for method, (compiled, carry) in runners.items():
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(carry, x, y))
    times[method].append((time.perf_counter() - t0) / STEPS)
median = {method: float(np.median(t)) for method, t in times.items()}
for method, seconds in median.items():
  print(f'{method:15s} {seconds * 1e3:8.4f} ms/step  '
        f'{seconds / median["mezo"]:5.2f}x MeZO', flush=True)
