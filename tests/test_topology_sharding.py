"""Gossip mixing with rows sharded over 8 (fake CPU) devices.

`topology.mix` of rows sharded along the node axis (a 1-D mesh) must give
the single-device result, for a ring (unrolled slot loop) and an
Erdos-Renyi graph (D = N - 1: fori_loop), with the graph given as sharded
arrays or drawn inside the compiled step from the round key, on meshes
with Auto (as `core.client_mesh`) and Explicit axis types. Runs in a
subprocess because the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import json
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fedjax_ext import topology
assert jax.device_count() == 8, jax.devices()
n = 64
rng = np.random.default_rng(0)
rows = {'w': rng.normal(size=(n, 33)).astype(np.float32),
        'b': rng.normal(size=(n, 4, 5)).astype(np.float32)}
one = jax.devices()[0]
report = {}
tops = (topology.ring(n), topology.erdos_renyi(n, 0.2))
cases = [(kind, top) for kind in ('auto', 'explicit') for top in tops]
for kind, top in cases:
  if kind == 'auto':  # As core.client_mesh builds it.
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('nodes',))
  else:  # jax.make_mesh's default axis types.
    mesh = jax.make_mesh((8,), ('nodes',),
                         axis_types=(jax.sharding.AxisType.Explicit,))
  by_node = NamedSharding(mesh, P('nodes'))
  key = jax.random.key(3)
  graph = jax.jit(top.sample)(key)
  single = jax.jit(topology.mix)(jax.device_put(graph, one),
                                 jax.device_put(rows, one))
  sharded_rows = jax.device_put(rows, by_node)
  sharded = jax.jit(topology.mix)(jax.device_put(graph, by_node),
                                  sharded_rows)
  drawn = jax.jit(lambda k, x: topology.mix(top.sample(k), x))(
      key, sharded_rows)
  diff = lambda a, b: max(jax.tree.leaves(jax.tree.map(
      lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))),
      a, b)))
  report[f'{kind}:{top.name}'] = {
      'sharded': diff(single, sharded), 'drawn': diff(single, drawn),
      'input_shards': len(sharded_rows['w'].addressable_shards),
      'output_spec': str(sharded['w'].sharding.spec),
      'max_degree': top.max_degree}
print(json.dumps(report))
'''


def test_sharded_mix_equals_single_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(report) == {f'{kind}:{name}' for kind in ('auto', 'explicit')
                         for name in ('ring(64)', 'erdos_renyi(64, p=0.2)')
                         }, report
  for name, numbers in report.items():
    assert numbers['input_shards'] == 8, (name, numbers)
    assert numbers['sharded'] <= 1e-6, (name, numbers)
    assert numbers['drawn'] <= 1e-6, (name, numbers)
