"""`python -m experiments.train`: bad input exits 2 with one clear line."""

import os

import pytest

from fedjax_ext import training

from _cli_runner import run_module


def run_cli(*flags, data_dir=None, workdir=None):
  flags = list(flags)
  if data_dir:
    flags.append(f'--data_dir={data_dir}')
  if workdir:
    flags.append(f'--workdir={workdir}')
  return run_module('experiments.train', *flags, timeout=300)


@pytest.mark.parametrize('overrides, message', [
    (dict(dataset='imagenet'), "--dataset='imagenet' is unknown; valid "
     'choices: digits, leaf_synthetic'),
    (dict(model='vit'), 'valid choices: logistic, mlp, cnn, resnet'),
    (dict(algorithm='fedsgd'), 'valid choices: fedavg, fedavgm'),
    (dict(partition='random'), 'valid choices: iid, dirichlet'),
    (dict(execution='pmap'), 'valid choices: auto, vmap'),
    (dict(num_clients=5, clients_per_round=6),
     '--clients_per_round must be in [1, --num_clients=5], got 6'),
    (dict(dirichlet_alpha=-1.), '--dirichlet_alpha must be a finite number '
     '> 0, got -1.0'),
    (dict(client_lr=0.), '--client_lr must be a finite number > 0'),
    (dict(server_lr=float('nan')), '--server_lr must be a finite number > 0'),
    (dict(rounds=0), '--rounds must be an integer in [1, 10,000,000], got 0'),
    (dict(server_momentum=1.), '--server_momentum must be in [0, 1)'),
    (dict(client_test_fraction=1.), '--client_test_fraction must be in'),
    (dict(local_steps=-1), '--local_steps must be in [0, 1,000,000]'),
    (dict(hidden_sizes=(0,)), '--hidden_sizes must be a list of integers'),
])
def test_config_errors_name_the_flag(overrides, message):
  config = training.ExperimentConfig(**overrides)
  with pytest.raises(training.ConfigError) as error:
    training.validate_config(config)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('flags, message', [
    (['--dataset=imagenet'], 'valid choices: digits, leaf_synthetic'),
    (['--rounds=many'], 'rounds'),
    (['--num_clients=100000'], '--num_clients must be in [1, 1438]'),
])
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, data_dir, flags,
                                            message):
  result = run_cli(*flags, data_dir=data_dir, workdir=str(tmp_path / 'w'))
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('error: ')
  assert message in lines[0]


def test_short_run_succeeds_and_reports_progress(tmp_path, data_dir):
  result = run_cli('--rounds=2', '--eval_every=1', '--num_clients=6',
                   '--clients_per_round=3', data_dir=data_dir,
                   workdir=str(tmp_path / 'w'))
  assert result.returncode == 0, result.stderr
  assert 'round 2/2' in result.stdout
  assert 'test_accuracy' in result.stdout
  assert os.path.exists(tmp_path / 'w' / 'metrics.jsonl')


def test_compilation_cache_is_written_and_reused(tmp_path, data_dir):
  """--compilation_cache_dir stores compiled programs; a rerun loads them."""
  cache = tmp_path / 'xla'
  flags = ['--num_clients=4', '--clients_per_round=2', '--rounds=2',
           '--eval_every=2', f'--data_dir={data_dir}',
           f'--compilation_cache_dir={cache}']
  # Cache every program, however fast it compiled (JAX's env override).
  env = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'JAX_DEBUG_LOG_MODULES': 'jax._src.compiler'}
  first = run_module('experiments.train', *flags,
                     f'--workdir={tmp_path / "a"}', extra_env=env)
  assert first.returncode == 0, first.stderr
  entries = set(os.listdir(cache))
  assert entries
  second = run_module('experiments.train', *flags,
                      f'--workdir={tmp_path / "b"}', extra_env=env)
  assert second.returncode == 0, second.stderr
  assert 'Persistent compilation cache hit' in second.stderr
  assert 'Persistent compilation cache hit' not in first.stderr


def test_empty_compilation_cache_dir_disables_the_cache(tmp_path, data_dir):
  result = run_module(
      'experiments.train', '--num_clients=4', '--clients_per_round=2',
      '--rounds=1', '--eval_every=1', f'--data_dir={data_dir}',
      f'--workdir={tmp_path / "w"}', '--compilation_cache_dir=',
      extra_env={'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                 'HOME': str(tmp_path / 'home')})
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'home' / '.cache' / 'fedjax_ext').exists()


def test_cpu_devices_shards_the_cohort(tmp_path, data_dir):
  result = run_cli('--cpu_devices=2', '--rounds=2', '--eval_every=2',
                   '--num_clients=8', '--clients_per_round=4',
                   data_dir=data_dir, workdir=str(tmp_path / 'w'))
  assert result.returncode == 0, result.stderr
  assert '2 device(s) in 1 process(es)' in result.stdout + result.stderr


@pytest.mark.parametrize('flags, message', [
    (['--cpu_devices=0'], '--cpu_devices must be an integer >= 1, got 0'),
    (['--cpu_devices=3', '--clients_per_round=4'],
     '--clients_per_round (4) must be a multiple of the 3 devices'),
])
def test_cpu_devices_errors(tmp_path, data_dir, flags, message):
  result = run_cli(*flags, '--num_clients=8', data_dir=data_dir,
                   workdir=str(tmp_path / 'w'))
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr
