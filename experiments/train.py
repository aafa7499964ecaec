r"""Federated training from absl flags.

With no flags it trains an MLP with FedAvg on the embedded `digits` data
split over 20 Dirichlet(0.5) non-IID clients, 10 per round, for 200 rounds:

  python -m experiments.train

Everything is a flag; for example FedAdam on LEAF Synthetic(1, 1) with its
natural per-device clients:

  python -m experiments.train --dataset=leaf_synthetic --partition=natural \
    --model=logistic --algorithm=fedadam --server_lr=0.03 --rounds=200

Writes WORKDIR/metrics.jsonl (one line per evaluation), WORKDIR/metrics.png,
WORKDIR/config.json and orbax checkpoints under WORKDIR/checkpoints.
Bad flags exit with status 2 and a one-line message; a non-finite loss
exits with status 1 naming the round.
"""

import dataclasses

from absl import app
from absl import flags
from absl import logging

from experiments._cli import fail
from experiments._cli import parse_flags
from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext import models
from fedjax_ext import training

_D = training.ExperimentConfig()  # Defaults live in one place.


def _names(choices):
  return ', '.join(choices)


flags.DEFINE_string('dataset', _D.dataset,
                    f'Dataset: {_names(data.DATASETS)} (a TFDS config may '
                    'follow a slash, e.g. leaf_synthetic/0.5_0.5).')
flags.DEFINE_string('data_dir', _D.data_dir,
                    'TFDS data dir (default: $FEDJAX_EXT_DATA_DIR or '
                    '~/tensorflow_datasets).')
flags.DEFINE_string('partition', _D.partition,
                    f'How to split data over clients: '
                    f'{_names(data.PARTITIONS)}.')
flags.DEFINE_float('dirichlet_alpha', _D.dirichlet_alpha,
                   'Dirichlet label-skew concentration (> 0; smaller is '
                   'more non-IID).')
flags.DEFINE_integer('classes_per_client', _D.classes_per_client,
                     'Classes per client for --partition=shards.')
flags.DEFINE_float('quantity_alpha', _D.quantity_alpha,
                   'Dirichlet concentration of client sizes for '
                   '--partition=quantity_skew.')
flags.DEFINE_integer('num_clients', _D.num_clients,
                     'Clients in the federation (default 20; the natural '
                     'count for --partition=natural).')
flags.DEFINE_float('client_test_fraction', _D.client_test_fraction,
                   "Fraction of each client's data held out for per-client "
                   'accuracy, in [0, 1).')
flags.DEFINE_string('model', _D.model, f'Model: {_names(models.MODELS)}.')
flags.DEFINE_list('hidden_sizes', list(map(str, _D.hidden_sizes)),
                  'Hidden layer sizes of --model=mlp.')
flags.DEFINE_string('algorithm', _D.algorithm,
                    f'Algorithm: {_names(algorithms.ALGORITHMS)}.')
flags.DEFINE_integer('clients_per_round', _D.clients_per_round,
                     'Clients sampled each round, in [1, num_clients].')
flags.DEFINE_integer('rounds', _D.rounds, 'Rounds to train (total, also '
                     'when resuming).')
flags.DEFINE_float('local_epochs', _D.local_epochs,
                   'Local epochs per round (> 0).')
flags.DEFINE_integer('local_steps', _D.local_steps,
                     'Local steps per round; > 0 replaces --local_epochs.')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Local batch size.')
flags.DEFINE_float('client_lr', _D.client_lr, 'Client SGD learning rate.')
flags.DEFINE_float('server_lr', _D.server_lr,
                   'Server learning rate (1.0 = plain FedAvg averaging).')
flags.DEFINE_float('server_momentum', _D.server_momentum,
                   'Server momentum of fedavgm, in [0, 1).')
flags.DEFINE_float('prox_mu', _D.prox_mu, 'Proximal mu of fedprox (>= 0).')
flags.DEFINE_string('weighting', _D.weighting,
                    f'Client weights: {_names(clients.WEIGHTINGS)}.')
flags.DEFINE_string('execution', _D.execution,
                    f'How clients run: {_names(core.STRATEGIES)}.')
flags.DEFINE_integer('sampling_groups', _D.sampling_groups,
                     'Cohorts draw C/G clients from each of G groups '
                     '(client_id % G); 0: one group per process.')
flags.DEFINE_integer('seed', _D.seed, 'Seed of data split, init, sampling.')
flags.DEFINE_integer('eval_every', _D.eval_every, 'Evaluate every N rounds.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                     'Checkpoint every N rounds (and at the end).')
flags.DEFINE_integer('eval_batch_size', _D.eval_batch_size,
                     'Evaluation batch size.')
flags.DEFINE_string('workdir', _D.workdir,
                    'Output directory (default: runs/<dataset>-<model>-'
                    '<algorithm>-seed<seed>-<time>).')
flags.DEFINE_bool('resume', _D.resume,
                  'Continue from the latest checkpoint in --workdir.')

# Multi-process runs (launch/local_multiprocess.py, launch/tpu_pod.sh,
# launch/slurm.sbatch set these); not part of the experiment's config.
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for jax.distributed.')
flags.DEFINE_integer('num_processes', 1, 'Processes in the job.')
flags.DEFINE_integer('process_id', 0, 'This process, in [0, num_processes).')
flags.DEFINE_bool('auto_distributed', False,
                  'Join a jax.distributed job whose processes JAX detects '
                  'itself (TPU pod slices, SLURM).')

FLAGS = flags.FLAGS



def initialize_distributed():
  """Joins a jax.distributed job (--auto_distributed or --num_processes>1)."""
  if FLAGS.num_processes < 1 or not 0 <= FLAGS.process_id < FLAGS.num_processes:
    fail(f'--process_id must be in [0, --num_processes={FLAGS.num_processes}'
         f'), got {FLAGS.process_id}.')
  if FLAGS.num_processes > 1 and not FLAGS.coordinator_address:
    fail('--coordinator_address is required with --num_processes > 1.')
  if not FLAGS.auto_distributed and FLAGS.num_processes == 1:
    return
  import jax  # pylint: disable=g-import-not-at-top
  # CPU collectives across processes need gloo; GPU/TPU clients ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if FLAGS.auto_distributed:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def config_from_flags() -> training.ExperimentConfig:
  try:
    hidden = tuple(int(h) for h in FLAGS.hidden_sizes)
  except ValueError:
    fail(f'--hidden_sizes must be a list of integers, got '
         f'{",".join(FLAGS.hidden_sizes)!r}.')
  values = {name: FLAGS[name].value
            for name in (f.name for f in dataclasses.fields(
                training.ExperimentConfig)) if name != 'hidden_sizes'}
  return training.ExperimentConfig(hidden_sizes=hidden, **values)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # Keep TFDS's INFO lines quiet.
    logging.set_verbosity(logging.WARNING)
  config = config_from_flags()
  initialize_distributed()
  try:
    training.run_experiment(config)
  except (training.ConfigError, data.DataError) as e:
    fail(str(e))
  except training.NonFiniteError as e:
    fail(str(e), status=1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
