"""Probe: W1 round compile time, cold and from the persistent cache.

Usage: rm -rf /tmp/xla_cache_probe; python benchmarks/probes/compile_cache.py
       python benchmarks/probes/compile_cache.py   # second run: cache hit
"""
import time, sys, numpy as np, jax, jax.numpy as jnp, optax
jax.config.update('jax_compilation_cache_dir', '/tmp/xla_cache_probe')
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
from fedjax_ext import algorithms, clients, core, models
C, S, B = 10, 10, 20
model = models.create_model('cnn', num_classes=62)
x = jnp.zeros((C, S, B, 28, 28, 1)); y = jnp.zeros((C, S, B), jnp.int32)
params = model.init(jax.random.key(0), x[0, 0])['params']
cohort = core.Cohort(jnp.arange(C, dtype=jnp.int32), {'x': x, 'y': y, 'mask': jnp.ones((C, S, B))}, jnp.full((C,), S * B, jnp.float32))
alg = algorithms.fed_avg(clients.classification_loss(model), optax.sgd(0.1), optax.sgd(1.))
st = alg.init(params)
t = time.perf_counter(); l = jax.jit(alg.apply, donate_argnums=(0,1)).lower(st, (), cohort, jax.random.key(1)); print("trace+lower", round(time.perf_counter() - t, 2)); t = time.perf_counter(); f = l.compile(); print("compile", round(time.perf_counter() - t, 2))
