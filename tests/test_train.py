"""End-to-end: the experiment loop, its files, resume, non-finite stops."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_ext import algorithms
from fedjax_ext import training
from fedjax_ext._src import test_utils
from fedjax_ext.training import _loop


def small_config(tmp_path, data_dir, **overrides):
  values = dict(dataset='digits', data_dir=data_dir, num_clients=8,
                clients_per_round=4, rounds=4, eval_every=2,
                checkpoint_every=2, workdir=str(tmp_path / 'run'))
  values.update(overrides)
  return training.ExperimentConfig(**values)


def test_run_writes_metrics_plot_and_checkpoints(tmp_path, data_dir):
  config = small_config(tmp_path, data_dir)
  result = training.run_experiment(config, log=lambda s: None)
  with open(os.path.join(config.workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  assert [line['round'] for line in lines] == [2, 4]
  for line in lines:
    for key in ('test_accuracy', 'test_loss', 'train_loss',
                'client_accuracy_mean', 'client_accuracy_p10', 'elapsed_s'):
      assert np.isfinite(line[key]), key
    assert 0 <= line['client_accuracy_p10'] <= line['client_accuracy_mean']
  assert lines == result.metrics
  with open(os.path.join(config.workdir, 'metrics.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  steps = os.listdir(os.path.join(config.workdir, 'checkpoints'))
  assert {'2', '4'} <= set(steps)
  assert int(result.state.round) == 4
  # Learning happened: accuracy well above chance (0.1) after 4 rounds.
  assert lines[-1]['test_accuracy'] > 0.3


@pytest.mark.parametrize('algorithm', ['fedavg', 'scaffold', 'fedadam'])
def test_resume_gives_the_same_parameters(tmp_path, data_dir, algorithm):
  kw = dict(algorithm=algorithm, eval_every=5, checkpoint_every=5,
            server_lr=0.01 if algorithm == 'fedadam' else 1.0)
  straight = training.run_experiment(
      small_config(tmp_path / 'a', data_dir, rounds=10, **kw),
      log=lambda s: None)
  training.run_experiment(small_config(tmp_path / 'b', data_dir, rounds=5,
                                       **kw), log=lambda s: None)
  resumed = training.run_experiment(
      small_config(tmp_path / 'b', data_dir, rounds=10, resume=True, **kw),
      log=lambda s: None)
  test_utils.assert_trees_all_equal(straight.state, resumed.state)
  test_utils.assert_trees_all_equal(straight.client_store,
                                    resumed.client_store)
  assert [m['round'] for m in resumed.metrics] == [5, 10]
  if algorithm == 'scaffold':  # The client store really was restored.
    assert float(jnp.abs(resumed.client_store['logits']['kernel']).sum()) > 0


def test_existing_checkpoints_need_resume(tmp_path, data_dir):
  training.run_experiment(small_config(tmp_path, data_dir, rounds=2),
                          log=lambda s: None)
  with pytest.raises(training.ConfigError, match='--resume'):
    training.run_experiment(small_config(tmp_path, data_dir, rounds=4),
                            log=lambda s: None)
  with pytest.raises(training.ConfigError, match='--client_lr'):
    training.run_experiment(small_config(tmp_path, data_dir, rounds=4,
                                         resume=True, client_lr=0.5),
                            log=lambda s: None)


def test_non_finite_round_stops_and_keeps_last_checkpoint(
    tmp_path, data_dir, monkeypatch):
  create = algorithms.create_algorithm

  def poisoned(*args, **kwargs):
    algorithm = create(*args, **kwargs)

    def apply(state, store, cohort, key):
      state, store, metrics = algorithm.apply(state, store, cohort, key)
      poison = jnp.where(state.round >= 3, jnp.nan, 0.)
      params = jax.tree.map(lambda p: p + poison, state.params)
      return state._replace(params=params), store, metrics

    return algorithm._replace(apply=apply)

  monkeypatch.setattr(_loop.algorithms, 'create_algorithm', poisoned)
  config = small_config(tmp_path, data_dir, rounds=6, checkpoint_every=1)
  with pytest.raises(training.NonFiniteError,
                     match=r'Round 3: .*checkpoint is of round 2,'):
    training.run_experiment(config, log=lambda s: None)
  ckpt = training.Checkpointer(os.path.join(config.workdir, 'checkpoints'))
  assert ckpt.latest_round() == 2
  ckpt.close()


def test_compiles_do_not_grow_with_rounds(tmp_path, data_dir):
  """Clients of different sizes, 50 rounds: as many compiles as 5 rounds."""
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    counts = []
    for rounds in (5, 5, 50):  # The first run also warms eager-op caches.
      compiles.clear()
      training.run_experiment(
          small_config(tmp_path / str(len(counts)), data_dir, rounds=rounds,
                       eval_every=5, checkpoint_every=1000,
                       dirichlet_alpha=0.1),  # Very unequal client sizes.
          log=lambda s: None)
      counts.append(len(compiles))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert counts[1] == counts[2], counts
  # The round and the two evaluations (test set, held-out set) compile.
  assert counts[2] <= 3, counts
