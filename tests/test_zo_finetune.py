"""`experiments.zo_finetune`: the quick sweep in-process; bad flags."""

import json

from absl import flags
import numpy as np
import pytest

from _cli_runner import run_module
from experiments import zo_finetune
from fedjax_ext import training

TIMING = ('elapsed_s', 'round_time_s', 's_per_step')
# The pre-port script's quick run (HEAD 89c5b6c, seed 0, --weighting default
# then = examples processed): final full-training-set losses, federated.
OLD_FEDERATED = {'sgd': 1.4905343055725098, 'mezo': 1.7834889888763428,
                 'curvzo': 1.7897086143493652}


def settings(*args):
  fv = flags.FlagValues()
  zo_finetune.define_flags(fv)
  fv(['zo_finetune', *args])
  return zo_finetune.settings_from_flags(fv)


def test_quick_sweep_numbers_outputs_and_run_order(tmp_path, data_dir):
  workdir = tmp_path / 'zo'
  runs, summary = zo_finetune.run(settings(
      '--quick', '--methods=sgd,mezo,curvzo', f'--workdir={workdir}',
      f'--data_dir={data_dir}'), log=lambda _: None)
  # Centralized: 2 rounds of 20 steps; federated: 4 rounds, evaluated last.
  for mode, steps in (('centralized', [20, 40]), ('federated', [4])):
    assert list(runs[mode]) == ['sgd', 'mezo', 'curvzo']
    for method, lines in runs[mode].items():
      assert [l['step'] for l in lines] == steps, (mode, method)
      with open(workdir / f'{mode}-{method}-seed0' / 'metrics.jsonl') as f:
        assert len(f.readlines()) == len(steps)
  fed = {m: lines[-1] for m, lines in runs['federated'].items()}
  # The federated runs reproduce the pre-port script: same pre-trained
  # model, cohorts, keys and weights; the evaluation's mean now runs in
  # float64 on the host (last-bit differences).
  for method, loss in OLD_FEDERATED.items():
    assert fed[method]['full_train_loss'] == pytest.approx(loss, rel=1e-6)
  pre = summary['pretrained']
  assert pre['task_a_test_accuracy'] == pytest.approx(0.8556, abs=1e-4)
  for method in ('sgd', 'mezo'):  # Fine-tuning lowers the task-B loss.
    assert (runs['centralized'][method][-1]['full_train_loss']
            < pre['task_b_full_train_loss'])
  # Seed uploads: 8 + S (4 q + 1) bytes with S = 3 local steps, q = 1; the
  # carried CurvZO sampler adds 4 n + 12 bytes of downlink (n = 4 blocks).
  params_bytes = 4 * pre['num_parameters']
  assert fed['sgd']['upload_bytes_per_client'] == params_bytes
  assert fed['mezo']['upload_bytes_per_client'] == 23
  assert fed['curvzo']['upload_bytes_per_client'] == 23
  assert {m: l['downlink_bytes_per_client'] for m, l in fed.items()} == {
      'sgd': params_bytes, 'mezo': params_bytes,
      'curvzo': params_bytes + 4 * 4 + 12}
  assert 0.1 <= fed['curvzo']['budget'] <= 0.8 and 'budget' not in fed['mezo']
  rows = summary['summaries']
  assert [(r['mode'], r['method']) for r in rows] == [
      (mode, m) for mode in ('centralized', 'federated')
      for m in ('sgd', 'mezo', 'curvzo')]
  for row in rows:
    if row['method'] == 'mezo':
      assert row['steps_ratio_vs_mezo'] == 1.0
      assert row['step_time_ratio_vs_mezo'] == 1.0
    assert np.isfinite(row['final_train_loss']) and row['s_per_step'] > 0
  cnn = summary['cnn_upload']
  assert cnn['num_parameters'] > 1_000_000 and cnn['ratio'] > 1000
  with open(workdir / 'summary.json') as f:
    assert json.load(f)['summaries'] == rows
  for name in ('zo_train_loss.png', 'zo_test_accuracy.png'):
    with open(workdir / name, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  # A method's result does not depend on the methods run before it in the
  # process: without sgd first, mezo and curvzo give the same numbers.
  alone, _ = zo_finetune.run(settings(
      '--quick', '--methods=mezo,curvzo', f'--workdir={tmp_path / "alone"}',
      f'--data_dir={data_dir}'), log=lambda _: None)

  def numbers(runs):
    return {(mode, m): [{k: v for k, v in l.items() if k not in TIMING}
                        for l in lines]
            for mode, by_method in runs.items()
            for m, lines in by_method.items() if m != 'sgd'}

  assert numbers(alone) == numbers(runs)


def test_quick_lets_explicit_flags_win():
  s = settings('--quick', '--rounds=2', '--hidden_sizes=8,8', '--workdir=w')
  assert (s.rounds, s.local_steps, s.hidden_sizes) == (2, 3, (8, 8))
  assert s.lrs == {'sgd': 0.05, 'mezo': 0.002, 'uniform_sparse': 0.00125,
                   'curvzo_fixed': 0.001, 'curvzo': 0.001}
  assert settings('--workdir=w', '--method_lrs=').lrs['mezo'] == 0.001


@pytest.mark.parametrize('flag, message', [
    ('--methods=mezo,adam', '--methods must be some of sgd, mezo, '
     'uniform_sparse, curvzo_fixed, curvzo.'),
    ('--budget=0.9', '--budget must be in [0.1, 0.8].'),
    ('--method_lrs=mezo=0.002,adam=0.1', '--method_lrs must be METHOD=LR'),
    ('--method_lrs=mezo=fast', '--method_lrs must be METHOD=LR'),
    ('--zo_lr=0', '--zo_lr must be finite and > 0.'),
    ('--steps=50', '--steps must be a multiple of --eval_every.'),
    ('--clients_per_round=30', '--clients_per_round must be at most'),
])
def test_bad_settings_raise_one_line(flag, message):
  with pytest.raises(training.ConfigError) as error:
    settings('--workdir=w', flag)
  assert str(error.value).startswith(message)
  with pytest.raises(flags.IllegalFlagValueError, match='--upload=grads'):
    settings('--workdir=w', '--upload=grads')


def test_bad_flag_exits_2_with_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'zo'
  result = run_module('experiments.zo_finetune', '--methods=mezo,adam',
                      f'--workdir={workdir}', timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --methods must be some of sgd, mezo, uniform_sparse, '
      'curvzo_fixed, curvzo.')
  assert not workdir.exists()
