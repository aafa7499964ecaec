"""Every flag of `experiments.train` with a bad value: exit 2, one line.

Each row runs the script's own parser and ``main`` in-process (absl's
`flagsaver` restores the flags after), and checks the exit status, that
stderr is exactly one ``error:`` line naming the flag, and that no
traceback was printed. A few values are only wrong for the data (a batch
larger than every client, more classes per client than the dataset has),
so the rows load the embedded digits data.
"""

from absl import flags
from absl.testing import flagsaver
import pytest

from experiments import _cli
from experiments import train

from _cli_runner import run_module

FLAGS = flags.FLAGS

# (flag values, text the one-line message must contain)
BAD = [
    (['--dataset=imagenet'], "--dataset='imagenet' is unknown"),
    (['--dataset=leaf_synthetic/bogus'], "Unknown config 'bogus'"),
    (['--partition=random'], "--partition='random' is unknown"),
    (['--dirichlet_alpha=-1'], '--dirichlet_alpha must be'),
    (['--dirichlet_alpha=nan'], '--dirichlet_alpha must be'),
    (['--partition=shards', '--classes_per_client=50'],
     '--classes_per_client must be in [1, 10]'),
    (['--quantity_alpha=0'], '--quantity_alpha must be'),
    (['--num_clients=0'], '--num_clients must be'),
    (['--num_clients=100000'], '--num_clients must be in [1, 1438]'),
    (['--client_test_fraction=1'], '--client_test_fraction must be in'),
    (['--model=vit'], "--model='vit' is unknown"),
    (['--hidden_sizes=a,b'], '--hidden_sizes must be a list of integers'),
    (['--hidden_sizes=0'], '--hidden_sizes must be a list of integers'),
    (['--algorithm=fedsgd'], "--algorithm='fedsgd' is unknown"),
    (['--clients_per_round=0'], '--clients_per_round must be'),
    (['--num_clients=5', '--clients_per_round=6'],
     '--clients_per_round must be in [1, --num_clients=5]'),
    (['--rounds=0'], '--rounds must be an integer in [1,'),
    (['--rounds=100000000000'], '--rounds must be an integer in [1,'),
    (['--rounds=1e20'], 'rounds'),
    (['--local_epochs=0'], '--local_epochs must be'),
    (['--local_epochs=inf'], '--local_epochs must be'),
    (['--local_steps=-1'], '--local_steps must be in [0,'),
    (['--local_steps=1000000000'], '--local_steps must be in [0,'),
    (['--local_steps=100000', '--batch_size=50'], 'GiB of examples'),
    (['--batch_size=0'], '--batch_size must be'),
    (['--batch_size=100000'], '--batch_size must be in [1, '),
    (['--client_lr=0'], '--client_lr must be'),
    (['--client_lr=inf'], '--client_lr must be'),
    (['--server_lr=nan'], '--server_lr must be'),
    (['--server_lr=1e9'], '--server_lr must be'),
    (['--server_momentum=1'], '--server_momentum must be in [0, 1)'),
    (['--prox_mu=-1'], '--prox_mu must be'),
    (['--weighting=examples'], "--weighting='examples' is unknown"),
    (['--execution=pmap'], "--execution='pmap' is unknown"),
    (['--aggregator=mode'], "--aggregator='mode' is unknown"),
    (['--cc_radius=0'], '--cc_radius must be'),
    (['--byzantine_fraction=0.6', '--attack=alie'],
     '--byzantine_fraction must be in [0, 0.5)'),
    (['--attack=alie'], '--attack=alie needs --byzantine_fraction > 0'),
    (['--alie_z=nan'], '--alie_z must be'),
    (['--ipm_epsilon=-1'], '--ipm_epsilon must be'),
    (['--gaussian_scale=0'], '--gaussian_scale must be'),
    (['--worker_momentum=1'], '--worker_momentum must be in [0, 1)'),
    (['--client_optimizer=adam'], "--client_optimizer='adam' is unknown"),
    (['--zo_upload=both'], "--zo_upload='both' is unknown"),
    (['--zo_budget=0'], '--zo_budget must be in (0, 1]'),
    (['--isr_points=nowhere'], '--isr_points=nowhere'),
    (['--isr_mi_weight=-1'], '--isr_mi_weight must be'),
    (['--isr_ne_weight=nan'], '--isr_ne_weight must be'),
    (['--sampling_groups=-1'], '--sampling_groups must be'),
    (['--seed=-1'], '--seed must be an integer in [0,'),
    (['--eval_every=0'], '--eval_every must be'),
    (['--checkpoint_every=0'], '--checkpoint_every must be'),
    (['--eval_batch_size=0'], '--eval_batch_size must be'),
    (['--resume_from=0'], '--resume_from must be'),
    (['--resume'], '--resume: no checkpoint'),
    (['--process_id=3'], '--process_id must be in [0, --num_processes=1)'),
    (['--cpu_devices=0'], '--cpu_devices must be an integer >= 1'),
    (['--no_such_flag'], 'no_such_flag'),
    (['--config=/nonexistent/config.py'], 'config'),
]


def run_in_process(argv, capsys):
  with flagsaver.flagsaver():
    FLAGS.unparse_flags()
    try:
      remaining = _cli.parse_flags(['train', *argv])
      train.main(remaining)
    except SystemExit as e:
      status = e.code
    else:
      status = 0
  return status, capsys.readouterr().err


@pytest.mark.parametrize('argv, message', BAD,
                         ids=[' '.join(a) for a, _ in BAD])
def test_bad_flag_exits_2_with_one_line(tmp_path, data_dir, capsys, argv,
                                        message):
  status, stderr = run_in_process(
      [*argv, f'--data_dir={data_dir}', f'--workdir={tmp_path / "w"}',
       '--compilation_cache_dir=', '--rounds=1' if not any(
           a.startswith('--rounds') for a in argv) else '--eval_every=1'],
      capsys)
  assert status == 2, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr
  assert lines[0].startswith('error: '), stderr
  assert message in lines[0], lines[0]
  assert 'Traceback' not in stderr


def test_workdir_and_data_dir_that_are_files(tmp_path, data_dir, capsys):
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  for argv, message in (
      ([f'--workdir={a_file}', f'--data_dir={data_dir}'], 'is a file'),
      ([f'--workdir={tmp_path / "w"}', f'--data_dir={a_file}'],
       '--data_dir=' + str(a_file) + ' is a file')):
    status, stderr = run_in_process(
        [*argv, '--rounds=1', '--compilation_cache_dir='], capsys)
    assert status == 2, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr


def test_help_exits_0_and_lists_every_flag():
  result = run_module('experiments.train', '--help', timeout=120)
  assert result.returncode == 0, result.stderr
  for name in ('--aggregator', '--compilation_cache_dir', '--cpu_devices',
               '--client_optimizer', '--config', '--resume_from'):
    assert name in result.stdout, name
