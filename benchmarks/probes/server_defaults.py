"""Per-algorithm server learning rates on digits: 50 rounds each.

  python benchmarks/probes/server_defaults.py [DATA_DIR]

Prints the final test accuracy and training loss of FedAdam, FedYogi,
FedAdagrad and FedAvgM at `algorithms.DEFAULT_SERVER_LEARNING_RATES`
(BUILD_NOTES, issue 12).
"""

import sys
import tempfile

from fedjax_ext import algorithms
from fedjax_ext import training


def main(data_dir=None):
  for name in ('fedadam', 'fedyogi', 'fedadagrad', 'fedavgm'):
    with tempfile.TemporaryDirectory() as workdir:
      config = training.ExperimentConfig(
          algorithm=name, rounds=50, eval_every=50, checkpoint_every=50,
          workdir=f'{workdir}/run', data_dir=data_dir)
      line = training.run_experiment(config, log=lambda s: None).metrics[-1]
    rate = algorithms.DEFAULT_SERVER_LEARNING_RATES[name]
    print(f'{name:10s} server_lr {rate:.4g}: test_accuracy '
          f'{line["test_accuracy"]:.3f} train_loss {line["train_loss"]:.3f}',
          flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
