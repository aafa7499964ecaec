"""2 processes x 4 CPU devices (jax.distributed, gloo) equal 1 x 8 devices.

Both runs sample with two groups (the multi-process default), so they train
the same cohorts; only where the clients' data and computation live differs.
"""

import json
import os
import subprocess
import sys

from _cli_runner import ROOT
from _cli_runner import run_module


FLAGS = ['--num_clients=16', '--clients_per_round=8', '--rounds=3',
         '--eval_every=1', '--algorithm=scaffold', '--client_test_fraction=0']


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_two_processes_match_one(tmp_path, data_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  multi = str(tmp_path / 'multi')
  result = subprocess.run(
      [sys.executable, 'launch/local_multiprocess.py', '--num_processes=2',
       '--devices_per_process=4', '--', f'--workdir={multi}',
       f'--data_dir={data_dir}', *FLAGS],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '8 device(s) in 2 process(es)' in result.stdout
  single = str(tmp_path / 'single')
  result = run_module(
      'experiments.train', f'--workdir={single}', f'--data_dir={data_dir}',
      '--sampling_groups=2', *FLAGS,
      extra_env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert result.returncode == 0, result.stderr[-3000:]
  multi_lines, single_lines = read_metrics(multi), read_metrics(single)
  assert [m['round'] for m in multi_lines] == [1, 2, 3]
  for a, b in zip(multi_lines, single_lines):
    for key in ('test_loss', 'train_loss', 'update_norm', 'test_accuracy'):
      assert abs(a[key] - b[key]) <= 1e-5 * max(1., abs(b[key])), (key, a, b)
  # Only process 0 writes the metrics and the plot.
  assert os.path.exists(os.path.join(multi, 'metrics.png'))
