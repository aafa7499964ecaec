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
from ml_collections import config_flags

from experiments import _cli
from experiments._cli import fail
from experiments._cli import parse_flags
from fedjax_ext import algorithms
from fedjax_ext import byzantine
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
                    f'{_names(data.PARTITIONS)}; unset: natural for datasets '
                    f'with natural clients ({_names(data.NATURAL_CLIENTS)}), '
                    'else dirichlet.')
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
flags.DEFINE_float(
    'server_lr', _D.server_lr,
    'Server learning rate; unset: per algorithm, from the EMNIST row of '
    'Reddi et al. 2021\'s tuned grid: ' + ', '.join(
        f'{name} {rate:.2g}' for name, rate in
        algorithms.DEFAULT_SERVER_LEARNING_RATES.items()) + '.')
flags.DEFINE_float('server_tau', _D.server_tau,
                   'Epsilon tau of fedadagrad / fedadam / fedyogi (> 0).')
flags.DEFINE_float('server_momentum', _D.server_momentum,
                   'Server momentum of fedavgm, in [0, 1).')
flags.DEFINE_float('prox_mu', _D.prox_mu, 'Proximal mu of fedprox (>= 0).')
flags.DEFINE_string('weighting', _D.weighting,
                    f'Client aggregation weights: {_names(core.WEIGHTINGS)} '
                    '(num_examples: dataset size n_k, as McMahan et al. '
                    'and FedJAX).')
flags.DEFINE_string('execution', _D.execution,
                    f'How clients run: {_names(core.STRATEGIES)}.')
# Composition: any transform of the library, by flag.
flags.DEFINE_string('aggregator', _D.aggregator,
                    f'Aggregation rule: {_names(training.AGGREGATORS)}.')
flags.DEFINE_float('cc_radius', _D.cc_radius,
                   'Radius of --aggregator=centered_clipping (> 0).')
flags.DEFINE_float('byzantine_fraction', _D.byzantine_fraction,
                   'Fraction of the clients that are Byzantine, in [0, 0.5); '
                   'robust rules are set for floor(fraction * '
                   'clients_per_round) of them.')
flags.DEFINE_string('attack', _D.attack,
                    f'What Byzantine clients do: {_names(byzantine.ATTACKS)}.')
flags.DEFINE_float('alie_z', _D.alie_z,
                   'ALIE z (> 0); unset: z_max of Baruch et al.')
flags.DEFINE_float('ipm_epsilon', _D.ipm_epsilon, 'IPM epsilon (> 0).')
flags.DEFINE_float('gaussian_scale', _D.gaussian_scale,
                   'Std of the gaussian attack (> 0).')
flags.DEFINE_float('worker_momentum', _D.worker_momentum,
                   'Worker momentum beta in [0, 1); 0: none.')
flags.DEFINE_string('client_optimizer', _D.client_optimizer,
                    f'Client optimizer: {_names(training.CLIENT_OPTIMIZERS)} '
                    '(all but sgd are zeroth-order, at --client_lr).')
flags.DEFINE_string('zo_upload', _D.zo_upload,
                    'What ZO clients upload: delta or seeds.')
flags.DEFINE_float('zo_budget', _D.zo_budget,
                   'Fraction of blocks sparse ZO perturbs, in (0, 1].')
flags.DEFINE_list('isr_points', list(_D.isr_points),
                  'OmniISR: model submodules that get auxiliary heads '
                  '(e.g. hidden_0 of the MLP, conv1 of the CNN); empty: no '
                  'ISR.')
flags.DEFINE_float('isr_mi_weight', _D.isr_mi_weight,
                   'OmniISR MI (auxiliary CE) weight lambda (>= 0).')
flags.DEFINE_float('isr_ne_weight', _D.isr_ne_weight,
                   'OmniISR negative-entropy weight mu (>= 0).')
flags.DEFINE_bool('drift_metrics', _D.drift_metrics,
                  'Log client drift, gradient dissimilarity and the drift '
                  'bound every round.')
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
flags.DEFINE_integer('resume_from', _D.resume_from,
                     'Continue from the checkpoint of this round (e.g. when '
                     'the latest is corrupted); later checkpoints and '
                     'metrics lines are deleted.')

# Multi-process runs (launch/local_multiprocess.py, launch/tpu_pod.sh,
# launch/slurm.sbatch set these); not part of the experiment's config.
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for jax.distributed.')
flags.DEFINE_integer('num_processes', 1, 'Processes in the job.')
flags.DEFINE_integer('process_id', 0, 'This process, in [0, num_processes).')
flags.DEFINE_bool('auto_distributed', False,
                  'Join a jax.distributed job whose processes JAX detects '
                  'itself (TPU pod slices, SLURM).')

config_flags.DEFINE_config_file(
    'config', None,
    'An ml_collections config file (a .py whose get_config() returns a '
    'ConfigDict with ExperimentConfig fields); flags given on the command '
    'line override it, and --config.<field>=value overrides one field.')

FLAGS = flags.FLAGS
# --help lists the flags every script shares (experiments/_cli.py) too.
flags.adopt_module_key_flags(_cli)



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
  """Defaults, then the --config file, then flags given explicitly."""
  names = [f.name for f in dataclasses.fields(training.ExperimentConfig)]
  values = {name: FLAGS[name].value for name in names}
  try:
    from_file = None if FLAGS.config is None else FLAGS.config.to_dict()
  except (OSError, SyntaxError, AttributeError) as e:
    reason = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(f'--config could not be loaded: {reason[-1] if reason else e}')
  if from_file is not None:
    unknown = sorted(set(from_file) - set(names) - {'resolved_from'})
    if unknown:
      fail(f'--config: unknown fields {", ".join(unknown)}; valid: '
           f'{", ".join(names)}.')
    values.update({k: v for k, v in from_file.items()
                   if k in names and not FLAGS[k].present})
  try:
    values['hidden_sizes'] = tuple(int(h) for h in values['hidden_sizes'])
  except (TypeError, ValueError):
    fail(f'--hidden_sizes must be a list of integers, got '
         f'{values["hidden_sizes"]!r}.')
  values['isr_points'] = tuple(values['isr_points'])
  return training.ExperimentConfig(**values)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = config_from_flags()
  initialize_distributed()
  try:
    training.run_experiment(config)
  except (training.ConfigError, training.CheckpointError,
          data.DataError) as e:
    fail(str(e))
  except training.NonFiniteError as e:
    fail(str(e), status=1)
  except training.Preempted as e:
    fail(str(e), status=e.exit_status)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
