"""`experiments.omniisr`: the --quick sweep in-process, and its flags.

The sweep runs through `omniisr.run` on flags parsed into a fresh
`FlagValues` (absl's global flags stay untouched); one subprocess checks the
command line's exit status 2 on a bad flag.
"""

import json
import re

from absl import flags
import numpy as np
import pytest

from experiments import omniisr
from fedjax_ext import training

from _cli_runner import run_module

SPECS = {('fl', 'fedavg', 'digits', v) for v in ('base', 'isr', 'mi', 'ne')} | {
    (m, a, 'digits', v) for v in ('base', 'isr')
    for m, a in (('cl', 'centralized'), ('hybrid', 'fedavg'))}


def settings(*argv):
  fv = flags.FlagValues()
  omniisr.define_flags(fv)
  fv(['omniisr', *argv])
  return omniisr.settings_from_flags(fv)


def test_quick_sweep_writes_runs_tables_plots_and_drift(tmp_path, data_dir):
  s = settings('--quick', '--rounds=2', '--eval_every=1',
               f'--workdir={tmp_path}', f'--data_dir={data_dir}')
  # --quick fills the flags not given; the explicit ones win.
  assert (s.rounds, s.eval_every, s.local_steps) == (2, 1, 2)
  assert (s.algorithms, s.hidden_sizes) == (['fedavg'], (16,))
  log = []
  runs, summary = omniisr.run(s, log=log.append)
  assert set(runs) == SPECS
  assert 'ISR wins' in log[-1]
  for spec, (lines,) in runs.items():  # One seed each.
    run_dir = tmp_path / f'{"-".join(spec)}-seed0'
    assert training.read_metrics(str(run_dir / 'metrics.jsonl')) == [
        {k: v for k, v in l.items() if k not in ('mode', 'algorithm',
                                                 'dataset', 'variant', 'seed')}
        for l in lines]
    assert [l['round'] for l in lines] == [1, 2]
    for line in lines:
      for key in omniisr.METRICS:
        assert 0. <= line[key] <= 1., key
      if spec[0] != 'cl':
        # The measured drift never exceeds its (estimated) bound here.
        assert 0. < line['drift_bound_ratio'] < 1., line
        assert line['zeta_sq'] > 0. and line['b_dissimilarity_sq'] >= 1.
      if spec[0] == 'hybrid':
        assert -1. <= line['cl_fl_cosine'] <= 1.
    config = json.loads((run_dir / 'config.json').read_text())
    assert config['weighting'] == 'examples_processed'
    assert (0. < config['cloud_weight'] < 1.) if spec[0] == 'hybrid' else (
        config['cloud_weight'] is None)
  # The same numbers as the script before the port (same seed and flags).
  final = lambda spec, key: runs[spec][0][-1][key]
  np.testing.assert_allclose(
      [final(('fl', 'fedavg', 'digits', 'base'), 'train_loss'),
       final(('fl', 'fedavg', 'digits', 'isr'), 'drift_sq_dist'),
       final(('cl', 'centralized', 'digits', 'base'), 'train_loss'),
       final(('hybrid', 'fedavg', 'digits', 'base'), 'cl_fl_cosine')],
      [2.23162, 0.01303, 2.27695, -0.02364], rtol=2e-3, atol=2e-4)
  for name in ('accuracy_digits.png', 'drift_digits.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
  results = (tmp_path / 'results.md').read_text()
  for heading in ('Paired wins', 'centralized-federated gap', 'ablations',
                  'Hybrid CL-FL', 'client drift'):
    assert heading in results
  saved = json.loads((tmp_path / 'summary.json').read_text())
  assert saved['paired_wins'] == summary['paired_wins']
  assert saved['paired_wins']['cells'] == 3  # 1 dataset x 1 alg x 3 metrics.
  assert saved['paired_wins']['seed_pairs'] == 3
  assert np.isfinite(saved['gap']['test_accuracy']['mean_gap_base'])
  assert set(saved['configurations']) == {'/'.join(spec) for spec in SPECS}


@pytest.mark.parametrize('argv, message', [
    (['--algorithms=fedavg,fednova'],
     '--algorithms must be among fedavg, fedprox, scaffold, fedadam'),
    (['--cloud_weight=2'], '--cloud_weight must be in [0, 1] or -1'),
    (['--hidden_sizes=16,x'], '--hidden_sizes must be sizes >= 1'),
    (['--rounds=0'], '--rounds must be >= 1'),
])
def test_bad_flags_are_refused_when_parsed(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
    settings(*argv)


def test_unknown_isr_point_fails_before_any_run_writes(tmp_path, data_dir):
  s = settings('--quick', '--isr_points=conv9', f'--data_dir={data_dir}',
               f'--workdir={tmp_path / "omni"}')
  with pytest.raises(training.ConfigError,
                     match="--isr_points: ISR point 'conv9'.*hidden_0, logits"):
    omniisr.run(s, log=lambda _: None)
  assert not (tmp_path / 'omni').exists()


def test_bad_flag_exits_2_with_one_line():
  result = run_module('experiments.omniisr', '--cloud_weight=2')
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and (
      '--cloud_weight must be in [0, 1] or -1' in last), last
