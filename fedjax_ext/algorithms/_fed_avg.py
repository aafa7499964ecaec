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

import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core


def fed_avg(loss_fn: clients.LossFn,
            client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation
            | core.ServerUpdate, *,
            prox_mu: float = 0.,
            aggregator: core.Aggregator | None = None,
            weighting: str = 'num_examples',
            transform_outputs: core.TransformOutputsFn | None = None,
            extra_metrics: core.ExtraMetricsFn | None = None,
            execution: core.Execution | str | None = None
            ) -> core.FederatedAlgorithm:
  """FedAvg-family algorithm: local SGD, aggregation, server optimizer.

  Args:
    loss_fn: masked mean loss of one batch (`clients.LossFn`).
    client_optimizer: the local optimizer, e.g. ``optax.sgd(0.1)``.
    server_optimizer: applied to the aggregated pseudo-gradient;
      ``optax.sgd(1.0)`` is plain FedAvg (`server.server_optimizer`), or
      any `core.ServerUpdate`.
    prox_mu: FedProx's mu (0 gives FedAvg).
    aggregator: defaults to `aggregators.weighted_mean`.
    weighting: client weights (`core.weigh_clients`): ``'num_examples'``
      (dataset size n_k, McMahan et al.'s and FedJAX's), 
      ``'examples_processed'`` or ``'uniform'``.
    transform_outputs: optional hook on the stacked outputs before
      aggregation (`core.federated_algorithm`), e.g. an attack.
    extra_metrics: optional round-metrics hook, e.g. `drift.drift_metrics()`.
    execution: the run's `core.Execution` policy (client mapping, chunk
      size, unroll of the local steps).

  Returns:
    A stateless-client `core.FederatedAlgorithm`.
  """
  execution = core.as_execution(execution)
  client_update = clients.local_sgd(loss_fn, client_optimizer,
                                    prox_mu=prox_mu,
                                    unroll=execution.unroll)
  return core.federated_algorithm(
      client_update, aggregator or aggregators.weighted_mean(),
      server_optimizer, weighting=weighting,
      transform_outputs=transform_outputs, extra_metrics=extra_metrics,
      execution=execution)
