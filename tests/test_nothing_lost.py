"""Nothing lost, nothing silent: the experiment loop under faults.

A resumed run equals an uninterrupted one (metrics included), a cut
metrics line or a killed process loses nothing already written, a second
run in a held workdir and a workdir of another run are refused, a flipped
bit in a checkpoint is caught and `--resume_from` falls back, SIGTERM saves
the current round and exits with 128 + 15.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import training
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing
from fedjax_ext.training import _outputs
from fedjax_ext.training import _runner

from _cli_runner import ROOT

TIMING = ('elapsed_s', 'round_time_s')


def linear_run(workdir, *, rounds=8, stop_after=None, **kwargs):
  """A tiny linear-regression federation through `training.run_rounds`."""
  algorithm = core.federated_algorithm(
      clients.local_sgd(_testing.linear_loss, optax.sgd(0.05)),
      aggregators.weighted_mean(), optax.sgd(1.0))

  def cohorts(r):
    if stop_after is not None and r == stop_after:
      os.kill(os.getpid(), signal.SIGTERM)
    cohort = _testing.random_cohort(3, 2, 4, seed=r)
    return cohort._replace(client_ids=np.array([r % 5, (r + 1) % 5,
                                                (r + 2) % 5], np.int32))

  def evaluator(params, state, store):
    del state, store
    return {'w_norm': float(np.linalg.norm(np.asarray(params['w'])))}

  options = dict(num_clients=5, cohorts=cohorts, rounds=rounds,
                 key=jax.random.key(0), workdir=str(workdir),
                 evaluators=[evaluator], eval_every=3, checkpoint_every=100,
                 tensorboard=False, log=lambda s: None)
  options.update(kwargs)
  return training.run_rounds(algorithm, _testing.linear_params(), **options)


def without_timing(lines):
  return [{k: v for k, v in line.items() if k not in TIMING}
          for line in lines]


def test_preempted_and_resumed_equals_uninterrupted(tmp_path):
  straight = linear_run(tmp_path / 'a')
  with pytest.raises(training.Preempted) as stopped:
    linear_run(tmp_path / 'b', stop_after=4)
  assert stopped.value.exit_status == 128 + signal.SIGTERM
  assert 'SIGTERM: stopped after round' in str(stopped.value)
  resumed = linear_run(tmp_path / 'b', resume=True)
  test_utils.assert_trees_all_equal(straight.state, resumed.state)
  assert without_timing(resumed.metrics) == without_timing(straight.metrics)
  on_disk = _outputs.read_metrics(tmp_path / 'b' / 'metrics.jsonl')
  assert without_timing(on_disk) == without_timing(straight.metrics)


def test_cut_metrics_line_is_dropped_history_kept(tmp_path):
  linear_run(tmp_path, rounds=6, checkpoint_every=6)
  path = tmp_path / 'metrics.jsonl'
  kept = path.read_text()
  with open(path, 'a') as f:
    f.write('{"round": 7, "w_no')  # A kill in the middle of a write.
  assert [l['round'] for l in _outputs.read_metrics(path)] == [3, 6]
  result = linear_run(tmp_path, rounds=9, resume=True)
  assert [l['round'] for l in result.metrics] == [3, 6, 9]
  assert path.read_text().startswith(kept)
  assert all(json.loads(l) for l in path.read_text().splitlines())


def test_rows_after_the_checkpoint_are_dropped_explicitly(tmp_path):
  linear_run(tmp_path, rounds=6, checkpoint_every=3)
  logs = []
  result = linear_run(tmp_path, rounds=6, resume_from=3, log=logs.append)
  assert any('dropped 1 metrics lines' in line for line in logs), logs
  assert [l['round'] for l in result.metrics] == [3, 6]


def test_non_finite_metrics_are_null_with_a_flag(tmp_path):
  line = _outputs.json_safe({'round': 1, 'a': float('nan'), 'b': 1.0})
  assert line == {'round': 1, 'a': None, 'b': 1.0, 'nonfinite': ['a']}
  assert 'NaN' not in json.dumps(line)


def test_second_run_in_a_held_workdir_is_refused(tmp_path):
  with _runner.workdir_lock(tmp_path):
    with pytest.raises(training.ConfigError, match=r'is in use by pid '
                       rf'{os.getpid()}'):
      linear_run(tmp_path)


def test_workdir_of_another_run_is_refused(tmp_path):
  linear_run(tmp_path, rounds=2, config={'seed': 0, 'rounds': 2})
  with pytest.raises(training.ConfigError, match='--seed differ'):
    linear_run(tmp_path, rounds=2, config={'seed': 1, 'rounds': 2})
  with pytest.raises(training.ConfigError, match='no checkpoint'):
    linear_run(tmp_path / 'empty', resume=True)
  with pytest.raises(training.ConfigError, match='--rounds=1 is below'):
    linear_run(tmp_path, rounds=1, resume=True,
               config={'seed': 0, 'rounds': 1},
               config_may_differ=('rounds',))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(training.ConfigError, match='is a file'):
    linear_run(tmp_path / 'file')


def _flip_one_bit(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs
           if not f.endswith(('.json', 'METADATA', '.txt'))]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    f.seek(0)
    f.write(bytes(data))


def test_flipped_bit_is_caught_and_resume_from_falls_back(tmp_path):
  straight = linear_run(tmp_path / 'a', rounds=6)
  linear_run(tmp_path / 'b', rounds=4, checkpoint_every=2)
  _flip_one_bit(tmp_path / 'b' / 'checkpoints' / '4' / 'server')
  with pytest.raises(training.CheckpointError,
                     match=r'round 4 .*(checksum|cannot be read).*'
                     r'--resume_from=2'):
    linear_run(tmp_path / 'b', rounds=6, resume=True)
  resumed = linear_run(tmp_path / 'b', rounds=6, resume_from=2)
  test_utils.assert_trees_all_equal(straight.state, resumed.state)


def test_checkpointer_refuses_to_overwrite_a_round(tmp_path):
  with training.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {'a': np.ones(2)}, ())
    with pytest.raises(training.CheckpointError, match='already saved'):
      ckpt.save(1, {'a': np.zeros(2)}, ())


def _train(workdir, data_dir, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             FEDJAX_EXT_COMPILATION_CACHE='')
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}',
       f'--data_dir={data_dir}', '--num_clients=8', '--clients_per_round=4',
       '--eval_every=1', '--checkpoint_every=1', *extra], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rounds(workdir, count, process, timeout=240):
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(process.communicate())
    if (os.path.exists(path)
        and len(_outputs.read_metrics(path)) >= count):
      return
    time.sleep(0.2)
  raise AssertionError('timed out')


def test_sigterm_and_kill_9_lose_nothing(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  process = _train(workdir, data_dir, '--rounds=400')
  _wait_for_rounds(workdir, 3, process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr
  assert stderr.strip().splitlines()[-1].startswith('error: SIGTERM: '
                                                    'stopped after round')
  stopped = training.Checkpointer(os.path.join(workdir, 'checkpoints'))
  last = stopped.latest_round()
  stopped.close()
  history = _outputs.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert history[-1]['round'] == last
  # kill -9 at an arbitrary moment: every complete line survives.
  process = _train(workdir, data_dir, '--rounds=400', '--resume')
  _wait_for_rounds(workdir, last + 3, process)
  process.kill()
  process.communicate(timeout=60)
  after_kill = _outputs.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert after_kill[:len(history)] == history
  assert [l['round'] for l in after_kill] == list(
      range(1, len(after_kill) + 1))
