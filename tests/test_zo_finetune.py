"""`python -m experiments.zo_finetune`: a quick run's files; bad flags."""

import json

import pytest

from _cli_runner import run_module


def run(*flags):
  return run_module('experiments.zo_finetune', *flags, timeout=300)


def read_lines(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def test_quick_run_writes_metrics_and_plots(tmp_path, data_dir):
  workdir = tmp_path / 'zo'
  result = run('--quick', '--methods=sgd,mezo,curvzo', f'--workdir={workdir}',
               f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '[centralized curvzo] step 40' in result.stdout
  lines = read_lines(workdir)
  evals = [l for l in lines if 'method' in l and 'summary' not in l]
  for mode, last in (('centralized', 40), ('federated', 4)):
    for method in ('sgd', 'mezo', 'curvzo'):
      steps = [l['step'] for l in evals
               if l['mode'] == mode and l['method'] == method]
      assert steps[0] == 0 and steps[-1] == last, (mode, method, steps)
  fed = [l for l in evals if l['mode'] == 'federated' and l['step'] > 0]
  # Seed uploads: 8 + S (4 q + 1) bytes with S = 3 local steps, q = 1.
  assert all(l['upload_bytes_per_client'] == 23 for l in fed
             if l['method'] != 'sgd')
  # The carried CurvZO sampler: 4 n + 12 bytes more than the parameters
  # (n = 4 blocks of the quick 16-unit MLP).
  params_bytes = [l['upload_bytes_per_client'] for l in fed
                  if l['method'] == 'sgd'][0]
  downlink = {l['method']: l['downlink_bytes_per_client'] for l in fed}
  assert downlink == {'sgd': params_bytes, 'mezo': params_bytes,
                      'curvzo': params_bytes + 4 * 4 + 12}
  summaries = [l for l in lines if l.get('summary')]
  assert len(summaries) == 6
  mezo = [l for l in summaries if l['method'] == 'mezo'][0]
  assert mezo['steps_ratio_vs_mezo'] == 1.0
  cnn = [l for l in lines if l.get('cnn_upload')][0]
  assert cnn['num_parameters'] > 1_000_000 and cnn['ratio'] > 1000
  for mode in ('centralized', 'federated'):
    with open(workdir / f'zo_{mode}.png', 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  # A method's result does not depend on the methods run before it in the
  # process: without sgd first, mezo and curvzo log the same numbers.
  alone = tmp_path / 'zo_alone'
  result = run('--quick', '--methods=mezo,curvzo', f'--workdir={alone}',
               f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-2000:]

  def numbers(lines):
    return [{k: v for k, v in l.items() if 'wall' not in k and 'time' not in k
             and not k.startswith('median')}
            for l in lines if l.get('method') in ('mezo', 'curvzo')]

  assert numbers(read_lines(alone)) == numbers(lines)


@pytest.mark.parametrize('flag, message', [
    ('--methods=mezo,adam', "unknown --methods entry 'adam'; valid choices: "
     'sgd, mezo, uniform_sparse, curvzo_fixed, curvzo'),
    ('--budget=0.9', '--budget must be in [0.1, 0.8], got 0.9'),
    ('--method_lrs=mezo=0.002,adam=0.1', "unknown --method_lrs method "
     "'adam'; valid choices: sgd, mezo, uniform_sparse, curvzo_fixed, "
     'curvzo'),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, flag, message):
  result = run(flag, f'--workdir={tmp_path}')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == f'error: {message}.', result.stderr
