"""`python -m experiments.omniisr`: the whole pipeline in --quick mode, and
bad flags exit 2 with one line. Runs as subprocesses (absl flags are global)."""

import json

import numpy as np
import pytest

from _cli_runner import run_module


def run_cli(*flags):
  return run_module('experiments.omniisr', *flags)


def test_quick_run_writes_tables_plots_and_drift(tmp_path, data_dir):
  workdir = tmp_path / 'omni'
  result = run_cli('--quick', '--rounds=2', '--eval_every=1',
                   f'--workdir={workdir}', f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'ISR wins' in result.stdout
  for name in ('accuracy_digits.png', 'drift_digits.png', 'gap.png'):
    with open(workdir / name, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
  with open(workdir / 'metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  # fl base/isr, cl base/isr, ablations mi/ne, hybrid base/isr: 2 rounds.
  runs = {(l['mode'], l['variant']) for l in lines}
  assert runs == {('fl', 'base'), ('fl', 'isr'), ('fl', 'mi'), ('fl', 'ne'),
                  ('cl', 'base'), ('cl', 'isr'), ('hybrid', 'base'),
                  ('hybrid', 'isr')}
  assert len(lines) == 16
  for line in lines:
    for key in ('test_accuracy', 'macro_f1', 'client_accuracy_p10'):
      assert 0. <= line[key] <= 1., key
    if line['mode'] != 'cl':
      # The measured drift never exceeds its (estimated) bound here.
      assert 0. < line['drift_bound_ratio'] < 1., line
      assert line['zeta_sq'] > 0. and line['b_dissimilarity_sq'] >= 1.
    if line['mode'] == 'hybrid':
      assert -1. <= line['cl_fl_cosine'] <= 1.
      assert 0. < line['cloud_weight'] < 1.
  results = (workdir / 'results.md').read_text()
  for heading in ('Paired wins', 'Centralized-federated gap', 'Ablations',
                  'Hybrid CL-FL', 'Client drift'):
    assert heading in results
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  assert summary['paired_wins']['cells'] == 3
  assert np.isfinite(summary['gap']['test_accuracy']['mean_gap_base'])


@pytest.mark.parametrize('flags, message', [
    (['--algorithms=fedavg,fednova'], "unknown --algorithms value 'fednova'; "
     'valid choices: fedavg, fedprox, scaffold, fedadam'),
    (['--cloud_weight=2'], '--cloud_weight must be in [0, 1] or -1'),
])
def test_bad_flags_exit_2_with_one_line(flags, message):
  result = run_cli(*flags)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ')
  assert message in lines[-1]


def test_unknown_isr_point_lists_the_submodules(tmp_path, data_dir):
  result = run_cli('--quick', '--isr_points=conv9', f'--data_dir={data_dir}',
                   f'--workdir={tmp_path}')
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --isr_points: ISR point 'conv9'")
  assert 'valid choices: hidden_0, logits' in last
