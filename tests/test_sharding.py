"""Clients sharded over 8 (fake CPU) devices give the single-device result.

Runs in a subprocess because the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import json, sys
import jax, numpy as np
from fedjax_ext import training
assert jax.device_count() == 8, jax.devices()
data_dir, workdir = sys.argv[1], sys.argv[2]
finals = {}
for execution in ('vmap', 'sharded'):
  config = training.ExperimentConfig(
      data_dir=data_dir, workdir=f'{workdir}/{execution}', num_clients=16,
      clients_per_round=8, rounds=3, eval_every=3, algorithm='scaffold',
      execution=execution)
  result = training.run_experiment(config, log=lambda s: None)
  finals[execution] = result
diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) -
                                                      np.asarray(b)))),
                    finals['vmap'].state.params, finals['sharded'].state.params)
store = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) -
                                                       np.asarray(b)))),
                     finals['vmap'].client_store,
                     finals['sharded'].client_store)
print(json.dumps({'params': max(jax.tree.leaves(diff)),
                  'store': max(jax.tree.leaves(store)),
                  'accuracy': [finals[k].metrics[-1]['test_accuracy']
                               for k in ('vmap', 'sharded')]}))
'''


def test_sharded_round_equals_single_device(tmp_path, data_dir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-c', SCRIPT, data_dir, str(tmp_path)], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['params'] < 1e-5, report
  assert report['store'] < 1e-3, report
  assert abs(report['accuracy'][0] - report['accuracy'][1]) < 1e-2
