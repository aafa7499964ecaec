"""`experiments.decentralized`: the --quick sweep in-process, partition, flags.

The sweep runs through `decentralized.run` on flags parsed into a fresh
`FlagValues` (absl's global flags stay untouched).
"""

from absl import flags
import numpy as np
import pytest

from experiments import decentralized as dec_experiment
from fedjax_ext import training


def settings(*argv):
  fv = flags.FlagValues()
  dec_experiment.define_flags(fv)
  fv(['decentralized', *argv])
  return dec_experiment.settings_from_flags(fv)


def test_quick_sweep_writes_runs_table_and_plots(tmp_path, data_dir):
  s = settings('--quick', '--algorithms=d_psgd,gradient_tracking',
               f'--workdir={tmp_path}', f'--data_dir={data_dir}')
  assert (s.task, s.num_seeds, s.rounds, s.topologies, s.partition) == (
      'digits', 1, 2, ['er0.5', 'ring'], 'dirichlet')
  log = []
  runs = dec_experiment.run(s, log=log.append)
  assert set(runs) == {(a, t) for a in ('d_psgd', 'gradient_tracking')
                       for t in ('er0.5', 'ring')}
  for (label, topo), (lines,) in runs.items():
    run_dir = tmp_path / f'digits-{label}-{topo}-seed0'
    assert training.read_metrics(str(run_dir / 'metrics.jsonl')) == lines
    assert [l['round'] for l in lines] == [1, 2]
    for line in lines:
      for key in ('test_accuracy', 'node_accuracy_mean', 'node_accuracy_min',
                  'node_accuracy_max'):
        assert 0. <= line[key] <= 1., key
      assert line['node_accuracy_min'] <= line['node_accuracy_mean']
      for key in ('train_loss', 'consensus_before_mix', 'consensus_after_mix',
                  'node_accuracy_std'):
        assert np.isfinite(line[key]) and line[key] >= 0., key
      assert line['active_nodes'] == 10.
  results = (tmp_path / 'results.md').read_text()
  assert '| d_psgd | er0.5 |' in results and '| ring | 0.7616 |' in results
  for png in ('accuracy', 'node_accuracy', 'consensus'):
    assert (tmp_path / f'{png}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'results.md' in log[-1]


def test_dominant_partition_follows_the_recipe():
  labels = np.repeat(np.arange(5), 200)
  parts = dec_experiment.dominant_partition(labels, 10, 0.9, seed=0,
                                            num_classes=5)
  assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
  for i, rows in enumerate(parts):
    share = np.bincount(labels[rows], minlength=5) / len(rows)
    assert abs(share[i % 5] - 0.9) < 0.03, share


def test_bad_flags_are_refused():
  for bad, match in (('--topologies=er0.5,mesh', '--topologies must be'),
                     ('--topologies=er0', '--topologies must be'),
                     ('--intervals=2,0', '--intervals must be'),
                     ('--task=mnist', '--task must be'),
                     ('--algorithms=dfedavg,nope', '--algorithms must be'),
                     ('--momentum=1', '--momentum must be')):
    with pytest.raises(flags.IllegalFlagValueError, match=match):
      settings(bad)
  with pytest.raises(training.ConfigError, match='not of --task=bbc_lora'):
    settings('--task=bbc_lora', '--algorithms=dfedavg')
  # --quick fills only the flags not given; the task picks the defaults.
  s = settings('--quick', '--rounds=3')
  assert (s.rounds, s.algorithms, s.lr) == (3, ['d_psgd', 'dfedavg'], 0.1)
  s = settings('--task=bbc_lora')
  assert (s.algorithms, s.partition, s.lr) == (
      ['dec_lora', 'rolora', 'ffa_gossip', 'tad_lora'], 'dominant', 3e-3)
  assert dec_experiment.labels_of(s)[-1] == 'tad_lora_Tauto'


def test_summary_picks_the_best_interval_per_topology(tmp_path):
  s = settings('--task=bbc_lora', '--algorithms=tad_lora', '--num_seeds=2',
               '--topologies=er0.5,ring', '--intervals=1,2,auto',
               f'--workdir={tmp_path}')
  line = lambda acc: [{'round': 1, 'test_accuracy': acc,
                       'node_accuracy_mean': acc, 'node_accuracy_std': 0.1,
                       'consensus_after_mix': 0.5, 'cross_term_error': 0.01,
                       'round_time_s': 0.1}]
  score = {('er0.5', 'tad_lora_T1'): 0.8, ('er0.5', 'tad_lora_T2'): 0.7,
           ('ring', 'tad_lora_T1'): 0.6, ('ring', 'tad_lora_T2'): 0.75}
  runs = {(label, t): [line(score.get((t, label), 0.9))] * 2
          for label in dec_experiment.labels_of(s) for t in s.topologies}
  stats = {'er0.5': (0.19, 1.11, 1), 'ring': (0.76, 2.05, 2)}
  assert dec_experiment.best_intervals(s, runs) == {'er0.5': (1, 0.8),
                                                    'ring': (2, 0.75)}
  dec_experiment.summarize(s, runs, stats, 1.)
  results = (tmp_path / 'results.md').read_text()
  assert '| er0.5 | 1.110 | 1 | 0.8000 | 1 |' in results
  assert '| ring | 2.050 | 2 | 0.7500 | 2 |' in results
  assert '| tad_lora_Tauto | ring | 0.9000 +- 0.0000 |' in results
  assert (tmp_path / 'best_interval.png').read_bytes()[:4] == b'\x89PNG'
