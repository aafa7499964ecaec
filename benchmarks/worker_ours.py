"""Benchmark worker for fedjax_ext: the compiled round, and the machine limit.

``spec['system']`` selects what runs:

* ``'ours'``: ``fedjax_ext.algorithms.fed_avg`` with
  ``execution=spec['execution']``, ``unroll=spec['unroll']`` (and
  ``chunk_size``), its round jitted once with the server state donated and
  compiled ahead of time (``compile_s``), the cohort a fixed
  `fedjax_ext.core.Cohort` of device arrays built once.
* ``'limit'``: the same SGD steps as separately jitted single steps in the
  same JAX: a Python loop over clients and steps calling one jitted
  ``sgd_step`` per step, then a jitted example-weighted average of the
  clients' deltas and the server step. Dispatch is the only overhead; this
  is what "one step at a time at XLA:CPU's own speed" costs.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _model(spec):
  from fedjax_ext import models  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if spec['model'] == 'mlp':
    kwargs['hidden_sizes'] = tuple(spec.get('hidden_sizes', (64,)))
  return models.create_model(spec['model'], num_classes=spec['num_classes'],
                             **kwargs)


def _setup(spec, model):
  """Data, initial parameters and a key, made on device by ONE compiled call.

  The synthetic data (`_common.synthetic_data` shapes) is drawn with
  jax.random directly on the device, client by client, so neither a host
  copy nor the random bits of the whole cohort inflate the peak memory of
  large cohorts, and no eager op compiles on its own (each would cost a
  compilation of its own in a fresh process).

  Returns:
    x [C, S, B, ...], y [C, S, B], params, and a round key.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  c, s, b = spec['clients'], spec['steps'], spec['batch']

  def one_client(key):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (s, b, *spec['input_shape']), jnp.float32)
    y = jax.random.randint(ky, (s, b), 0, spec['num_classes'], jnp.int32)
    return x, y

  @jax.jit
  def setup(seed):
    kd, kp, kr = jax.random.split(jax.random.key(seed), 3)
    # One client at a time: drawing [C, S, B, ...] at once would hold
    # threefry's bits for all of it (1.4 GB of temporaries for W3's 10,000
    # clients, three times the data) and inflate the measured peak RSS.
    x, y = jax.lax.map(one_client, jax.random.split(kd, c))
    params = model.init(kp, x[0, 0])['params']
    return x, y, params, kr

  return jax.block_until_ready(setup(spec.get('seed', 0)))


def _all_finite(tree):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return all(bool(np.isfinite(np.asarray(leaf)).all())
             for leaf in jax.tree.leaves(tree))


def run_ours(spec):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from fedjax_ext import algorithms  # pylint: disable=g-import-not-at-top
  from fedjax_ext import clients  # pylint: disable=g-import-not-at-top
  from fedjax_ext import core  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  model = _model(spec)
  x, y, params, key = _setup(spec, model)
  c, s, b = y.shape
  execution = core.Execution(strategy=spec['execution'],
                             chunk_size=spec.get('chunk_size') or None,
                             unroll=spec.get('unroll', 'auto'))
  algorithm = algorithms.fed_avg(
      clients.classification_loss(model), optax.sgd(spec['lr']),
      optax.sgd(spec.get('server_lr', 1.)), execution=execution)
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params), c)
  # Host-made constants: a device_put each, no compilation.
  cohort = core.Cohort(
      client_ids=jnp.asarray(np.arange(c, dtype=np.int32)),
      batches={'x': x, 'y': y,
               'mask': jnp.asarray(np.ones((c, s, b), np.float32))},
      num_examples=jnp.asarray(np.full((c,), s * b, np.float32)))
  resolved = None
  if hasattr(core, 'resolve_strategy'):
    try:
      resolved = core.resolve_strategy(spec['execution'], [params])
    except Exception:  # pylint: disable=broad-except
      resolved = None
  t = time.perf_counter()
  compiled = jax.jit(algorithm.apply, donate_argnums=(0, 1)).lower(
      state, store, cohort, key).compile()
  compile_s = time.perf_counter() - t
  holder = {'state': state, 'store': store, 'loss': None}

  def run_round(r):
    del r
    new_state, new_store, metrics = compiled(holder['state'],
                                             holder['store'], cohort, key)
    jax.block_until_ready((new_state, new_store, metrics))
    holder.update(state=new_state, store=new_store,
                  loss=metrics['train_loss'])

  timing = _common.time_rounds(run_round, spec, first_includes_compile=False)
  loss = float(holder['loss'])
  return dict(timing, compile_s=compile_s,
              first_round_s=compile_s + timing['first_round_s'],
              resolved_execution=resolved, train_loss=loss,
              finite=_common.is_finite(loss), backend=jax.default_backend(),
              num_devices=jax.device_count(), jax_version=jax.__version__)


def run_limit(spec):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  model = _model(spec)
  x, y = _common.synthetic_data(spec)
  c, s, _ = y.shape
  lr = spec['lr']
  server_lr = spec.get('server_lr', 1.)
  params = jax.jit(model.init)(jax.random.key(1), x[0, 0])['params']
  # One device array per step, put before timing: the loop only dispatches.
  xs = jax.device_put([list(xi) for xi in x])
  ys = jax.device_put([list(yi) for yi in y])
  del x, y
  weight = float(s * spec['batch'])

  def loss_fn(p, bx, by):
    logits = model.apply({'params': p}, bx, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, by).mean()

  @jax.jit
  def sgd_step(p, bx, by):
    grads = jax.grad(loss_fn)(p, bx, by)
    return jax.tree.map(lambda w, g: w - lr * g, p, grads)

  @jax.jit
  def accumulate(total, global_p, local_p):
    return jax.tree.map(lambda t, g, l: t + weight * (g - l), total,
                        global_p, local_p)

  @jax.jit
  def server_step(global_p, total):
    return jax.tree.map(lambda g, t: g - server_lr * t / (weight * c),
                        global_p, total)

  zeros = jax.device_put(jax.tree.map(lambda p: np.zeros(p.shape, p.dtype),
                                     params))
  holder = {'params': params}

  def run_round(r):
    del r
    global_p = holder['params']
    total = zeros
    for i in range(c):
      p = global_p
      xi, yi = xs[i], ys[i]
      for j in range(s):
        p = sgd_step(p, xi[j], yi[j])
      total = accumulate(total, global_p, p)
    holder['params'] = jax.block_until_ready(server_step(global_p, total))

  timing = _common.time_rounds(run_round, spec, first_includes_compile=True)
  return dict(timing, finite=_all_finite(holder['params']),
              backend=jax.default_backend(),
              jax_version=jax.__version__)


def main(spec):
  if spec['system'] == 'ours':
    return run_ours(spec)
  if spec['system'] == 'limit':
    return run_limit(spec)
  raise ValueError(f'worker_ours cannot run system {spec["system"]!r}')


if __name__ == '__main__':
  _common.run_worker(main)
