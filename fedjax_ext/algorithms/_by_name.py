"""Algorithms by name, for experiment scripts and sweeps."""

from typing import Callable

import optax

from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import server
from fedjax_ext.algorithms._fed_avg import fed_avg
from fedjax_ext.algorithms._scaffold import scaffold

ALGORITHMS = ('fedavg', 'fedavgm', 'fedadagrad', 'fedadam', 'fedyogi',
              'fedprox', 'scaffold')


def create_algorithm(name: str, loss_fn: clients.LossFn, *,
                     client_learning_rate: float,
                     server_learning_rate: float,
                     num_clients: int,
                     prox_mu: float = 0.01,
                     server_momentum: float = 0.9,
                     tau: float = 1e-3,
                     weighting: str = 'examples',
                     unroll: int | bool | str = 'auto',
                     extra_metrics: Callable[..., core.Metrics] | None = None,
                     execution: str = 'auto',
                     chunk_size: int | None = None
                    ) -> core.FederatedAlgorithm:
  """Builds a named algorithm with SGD clients.

  ``fedprox`` is FedAvg's server with proximal clients (`prox_mu`);
  ``scaffold`` keeps per-client controls; the others differ only in the
  server optimizer (`server.server_optimizer`).
  """
  if name not in ALGORITHMS:
    raise ValueError(f'Unknown algorithm {name!r}; valid choices: '
                     f'{", ".join(ALGORITHMS)}.')
  server_name = 'fedavg' if name in ('fedprox', 'scaffold') else name
  server_opt = server.server_optimizer(server_name, server_learning_rate,
                                       momentum=server_momentum, tau=tau)
  common = dict(weighting=weighting, unroll=unroll,
                extra_metrics=extra_metrics, execution=execution,
                chunk_size=chunk_size)
  if name == 'scaffold':
    return scaffold(loss_fn, client_learning_rate, server_opt,
                    num_clients=num_clients, **common)
  return fed_avg(loss_fn, optax.sgd(client_learning_rate), server_opt,
                 prox_mu=prox_mu if name == 'fedprox' else 0., **common)
