"""`experiments.split`: the --quick sweep in-process, and its flags.

The sweep runs through `split.run` on flags parsed into a fresh `FlagValues`
(absl's global flags stay untouched), on a tiny MLP to keep it fast; one
subprocess checks the command line's exit status 2 on a bad flag.
"""

import math
import re

from absl import flags
import pytest

from experiments import split as split_experiment
from fedjax_ext import training

from _cli_runner import run_module


def settings(*argv):
  fv = flags.FlagValues()
  split_experiment.define_flags(fv)
  fv(['split', *argv])
  return split_experiment.settings_from_flags(fv)


def test_quick_sweep_writes_runs_table_and_plot(tmp_path, data_dir):
  s = settings('--quick', '--model=mlp', '--hidden_sizes=16', '--cuts=1',
               f'--workdir={tmp_path}', f'--data_dir={data_dir}')
  # --quick fills the flags not given; the explicit ones win.
  assert (s.methods, s.num_seeds, s.rounds, s.num_clients) == (
      ['psl', 'local_loss'], 1, 2, 4)
  assert (s.cuts, s.hidden_sizes, s.model) == ([1], (16,), 'mlp')
  log = []
  runs = split_experiment.run(s, log=log.append)
  assert set(runs) == {('psl', 1, 0.5), ('local_loss', 1, 0.5)}
  assert 'results.md' in log[-1]
  for (method, cut, alpha), (lines,) in runs.items():  # One seed each.
    run_dir = tmp_path / f'{method}-cut{cut}-a{alpha:g}-seed0'
    assert training.read_metrics(str(run_dir / 'metrics.jsonl')) == lines
    assert [l['round'] for l in lines] == [1, 2]
    for line in lines:
      assert all(math.isfinite(v) for v in line.values()
                 if isinstance(v, float)), line
      assert 0. <= line['test_accuracy'] <= 1.
      assert line['upload_bytes_per_client'] > 0.
  final = lambda m, k: runs[(m, 1, 0.5)][0][-1][k]
  # Decoupled SL: nothing comes down per step; PSL returns the gradients.
  assert final('local_loss', 'gradient_download_bytes_per_client') == 0.
  assert final('local_loss', 'downlink_bytes_per_client') == final(
      'local_loss', 'model_download_bytes_per_client') > 0.
  assert final('psl', 'gradient_download_bytes_per_client') > 0.
  assert final('psl', 'model_download_bytes_per_client') == 0.
  assert (tmp_path / 'accuracy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  rows = {r.split('|')[1].strip(): [c.strip() for c in r.split('|')[2:-1]]
          for r in (tmp_path / 'results.md').read_text().splitlines()
          if r.startswith('| psl') or r.startswith('| local_loss')}
  assert set(rows) == {'psl', 'local_loss'}
  # Columns: cut, alpha, accuracy, up, grad down, model down, client FLOPs,
  # server FLOPs, latency, s/round.
  assert float(rows['local_loss'][4]) == 0. < float(rows['psl'][4])
  for row in rows.values():
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in row[6:])


@pytest.mark.parametrize('argv, message', [
    (['--methods=psl,fedsgd'], '--methods must be among fedavg, sl'),
    (['--model=resnet'], '--model must be one of cnn, mlp'),
    (['--cuts=1,0'], '--cuts must be ints >= 1'),
    (['--alphas=0.5,x'], '--alphas must be floats > 0'),
    (['--phi=1.5'], '--phi must be in [0, 1]'),
    (['--drop_prob=1'], '--drop_prob must be in [0, 1)'),
    (['--uplink_bytes_per_s=0'], '--uplink_bytes_per_s must be > 0'),
])
def test_bad_flags_are_refused_when_parsed(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
    settings(*argv)


@pytest.mark.parametrize('argv, message', [
    (['--cuts=4'], '--cuts must be in [1, 2] for --model=cnn (4 layers, '
     'ushaped keeps the last on the client), got 4.'),
    (['--methods=psl', '--cuts=3', '--model=mlp', '--hidden_sizes=8'],
     '--cuts must be in [1, 1] for --model=mlp (2 layers), got 3.'),
    (['--num_clients=3', '--clients_per_round=4'],
     '--clients_per_round (4) must be <= --num_clients (3).'),
])
def test_inconsistent_flags_are_refused(argv, message):
  with pytest.raises(training.ConfigError, match=re.escape(message)):
    settings(*argv)


def test_bad_flag_exits_2_with_one_line():
  result = run_module('experiments.split', '--cuts=9')
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and '--cuts must be in [1, 2]' in last, (
      last)
