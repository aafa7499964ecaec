"""`experiments.train` composes every transform of the library by flag.

In-process runs of `training.run_experiment` (what the script calls) with a
robust aggregator under attack with worker momentum and drift metrics, a
ZO client optimizer with seed uploads, and OmniISR heads; bad combinations
are one-line `ConfigError`s naming both flags; an ml_collections config
file and the command line reach the same config.
"""

import json
import os

import jax
import pytest

from fedjax_ext import training
from fedjax_ext.training import _outputs

from test_bad_input import run_in_process


def small_config(tmp_path, data_dir, **overrides):
  values = dict(dataset='digits', data_dir=data_dir, num_clients=10,
                clients_per_round=5, rounds=4, eval_every=2,
                checkpoint_every=4, workdir=str(tmp_path / 'run'))
  values.update(overrides)
  return training.ExperimentConfig(**values)


def test_robust_attack_momentum_and_drift(tmp_path, data_dir):
  config = small_config(tmp_path, data_dir, aggregator='trimmed_mean',
                        byzantine_fraction=0.2, attack='alie',
                        worker_momentum=0.9, drift_metrics=True,
                        algorithm='fedadam', server_lr=0.01)
  result = training.run_experiment(config, log=lambda s: None)
  last = result.metrics[-1]
  # 2 of the 10 clients are Byzantine; each cohort of 5 holds some of them.
  assert last['byzantine_clients'] >= 0
  assert 'rejected_updates' in last
  for key in ('client_drift', 'drift_sq_dist'):
    assert key in last, sorted(last)
  assert 0. <= last['test_accuracy'] <= 1.
  # The momentum lives in the client store (one row per client).
  for leaf in jax.tree.leaves(result.client_store):
    assert leaf.shape[0] == 10
  assert jax.tree.leaves(result.client_store)


def test_byzantine_flags_reach_the_round(tmp_path, data_dir):
  config = small_config(tmp_path, data_dir, byzantine_fraction=0.4,
                        attack='sign_flip', aggregator='median',
                        clients_per_round=10, rounds=2)
  result = training.run_experiment(config, log=lambda s: None)
  assert result.metrics[-1]['byzantine_clients'] == 4.


def test_zo_client_with_seed_uploads(tmp_path, data_dir):
  config = small_config(tmp_path, data_dir, client_optimizer='curvzo',
                        zo_upload='seeds', client_lr=1e-3, local_steps=5,
                        drift_metrics=True)
  result = training.run_experiment(config, log=lambda s: None)
  last = result.metrics[-1]
  assert last['upload_bytes_per_client'] < 1000  # Seeds, not deltas.
  assert 'client_drift' in last
  assert last['train_loss'] > 0


def test_isr_heads(tmp_path, data_dir):
  config = small_config(tmp_path, data_dir, isr_points=('hidden_0',),
                        drift_metrics=True, rounds=2)
  result = training.run_experiment(config, log=lambda s: None)
  assert set(result.state.params) == {'model', 'aux'}
  assert 'train_mi_loss' in result.metrics[-1]


@pytest.mark.parametrize('overrides, message', [
    (dict(attack='alie'), '--attack=alie needs --byzantine_fraction > 0'),
    (dict(byzantine_fraction=0.2), '--byzantine_fraction > 0 needs an '
     '--attack'),
    (dict(client_optimizer='mezo', algorithm='scaffold'),
     '--algorithm=scaffold needs first-order clients'),
    (dict(client_optimizer='mezo', worker_momentum=0.5),
     'does not compose with --attack / --worker_momentum'),
    (dict(algorithm='scaffold', worker_momentum=0.5),
     '--algorithm=scaffold does not compose'),
    (dict(aggregator='mode'), "--aggregator='mode' is unknown"),
    (dict(attack='nope', byzantine_fraction=0.1), "--attack='nope' is "
     'unknown'),
    (dict(client_optimizer='adam'), "--client_optimizer='adam' is unknown"),
    (dict(byzantine_fraction=0.5, attack='alie'),
     '--byzantine_fraction must be in [0, 0.5)'),
    (dict(worker_momentum=1.), '--worker_momentum must be in [0, 1)'),
    (dict(weighting='examples'), "--weighting='examples' is unknown"),
])
def test_bad_combinations_name_the_flags(overrides, message):
  config = training.ExperimentConfig(**overrides)
  with pytest.raises(training.ConfigError) as error:
    training.validate_config(config)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_config_file_and_flags_reach_the_same_config(tmp_path, data_dir,
                                                    capsys):
  config_py = tmp_path / 'my_config.py'
  config_py.write_text(
      'import ml_collections\n'
      'def get_config():\n'
      '  c = ml_collections.ConfigDict()\n'
      "  c.algorithm = 'fedavgm'\n"
      '  c.rounds = 3\n'
      '  c.eval_every = 3\n'
      '  c.num_clients = 6\n'
      '  c.clients_per_round = 3\n'
      '  return c\n')
  common = ['--eval_every=1', f'--data_dir={data_dir}',
            '--compilation_cache_dir=']
  status, err = run_in_process(
      [f'--config={config_py}', '--rounds=2',
       f'--workdir={tmp_path / "a"}', *common], capsys)
  assert status == 0, err
  status, err = run_in_process(
      ['--algorithm=fedavgm', '--rounds=2', '--num_clients=6',
       '--clients_per_round=3', f'--workdir={tmp_path / "b"}', *common],
      capsys)
  assert status == 0, err
  # A run's own config.json reproduces it.
  status, err = run_in_process(
      [f'--config={tmp_path / "a" / "config.json"}',
       f'--workdir={tmp_path / "c"}', '--compilation_cache_dir='], capsys)
  assert status == 0, err
  saved = [json.loads((tmp_path / d / 'config.json').read_text())
           for d in ('a', 'b', 'c')]
  for entry in saved:
    entry.pop('workdir')
  assert saved[0] == saved[1] == saved[2]
  metrics = [[{k: v for k, v in m.items() if k not in ('elapsed_s',
                                                        'round_time_s')}
              for m in _outputs.read_metrics(str(tmp_path / d /
                                                 'metrics.jsonl'))]
             for d in ('a', 'b', 'c')]
  assert metrics[0] == metrics[1] == metrics[2]
  assert os.path.exists(tmp_path / 'a' / 'tensorboard')


@pytest.mark.parametrize('algorithm', ['fedadam', 'fedyogi', 'fedadagrad'])
def test_per_algorithm_defaults_learn_digits(tmp_path, data_dir, algorithm):
  # With --server_lr unset, each adaptive method takes its rate from the
  # EMNIST row of Reddi et al.'s grid; a server rate of 1.0 (the old
  # default for all) left FedAdam at chance.
  config = training.ExperimentConfig(
      algorithm=algorithm, rounds=30, eval_every=30, checkpoint_every=30,
      data_dir=data_dir, workdir=str(tmp_path / 'run'))
  warnings = []
  result = training.run_experiment(config, log=warnings.append)
  assert result.metrics[-1]['test_accuracy'] > 0.8, result.metrics[-1]
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert saved['server_lr'] == (
      training_defaults()[algorithm])
  assert not any(line.startswith('warning:') for line in warnings)


def training_defaults():
  from fedjax_ext import algorithms  # pylint: disable=g-import-not-at-top
  return algorithms.DEFAULT_SERVER_LEARNING_RATES


def test_alarms_warn_on_growing_loss_and_chance_accuracy():
  alarm = training.training_alarms(num_classes=10, patience=3)
  growing = [{'round': r, 'train_loss': 1. + r, 'test_accuracy': 0.5}
             for r in range(4)]
  assert 'train_loss grew' in alarm(growing)
  assert alarm(growing[:3]) is None
  chance = [{'round': r, 'train_loss': 1., 'test_accuracy': 0.105}
            for r in range(3)]
  assert 'chance' in alarm(chance)
