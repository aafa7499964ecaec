"""`python -m benchmarks.run --quick`: our systems on tiny sizes, no peers.

The full benchmark (peers in their own virtualenvs) is run by hand; this
smoke test only checks that the driver runs, collects sane results and
writes the markdown report and the PNG.
"""

import json

import pytest

from benchmarks import run as bench

from _cli_runner import run_module


def _run(*flags):
  return run_module('benchmarks.run', *flags, timeout=300)


def test_quick_run_writes_sane_results(tmp_path):
  out = tmp_path / 'BENCHMARKS.md'
  result = _run('--quick', '--nosubprocess', '--workloads=W2,W3',
                '--strategies=vmap', '--w3_strategies=chunked',
                '--w3_clients=3', f'--out={out}',
                f'--results_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)['results']
  systems = [(r['workload'], r['spec']['system']) for r in results]
  # W2's second ours row is the cohort sharded over 2 CPU devices
  # (--cpu_device_variants default), run in a subprocess of its own.
  assert systems == [('W2', 'limit'), ('W2', 'ours'), ('W2', 'ours'),
                     ('W3', 'limit'), ('W3', 'ours')]
  assert [r['num_devices'] for r in results if 'num_devices' in r] == [
      1, 2, 1]
  for r in results:
    assert r['ok'], r
    assert r['finite'], r
    assert r['round_times_s'] and all(t > 0 for t in r['round_times_s'])
    assert min(r['round_times_s']) <= r['median_s'] <= max(
        r['round_times_s'])
    assert r['first_round_s'] > 0 and r['peak_rss_mb'] > 0
  w3_ours = results[4]
  assert w3_ours['spec']['execution'] == 'chunked'
  assert w3_ours['spec']['chunk_size'] == 3  # min(quick chunk 4, 3 clients)
  assert w3_ours['spec']['clients'] == 3
  text = out.read_text()
  assert '## Targets' in text
  assert 'ours vmap unroll=auto' in text  # The library default unroll.
  assert 'ours sharded unroll=auto chunk=2 over 2 CPU devices' in text
  assert '### W3 logistic C=3' in text
  assert '1.00x' in text
  with open(tmp_path / 'benchmarks.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('flag, message', [
    ('--workloads=W9', "--workloads='W9' is unknown; valid choices: W1, W2, "
     'W3'),
    ('--scale=0', '--scale must be > 0'),
])
def test_bad_flags_exit_2_with_one_line(flag, message, tmp_path):
  result = _run(flag, '--quick', f'--out={tmp_path}/B.md',
                f'--results_dir={tmp_path}')
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  assert message in lines[0]


def test_plan_dedupes_and_caps_peers():
  unrolls = {'W1': [(['auto', 'vmap'], True), (['auto'], 1)], 'W2': [1]}
  chunks = {'W1': 5, 'W2': 25, 'W3': 500}
  configs = bench.plan(
      ['W1', 'W2', 'W3'], bench.SYSTEMS, ['auto', 'vmap'], unrolls, chunks,
      w3_strategies=['chunked'], w3_clients=[100, 10000], peer_max=1000,
      flower_max=100, quick=False, scale=1.)
  # 'auto' resolving to a strategy that also runs is reported from that run.
  aliased = bench.plan(
      ['W2'], ['ours'], ['auto', 'vmap', 'chunked'], unrolls, chunks,
      w3_strategies=[], w3_clients=[], peer_max=1, flower_max=1,
      quick=False, scale=1., resolve=lambda spec: 'vmap')
  specs = [s for _, label, s in aliased if label == 'logistic']
  assert [(s['execution'], s.get('same_as')) for s in specs] == [
      ('vmap', None), ('auto', 'vmap'), ('chunked', None)]
  assert bench._key(specs[0]) == bench._key(specs[1])
  assert not any(s['system'] in bench.PEERS for _, _, s in bench.plan(
      ['W2'], bench.SYSTEMS, ['vmap'], unrolls, chunks, w3_strategies=[],
      w3_clients=[], peer_max=1, flower_max=1, quick=True, scale=1.))
  by = {}
  for workload, label, spec in configs:
    by.setdefault((workload, label), []).append(spec)
  # W1: limit, 2 strategies unrolled + auto with unroll 1, 3 peers.
  assert len(by['W1', 'cnn']) == 1 + 3 + 3
  assert [(s['execution'], s['unroll']) for s in by['W1', 'cnn']
          if s['system'] == 'ours'] == [('auto', True), ('auto', 1),
                                        ('vmap', True)]
  # Limit and ours' auto first, then the peers, then our other variants.
  assert [s['system'] for s in by['W1', 'cnn']] == [
      'limit', 'ours', 'ours', 'fedjax', 'torch', 'flower', 'ours']
  # W3 at 10,000 clients: no peers; chunk capped to the cohort elsewhere.
  big = by['W3', 'logistic C=10000']
  assert sorted(s['system'] for s in big) == ['limit', 'ours']
  small = by['W3', 'logistic C=100']
  assert [s['chunk_size'] for s in small if s['system'] == 'ours'] == [100]
  # W3 at 100 clients is W2's logistic for the limit and the peers.
  w2 = {bench._key(s) for s in by['W2', 'logistic']}
  shared = [s['system'] for s in small if bench._key(s) in w2]
  assert sorted(shared) == ['fedjax', 'flower', 'limit', 'torch']


def test_plan_adds_multi_cpu_device_variants():
  unrolls = {'W1': [(['auto'], 'auto')], 'W2': ['auto']}
  chunks = {'W1': 5, 'W2': 25, 'W3': 500}
  configs = bench.plan(
      ['W1', 'W2', 'W3'], ['ours'], ['auto'], unrolls, chunks,
      w3_strategies=['chunked'], w3_clients=[100], peer_max=1, flower_max=1,
      quick=False, scale=1., cpu_devices=[1, 2, 3])
  multi = [(w, s['cpu_devices'], s['execution'], s['chunk_size'])
           for w, _, s in configs if 'cpu_devices' in s]
  # 1 adds nothing; 3 divides neither 10 (W1) nor 100 (W2); W3 has none.
  assert multi == [('W1', 2, 'sharded', 5), ('W2', 2, 'sharded', 25),
                   ('W2', 2, 'sharded', 25)]
