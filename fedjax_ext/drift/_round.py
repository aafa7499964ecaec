r"""Drift measured inside the jitted round, for any `FederatedAlgorithm`.

Two composable pieces:

* `drift_metrics(select=None)`: the ``extra_metrics`` hook of
  `core.federated_algorithm`, ``(outputs, aggregate, state) -> metrics``,
  computing `update_metrics` from the stacked client updates and their
  aggregation weights (after the round's weighting stage). Every builder
  (`algorithms.fed_avg`, `algorithms.scaffold`,
  `algorithms.create_algorithm`) forwards ``extra_metrics=`` to the round,
  so the metrics are computed where the updates are and are never stored
  in any state.
* `instrument(algorithm, loss_fn, ...)`: wraps ``apply`` so that the same
  jitted round also maps `client_gradient_stats` over the cohort at the
  global model (gradient dissimilarity, gradient noise) and logs the drift
  bound of `drift_bound` beside the measured drift.

Why a second mapped pass rather than a client update that also returns its
gradient: the builders close over their client update (SCAFFOLD's is
private), so a client-side wrapper cannot reach every algorithm without
forking it; the gradient at the global model does not depend on the local
trajectory, so computing it in the same round from the same batches and
keys gives the same numbers at the same cost (one forward/backward per
batch) and works unchanged for FedAvg, FedProx, SCAFFOLD, FedAdam and any
later algorithm. It also keeps gradient pytrees out of
`ClientOutput.metrics`, which `core.round_metrics` averages as scalars.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext._src.checks import check_number
from fedjax_ext.core import Metrics, Params, PRNGKey, PyTree
from fedjax_ext.drift import _metrics

SelectFn = Callable[[PyTree], PyTree]


class GradientStats(NamedTuple):
  """One client's gradient statistics at the global model."""
  grad: PyTree  # Full-local-data gradient g_i, shaped like the params.
  noise_var: jax.Array  # float32: sigma_i^2, variance of a batch gradient.
  num_steps: jax.Array  # float32: batches holding a real example (K_i).
  num_examples: jax.Array  # float32: real examples in the batches.


def _check_fns(loss_fn, select) -> None:
  if not callable(loss_fn):
    raise TypeError(f'loss_fn must be callable (params, batch, key) -> '
                    f'(loss, metrics), got {loss_fn!r}.')
  if select is not None and not callable(select):
    raise TypeError(f'select must be None or callable (params_like -> '
                    f'subtree), got {select!r}.')


def client_gradient_stats(loss_fn: clients.LossFn, *,
                          select: SelectFn | None = None):
  r"""``fn(params, batches [S, B, ...], key) -> GradientStats`` of ONE client.

  With per-batch gradients :math:`g_s` of the masked-mean loss and the real
  example counts :math:`n_s` of the S batches,
  :math:`g_i = \sum_s n_s g_s / \sum_s n_s` is exactly the gradient of the
  client's mean loss over every example in its batches, and
  :math:`\sigma_i^2 = \sum_{s \in A} \|g_s - g_i\|^2 / (|A| - 1)` over its
  active batches A (0 when |A| < 2) estimates the variance of one local SGD
  step's gradient at the global model. Batch s uses ``fold_in(key, s)`` as
  `clients.train_locally` does. `select` (see `drift_metrics`) keeps part
  of each gradient before any statistic is taken.
  """

  _check_fns(loss_fn, select)

  def stats_fn(params: Params, batches: dict[str, jax.Array],
               key: PRNGKey) -> GradientStats:
    num_steps, _ = clients.check_batches(batches)
    grad_fn = jax.grad(lambda p, b, k: loss_fn(p, b, k)[0])

    def one_batch(inputs):
      s, batch = inputs
      grad = grad_fn(params, batch, jax.random.fold_in(key, s))
      return grad if select is None else select(grad)

    per_batch = jax.lax.map(one_batch, (jnp.arange(num_steps), batches))
    counts = jnp.sum(batches['mask'], axis=1)
    total = jnp.sum(counts)
    grad = core.tree_weighted_mean(per_batch, counts)
    flat = _metrics.flatten_clients(per_batch)
    flat_mean = _metrics.flatten_clients(
        jax.tree.map(lambda g: g[None], grad))[0]
    active = counts > 0
    num_active = jnp.sum(active.astype(jnp.float32))
    dev = jnp.sum(jnp.where(active, jnp.sum(jnp.square(flat - flat_mean),
                                            axis=1), 0.))
    noise_var = jnp.where(num_active > 1, dev / jnp.maximum(num_active - 1,
                                                            1.), 0.)
    return GradientStats(grad, noise_var, num_active, total)

  return stats_fn


def drift_metrics(select: SelectFn | None = None) -> core.ExtraMetricsFn:
  """The ``extra_metrics`` hook of `core.federated_algorithm` for drift.

  Pass it to any builder (``algorithms.fed_avg(..., extra_metrics=
  drift.drift_metrics())``, `algorithms.scaffold`,
  `algorithms.create_algorithm`) or to `core.federated_algorithm`.

  Args:
    select: optional ``fn(params_like) -> subtree`` restricting the metrics
      to part of the parameters (e.g. `isr.backbone`, so that runs with and
      without auxiliary heads measure drift in the same space). It is
      applied to the stacked updates [C, ...], which have the params' tree
      structure.

  Returns:
    ``fn(outputs, aggregate, state) -> metrics``: `update_metrics` of the
    stacked ``outputs.update`` (the part `select` keeps) with
    ``outputs.weight``, the aggregation weights the round's weighting stage
    set. Nothing is stored.

  Examples:
    >>> import optax
    >>> from fedjax_ext import algorithms, drift
    >>> loss = lambda p, b, k: ((p['w'] * b['mask']).sum(), {'accuracy': 0.})
    >>> algorithm = algorithms.fed_avg(
    ...     loss, optax.sgd(0.1), optax.sgd(1.0),
    ...     extra_metrics=drift.drift_metrics())
  """
  if select is not None and not callable(select):
    raise TypeError(f'select must be None or callable (params_like -> '
                    f'subtree), got {select!r}.')

  def metrics_fn(outputs: core.ClientOutput, aggregate: PyTree,
                 state: core.ServerState) -> Metrics:
    del aggregate, state
    updates = outputs.update if select is None else select(outputs.update)
    return _metrics.update_metrics(updates, outputs.weight)

  return metrics_fn


def _client_weights(stats: GradientStats, cohort: core.Cohort,
                   weighting: str = 'num_examples') -> jax.Array:
  r"""The drift weights :math:`w_i` [C], as the round's weighting sets them.

  Mirrors `core.weigh_clients` so that :math:`p_i = w_i / \sum_j w_j` in
  :math:`\zeta^2` and the bound are the weights of the measured drift
  (`drift_metrics` reads the round's ``outputs.weight``): a client whose
  batches hold no real example gets 0, the others get

  * ``'num_examples'``: :math:`n_k`, ``cohort.num_examples``;
  * ``'examples_processed'``: the real examples in its batches;
  * ``'uniform'``: 1.
  """
  core.check_weighting(weighting)
  processed = stats.num_examples
  if weighting == 'examples_processed':
    return processed
  value = (jnp.asarray(cohort.num_examples, jnp.float32)
           if weighting == 'num_examples' else jnp.ones_like(processed))
  return jnp.where(processed > 0, value, 0.).astype(jnp.float32)


def instrument(algorithm: core.FederatedAlgorithm, loss_fn: clients.LossFn,
               *, learning_rate: float, weighting: str = 'num_examples',
               select: SelectFn | None = None,
               execution: core.Execution | str | None = None
               ) -> core.FederatedAlgorithm:
  r"""Adds gradient dissimilarity and the drift bound to every round.

  Before the wrapped round, `client_gradient_stats` runs over the cohort at
  ``state.params`` (the global model the clients start from) with the
  clients' own keys (`core.client_keys`); the round's metrics gain
  'zeta_sq', 'b_dissimilarity_sq', 'grad_sq_norm', 'noise_var'
  (:math:`\sum_i p_i\sigma_i^2`) and 'drift_bound' (`drift_bound`). When
  the round also reports 'drift_sq_dist' (build it with
  ``extra_metrics=drift_metrics(...)``), 'drift_bound_ratio' = measured /
  bound is added. Nothing is read from or written to the state.

  Args:
    algorithm: any `core.FederatedAlgorithm` whose ``state.params`` is the
      model the clients start from and whose ``apply`` takes a
      `core.Cohort`.
    loss_fn: the clients' local loss (with ISR, the ISR loss).
    learning_rate: the clients' local SGD step :math:`\eta`.
    weighting: the round's weighting (`core.WEIGHTINGS`; pass the one the
      algorithm was built with): :math:`p_i \propto n_k` for
      ``'num_examples'`` (the default of every builder), the real examples
      in the batches for ``'examples_processed'``, equal for
      ``'uniform'``.
    select: optional ``fn(params_like) -> subtree``: gradients (and so
      :math:`\zeta^2`, :math:`\sigma^2` and the bound) of that part only;
      pass the same `select` to `drift_metrics`.
    execution: the run's `core.Execution` policy, for mapping the gradient
      pass over the clients (`core.map_clients`).

  Returns:
    The same algorithm (``init``, ``init_client_state``, ``model_params``)
    whose ``apply`` adds the metrics.
  """
  if not callable(getattr(algorithm, 'apply', None)):
    raise TypeError(f'algorithm must be a core.FederatedAlgorithm, got '
                    f'{type(algorithm).__name__}.')
  check_number('learning_rate', learning_rate, low=0, low_open=True)
  core.check_weighting(weighting)
  execution = core.as_execution(execution)
  stats_fn = client_gradient_stats(loss_fn, select=select)

  def apply(state, client_store, cohort, key):
    keys = core.client_keys(key, state.round, cohort.client_ids)
    stats = core.map_clients(stats_fn, state.params, cohort.batches, keys,
                             in_axes=(None, 0, 0), execution=execution)
    new_state, client_store, metrics = algorithm.apply(
        state, client_store, cohort, key)
    metrics = dict(metrics)
    weights = _client_weights(stats, cohort, weighting)
    metrics.update(_metrics.gradient_dissimilarity(stats.grad, weights))
    grad_sq = jnp.sum(jnp.square(_metrics.flatten_clients(stats.grad)),
                      axis=1)
    p = _metrics.normalized_weights(weights)
    metrics['noise_var'] = p @ stats.noise_var
    bound = _metrics.drift_bound(learning_rate, stats.num_steps,
                                 stats.noise_var, grad_sq, weights)
    metrics['drift_bound'] = bound
    if 'drift_sq_dist' in metrics:
      metrics['drift_bound_ratio'] = metrics['drift_sq_dist'] / jnp.maximum(
          bound, 1e-30)
    return new_state, client_store, metrics

  return algorithm._replace(apply=apply)
