"""FedAvg and its server-optimizer and proximal variants.

* FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks
  from Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.
* FedAvgM, FedAdagrad, FedAdam, FedYogi: the same clients with another server
  optimizer (Hsu et al. 2019; Reddi et al., ICLR 2021,
  https://arxiv.org/abs/2003.00295); see `fedjax_ext.server`.
* FedProx: local SGD on loss + (mu/2)||w - w_global||^2 (Li et al.,
  MLSys 2020, https://arxiv.org/abs/1812.06127).

Each is one `core.federated_algorithm` call: no algorithm forks the round.
"""

from typing import Callable

import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core


def fed_avg(loss_fn: clients.LossFn,
            client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation, *,
            prox_mu: float = 0.,
            aggregator: core.Aggregator | None = None,
            weighting: str = 'examples',
            unroll: int | bool | str = 'auto',
            extra_metrics: Callable[..., core.Metrics] | None = None,
            execution: str = 'auto',
            chunk_size: int | None = None) -> core.FederatedAlgorithm:
  """FedAvg-family algorithm: local SGD, aggregation, server optimizer.

  Args:
    loss_fn: masked mean loss of one batch (`clients.LossFn`).
    client_optimizer: the local optimizer, e.g. ``optax.sgd(0.1)``.
    server_optimizer: applied to the aggregated pseudo-gradient;
      ``optax.sgd(1.0)`` is plain FedAvg (`server.server_optimizer`).
    prox_mu: FedProx's mu (0 gives FedAvg).
    aggregator: defaults to `aggregators.weighted_mean`.
    weighting: client weights, ``'examples'`` or ``'uniform'``.
    unroll: unroll of the local-step scan (`clients.train_locally`).
    extra_metrics: optional round-metrics hook, e.g. `drift.drift_metrics()`
      (`core.federated_algorithm`).
    execution: client mapping strategy (`core.map_clients`).
    chunk_size: clients per chunk for ``execution='chunked'``.

  Returns:
    A stateless-client `core.FederatedAlgorithm`.
  """
  client_update = clients.local_sgd(loss_fn, client_optimizer,
                                    prox_mu=prox_mu, weighting=weighting,
                                    unroll=unroll)
  return core.federated_algorithm(
      client_update, aggregator or aggregators.weighted_mean(),
      server_optimizer, execution=execution, chunk_size=chunk_size)
