r"""SCAFFOLD: stochastic controlled averaging.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, https://arxiv.org/abs/1910.06378, Algorithm 1 with
option II for the control update. Client i with control :math:`c_i` and the
server control :math:`c` runs K local SGD steps of size :math:`\eta_l` on the
corrected gradient

.. math:: y \leftarrow y - \eta_l (g_i(y) - c_i + c),

then sets :math:`c_i^+ = c_i - c + (x - y) / (K \eta_l)` and uploads
:math:`x - y` and :math:`c_i^+ - c_i`. The server applies its optimizer to
the aggregated :math:`x - y` and sets
:math:`c \leftarrow c + \frac{1}{N} \sum_{i \in S} (c_i^+ - c_i)`.

Each client's :math:`c_i` lives in the client-indexed store (leaves
[N, ...]), not in `ServerState`, so checkpoints of the server params stay
the size of the model. K is the client's own count of steps that saw data
(clients of different sizes differ); a client with K = 0 keeps its control.
With all controls at zero the first round is exactly FedAvg's.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core


def scaffold(loss_fn: clients.LossFn, client_learning_rate: float,
             server_optimizer: optax.GradientTransformation, *,
             num_clients: int,
             aggregator: core.Aggregator | None = None,
             weighting: str = 'num_examples',
             transform_outputs: core.TransformOutputsFn | None = None,
             extra_metrics: core.ExtraMetricsFn | None = None,
             execution: core.Execution | str | None = None
             ) -> core.FederatedAlgorithm:
  """SCAFFOLD with plain local SGD (the paper's client optimizer).

  Args:
    loss_fn: masked mean loss of one batch.
    client_learning_rate: local SGD step size :math:`\\eta_l` > 0.
    server_optimizer: applied to the aggregated pseudo-gradient.
    num_clients: N, all clients of the federation (for the c update).
    aggregator, weighting, transform_outputs, extra_metrics, execution: as
      `fed_avg`.

  Returns:
    A `core.FederatedAlgorithm` whose client state is :math:`c_i`, whose
    clients upload :math:`\\Delta c_i` as ``aux`` and whose
    ``algorithm_state`` is the server control :math:`c`.
  """
  if not client_learning_rate > 0:
    raise ValueError('client_learning_rate must be > 0, got '
                     f'{client_learning_rate}.')
  if not (isinstance(num_clients, int) and num_clients >= 1):
    raise ValueError(f'num_clients must be an integer >= 1, got '
                     f'{num_clients!r}.')
  execution = core.as_execution(execution)
  optimizer = optax.sgd(client_learning_rate)

  def client_update(message, control, batches, key, info=None):
    del info
    params, server_control = message
    offset = jax.tree.map(jnp.subtract, server_control, control)
    local, stats = clients.train_locally(
        params, batches, key, loss_fn=loss_fn, optimizer=optimizer,
        gradient_offset=offset, unroll=execution.unroll)
    update = jax.tree.map(jnp.subtract, params, local)
    scale = 1. / (jnp.maximum(stats.num_steps, 1.) * client_learning_rate)
    new_control = jax.tree.map(
        lambda ci, c, u: jnp.where(stats.num_steps > 0, ci - c + scale * u,
                                   ci),
        control, server_control, update)
    return core.ClientOutput(
        update=update,
        weight=stats.num_examples,
        client_state=new_control,
        metrics=clients.stats_metrics(stats),
        aux=jax.tree.map(jnp.subtract, new_control, control))

  def update_server_control(server_control, outputs):
    return jax.tree.map(lambda c, d: c + jnp.sum(d, axis=0) / num_clients,
                        server_control, outputs.aux)

  return core.federated_algorithm(
      client_update, aggregator or aggregators.weighted_mean(),
      core.with_algorithm_state(core.as_server_update(server_optimizer),
                                update_server_control),
      weighting=weighting,
      init_client_state=optax.tree.zeros_like,
      init_algorithm_state=optax.tree.zeros_like,
      server_message=lambda state: (state.params, state.algorithm_state),
      transform_outputs=transform_outputs,
      extra_metrics=extra_metrics, execution=execution)
