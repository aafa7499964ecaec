r"""FedAdam with a trimmed-mean defence against 20% ALIE attackers on digits.

  python -m experiments.train \
    --config=experiments/configs/fedadam_robust_digits.py

Any field can be overridden: ``--config.rounds=20`` or a plain flag
(``--rounds=20``), which wins over the file.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.algorithm = 'fedadam'
  config.server_lr = 0.01
  config.aggregator = 'trimmed_mean'
  config.byzantine_fraction = 0.2
  config.attack = 'alie'
  config.worker_momentum = 0.9
  config.drift_metrics = True
  config.rounds = 100
  config.eval_every = 10
  return config
