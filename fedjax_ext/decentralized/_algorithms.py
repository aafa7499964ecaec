r"""First-order decentralized methods: D-PSGD, DFedAvg(M), gradient tracking.

Each is a node update plus a mixing rule on `decentralized_algorithm`; all
use the adapt-then-combine order (local computation, then one gossip step
with this round's :math:`W^{(t)}`), one communication per round:

* D-PSGD: :math:`x_i \leftarrow \sum_j W_{ij}(x_j - \eta g_j(x_j))`, one
  stochastic gradient per round (Lian et al., "Can Decentralized Algorithms
  Outperform Centralized Algorithms?", NeurIPS 2017,
  https://arxiv.org/abs/1705.09056, write the combine-then-adapt order
  :math:`W x - \eta g`; the adapt-then-combine form is the D-SGD of
  Koloskova et al., ICML 2020, https://arxiv.org/abs/2003.10422, with the
  same rates).
* DFedAvg: K local optimizer steps from :math:`x_i`, then gossip (Sun, Li
  and Wang, "Decentralized Federated Averaging", IEEE TPAMI 2022,
  https://arxiv.org/abs/2104.11375). On the complete graph with uniform
  weights it is FedAvg with full participation.
* DFedAvgM: DFedAvg whose local steps are heavy-ball SGD,
  :math:`y^{k+1} = y^k - \eta g(y^k) + \beta (y^k - y^{k-1})` with
  :math:`y^{-1} = y^0 = x_i` (momentum restarted each round), i.e.
  ``optax.sgd(lr, momentum=beta)`` (same paper).
* Gradient tracking (DSGT): each node also holds a tracker :math:`y_i` of
  the network's average gradient,

  .. math:: x^{t+1} = W (x^t - \eta y^t), \qquad
     y^{t+1} = W y^t + g(x^{t+1}) - g(x^t),

  (Pu and Nedić, "Distributed Stochastic Gradient Tracking Methods", Math.
  Programming 2021, https://arxiv.org/abs/1805.11454; Koloskova, Lin and
  Stich, "An Improved Analysis of Gradient Tracking for Decentralized
  Machine Learning", NeurIPS 2021, https://arxiv.org/abs/2202.03836).
  Mixing x and y in one round needs :math:`g(x^{t+1})` after the gossip;
  the node computes it at the start of the next round instead: its row is
  ``{'x', 'y', 'g'}`` with y the mixed tracker still missing the
  correction and g the previous gradient, and the round does
  ``g' = g(x); y <- y + g' - g; x <- x - lr y; g <- g'``, then gossips x
  and y (g stays on the node). With ``y = g = 0`` at init the first round
  sets :math:`y^0 = g(x^0)`. Unlike D-PSGD, whose fixed point with a
  constant step is biased by the nodes' heterogeneity, it converges to
  the global minimiser with deterministic gradients.

D-PSGD and gradient tracking take ONE gradient per round, the example-
weighted mean over all the round's batches [S, B] (`round_gradient`, run
by `clients.run_local_steps`: padding batches are skipped); DFedAvg(M)
take one optimizer step per batch.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext._src.checks import check_number
from fedjax_ext.decentralized import _round


def round_gradient(loss_fn: clients.LossFn, params, batches, key, *,
                   unroll='auto'):
  """The mean gradient at `params` over all of a node's batches [S, B].

  Uses `clients.run_local_steps` with a step that keeps the params and
  accumulates ``count * grad`` (so padding batches are skipped and each
  real example weighs the same).

  Returns:
    (gradient, `clients.LocalStats` of the round).
  """
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(p, total, batch, step_key):
    (loss, metrics), grads = value_and_grad(p, batch, step_key)
    count = jnp.sum(batch['mask'])
    total = jax.tree.map(lambda t, g: t + count * g, total, grads)
    return p, total, loss, metrics, ()

  run = clients.run_local_steps(params, jax.tree.map(jnp.zeros_like, params),
                                batches, key, accumulate, unroll=unroll)
  seen = jnp.maximum(run.stats.num_examples, 1.)
  return jax.tree.map(lambda t: t / seen, run.opt_state), run.stats


def _one_step_metrics(stats: clients.LocalStats) -> dict:
  metrics = clients.stats_metrics(stats)
  metrics['local_steps'] = (stats.num_examples > 0).astype(jnp.float32)
  return metrics


def d_psgd(loss_fn: clients.LossFn, lr: float, topology, *,
           mixing: str = 'auto',
           execution: core.Execution | str | None = None
           ) -> core.FederatedAlgorithm:
  r"""D-PSGD: one SGD step per node, then one gossip step.

  :math:`x_i \leftarrow \sum_j W^{(t)}_{ij} (x_j - \eta\, g_j)`, with
  :math:`g_j` node j's mean gradient over its round's batches
  (`round_gradient`).

  Args:
    loss_fn: masked mean loss of one batch (`clients.LossFn`).
    lr: the step size :math:`\eta \ge 0`.
    topology: a `topology.Topology` of N nodes.
    mixing: ``'auto'``, ``'sparse'`` or ``'dense'`` (`decentralized_algorithm`).
    execution: the run's `core.Execution`.

  Returns:
    A `core.FederatedAlgorithm`; the store holds each node's params.
  """
  lr = check_number('lr', lr, low=0)
  clients.check_update_args(loss_fn, optax.sgd(lr))
  execution = core.as_execution(execution)

  def node_update(message, params, batches, key, info):
    del message, info
    grads, stats = round_gradient(loss_fn, params, batches, key,
                                  unroll=execution.unroll)
    new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return core.ClientOutput(update=(), weight=stats.num_examples,
                             client_state=new,
                             metrics=_one_step_metrics(stats))

  return _round.decentralized_algorithm(node_update, topology, mixing=mixing,
                                        execution=execution)


def dfedavg(loss_fn: clients.LossFn,
            client_optimizer: optax.GradientTransformation, topology, *,
            mixing: str = 'auto',
            execution: core.Execution | str | None = None
            ) -> core.FederatedAlgorithm:
  r"""DFedAvg: local steps on every node, then one gossip step.

  Node i runs `clients.local_sgd` (one optimizer step per batch of its
  cohort row, optimizer state fresh each round) from :math:`x_i` to
  :math:`z_i`, then :math:`x_i \leftarrow \sum_j W^{(t)}_{ij} z_j`.

  Args:
    loss_fn: masked mean loss of one batch.
    client_optimizer: the local optimizer, e.g. ``optax.sgd(0.1)``.
    topology: a `topology.Topology` of N nodes.
    mixing, execution: as `d_psgd`.

  Returns:
    A `core.FederatedAlgorithm`; the store holds each node's params.
  """
  execution = core.as_execution(execution)
  local = clients.local_sgd(loss_fn, client_optimizer,
                            unroll=execution.unroll)

  def node_update(message, params, batches, key, info):
    del message
    out = local(params, (), batches, key, info)
    new = jax.tree.map(jnp.subtract, params, out.update)
    return out._replace(update=(), client_state=new)

  return _round.decentralized_algorithm(node_update, topology, mixing=mixing,
                                        execution=execution)


def dfedavgm(loss_fn: clients.LossFn, lr: float, topology, *,
             beta: float = 0.9, mixing: str = 'auto',
             execution: core.Execution | str | None = None
             ) -> core.FederatedAlgorithm:
  r"""DFedAvgM: DFedAvg with local heavy-ball momentum `beta`.

  The local steps are ``optax.sgd(lr, momentum=beta)`` restarted each
  round (Sun et al.'s :math:`y^{-1} = y^0 = x_i`); ``beta = 0`` is
  `dfedavg` with ``optax.sgd(lr)``.

  Args:
    loss_fn: masked mean loss of one batch.
    lr: local step size >= 0.
    topology: a `topology.Topology` of N nodes.
    beta: momentum in [0, 1).
    mixing, execution: as `d_psgd`.
  """
  lr = check_number('lr', lr, low=0)
  beta = check_number('beta', beta, low=0, high=1, high_open=True)
  optimizer = optax.sgd(lr, momentum=beta) if beta else optax.sgd(lr)
  return dfedavg(loss_fn, optimizer, topology, mixing=mixing,
                 execution=execution)


def gradient_tracking(loss_fn: clients.LossFn, lr: float, topology, *,
                      mixing: str = 'auto',
                      execution: core.Execution | str | None = None
                      ) -> core.FederatedAlgorithm:
  r"""Gradient tracking (DSGT): gossip the model and a gradient tracker.

  See the module docstring for the recursion and the row layout
  ``{'x': params, 'y': tracker, 'g': last gradient}``; x and y are gossiped
  (``gossip_bytes_per_node`` counts both), ``model_params`` averages x.

  Args:
    loss_fn: masked mean loss of one batch.
    lr: the step size :math:`\eta \ge 0`.
    topology: a `topology.Topology` of N nodes.
    mixing, execution: as `d_psgd`.
  """
  lr = check_number('lr', lr, low=0)
  clients.check_update_args(loss_fn, optax.sgd(lr))
  execution = core.as_execution(execution)

  def init_node(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {'x': params, 'y': zeros, 'g': zeros}

  def node_update(message, row, batches, key, info):
    del message, info
    grads, stats = round_gradient(loss_fn, row['x'], batches, key,
                                  unroll=execution.unroll)
    # A node that saw no example keeps its tracker (its gradient is 0).
    seen = stats.num_examples > 0
    grads = jax.tree.map(lambda g, old: jnp.where(seen, g, old), grads,
                         row['g'])
    tracker = jax.tree.map(lambda y, g, old: y + g - old, row['y'], grads,
                           row['g'])
    x = jax.tree.map(lambda p, y: p - lr * y, row['x'], tracker)
    return core.ClientOutput(update=(), weight=stats.num_examples,
                             client_state={'x': x, 'y': tracker, 'g': grads},
                             metrics=_one_step_metrics(stats))

  return _round.decentralized_algorithm(
      node_update, topology, init_node=init_node,
      mix_rule=_round.mix_fields(('x', 'y')),
      node_model=lambda rows: rows['x'], mixing=mixing, execution=execution)
