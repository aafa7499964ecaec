r"""Client drift, update dispersion and gradient dissimilarity, and a bound.

Pure, jittable functions of the cohort's stacked client quantities (pytrees
whose leaves carry a leading client axis [C, ...]) and their weights [C].
With normalized weights :math:`p_i = w_i / \sum_j w_j` over the clients that
trained (:math:`w_i > 0`) and client updates
:math:`\Delta_i = x - x_i^K` (the pseudo-gradients of `core.ClientOutput`):

* drift to the global model, the left side of the bound below:
  :math:`D = \sum_i p_i \|\Delta_i\|^2 = \sum_i p_i \|x_i^K - x\|^2`;
* mean client drift :math:`\frac{1}{|A|}\sum_{i \in A}
  \|\Delta_i - \bar\Delta\|^2` over the active clients A, with
  :math:`\bar\Delta = \sum_i p_i \Delta_i` the aggregate the server uses;
* update variance :math:`\sum_i p_i \|\Delta_i - \bar\Delta\|^2` (the trace of
  the weighted covariance of the updates) and its ratio to
  :math:`\|\bar\Delta\|^2`;
* cosine of each :math:`\Delta_i` to :math:`\bar\Delta` (mean and min over A).

From per-client full-local-data gradients :math:`g_i = \nabla f_i(x)` at the
global model, with :math:`\nabla f(x) = \sum_i p_i g_i`:

* gradient dissimilarity :math:`\zeta^2 = \sum_i p_i \|g_i - \nabla f(x)\|^2`
  (:math:`\sigma_g^2` of Reddi et al. 2021, :math:`G^2` with B = 1 in
  Karimireddy et al. 2020);
* B-local dissimilarity (Li et al., FedProx, Definition 3)
  :math:`B^2 = \sum_i p_i \|g_i\|^2 / \|\nabla f(x)\|^2 = 1 + \zeta^2 /
  \|\nabla f(x)\|^2`.

**The drift bound.** Reddi et al., "Adaptive Federated Optimization",
ICLR 2021 (https://arxiv.org/abs/2003.00295), Lemma 3 (the FedAvg client
drift lemma, the same argument as Karimireddy et al., "SCAFFOLD", ICML 2020,
https://arxiv.org/abs/1910.06378, Lemma 8 / Appendix D): for L-smooth
:math:`f_i`, stochastic gradients of variance at most :math:`\sigma^2` and a
local step :math:`\eta \le 1/(8LK)`, every local iterate of K plain SGD
steps satisfies

.. math::
  \sum_i p_i \mathbb{E}\|x_i^k - x\|^2 \le 5K\eta^2\sigma^2
  + 30K^2\eta^2\zeta^2 + 30K^2\eta^2\|\nabla f(x)\|^2
  \le 30\,\eta^2K^2(\sigma^2 + \zeta^2 + \|\nabla f(x)\|^2),

the issue's :math:`c\,\eta^2K^2(\sigma^2+\zeta^2)` form with c = 30 plus the
full-gradient term the lemma carries (Reddi et al. write it per coordinate,
:math:`5K\eta_l^2\sum_j(\sigma_{l,j}^2 + 6K\sigma_{g,j}^2) +
30K^2\eta_l^2\|\nabla f(x_t)\|^2`, for the local iterates
:math:`k < K`; the unrolled recursion of its proof gives the same bound at
k = K, which is the iterate measured here: our reading, not checked
against the PDF in this session). The same proof run for one client
gives :math:`\mathbb{E}\|x_i^K - x\|^2 \le 5K_i\eta^2\sigma_i^2 +
30K_i^2\eta^2\|g_i\|^2`; `drift_bound` averages these per-client bounds with
the weights :math:`p_i`, which is the displayed form exactly when all
:math:`K_i = K` and :math:`\sigma_i = \sigma`, because
:math:`\sum_i p_i\|g_i\|^2 = \zeta^2 + \|\nabla f(x)\|^2`. In a run,
:math:`\sigma_i^2, g_i` are estimates at the global model from the client's
own batches (`client_gradient_stats`) and the step condition is not checked
(L is unknown), so the logged bound is an estimate, not a certificate; it is
a theorem only for plain-SGD clients (FedAvg, FedAdam, ...), not for
FedProx's or SCAFFOLD's corrected local steps.
"""

import numbers

import jax
import jax.numpy as jnp

from fedjax_ext._src.checks import check_number

from fedjax_ext.core import Metrics, PyTree

# The names `update_metrics` returns.
UPDATE_METRICS = ('drift_sq_dist', 'client_drift', 'update_variance',
                  'relative_update_variance', 'update_cosine_mean',
                  'update_cosine_min', 'mean_update_sq_norm')
# The constants of Reddi et al. 2021, Lemma 3.
NOISE_CONSTANT = 5.
DISSIMILARITY_CONSTANT = 30.


def _num_clients(name: str, stacked: PyTree) -> int:
  """C, the common leading axis of `stacked`'s leaves, else a ValueError."""
  shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(stacked)]
  if not shapes or any(not s for s in shapes) or len(
      {s[0] for s in shapes}) != 1:
    raise ValueError(f'{name} must be a non-empty pytree whose leaves share a '
                     f'leading client axis [C, ...], got leaf shapes '
                     f'{shapes}.')
  return shapes[0][0]


def _check_client_vector(name: str, values, num_clients: int | None) -> None:
  """A ValueError naming `name` unless it is [C] (C = `num_clients`)."""
  shape = jnp.shape(values)
  if len(shape) != 1 or (num_clients is not None and
                         shape[0] != num_clients):
    expected = f'[{num_clients}]' if num_clients is not None else '[C]'
    raise ValueError(f'{name} must be one value per client, shape '
                     f'{expected}, got shape {shape}.')


def flatten_clients(stacked: PyTree) -> jax.Array:
  """Stacked pytree [C, ...] -> one float32 matrix [C, P]."""
  num_clients = _num_clients('stacked', stacked)
  leaves = jax.tree.leaves(stacked)
  return jnp.concatenate(
      [leaf.reshape(num_clients, -1).astype(jnp.float32) for leaf in leaves],
      axis=1)


def normalized_weights(weights: jax.Array) -> jax.Array:
  """:math:`p_i = w_i / \\sum_j w_j`; all zeros when every weight is 0."""
  _check_client_vector('weights', weights, None)
  weights = jnp.asarray(weights, jnp.float32)
  total = jnp.sum(weights)
  return weights / jnp.where(total > 0, total, 1.)


def _active_mean(values: jax.Array, active: jax.Array) -> jax.Array:
  count = jnp.sum(active)
  return jnp.sum(jnp.where(active, values, 0.)) / jnp.maximum(count, 1.)


def update_metrics(updates: PyTree, weights: jax.Array, *,
                   eps: float = 1e-12) -> Metrics:
  r"""Drift and dispersion of the stacked client updates (module doc).

  Args:
    updates: client updates :math:`\Delta_i`, leaves [C, ...].
    weights: aggregation weights [C] (clients of weight 0 are ignored).
    eps: guards norms in the cosines.

  Returns:
    Scalars 'drift_sq_dist' (D), 'client_drift', 'update_variance',
    'relative_update_variance', 'update_cosine_mean', 'update_cosine_min' and
    'mean_update_sq_norm' (:math:`\|\bar\Delta\|^2`).
  """
  _check_client_vector('weights', weights, _num_clients('updates', updates))
  check_number('eps', eps, low=0, low_open=True)
  deltas = flatten_clients(updates)
  p = normalized_weights(weights)
  active = p > 0
  mean = p @ deltas
  dev_sq = jnp.sum(jnp.square(deltas - mean), axis=1)
  sq_norms = jnp.sum(jnp.square(deltas), axis=1)
  mean_sq = jnp.sum(jnp.square(mean))
  variance = p @ dev_sq
  cosines = (deltas @ mean) / jnp.maximum(
      jnp.sqrt(sq_norms) * jnp.sqrt(mean_sq), eps)
  return {
      'drift_sq_dist': p @ sq_norms,
      'client_drift': _active_mean(dev_sq, active),
      'update_variance': variance,
      'relative_update_variance': variance / jnp.maximum(mean_sq, eps),
      'update_cosine_mean': _active_mean(cosines, active),
      'update_cosine_min': jnp.where(
          jnp.any(active), jnp.min(jnp.where(active, cosines, jnp.inf)), 0.),
      'mean_update_sq_norm': mean_sq,
  }


def gradient_dissimilarity(grads: PyTree, weights: jax.Array) -> Metrics:
  r""":math:`\zeta^2`, :math:`B^2` and :math:`\|\nabla f(x)\|^2`.

  Args:
    grads: per-client full-local-data gradients at the global model,
      leaves [C, ...].
    weights: client weights [C] (0 ignores a client).

  Returns:
    'zeta_sq', 'b_dissimilarity_sq' (inf when :math:`\nabla f(x) = 0` and
    some :math:`g_i \ne 0`, 1 when all vanish) and 'grad_sq_norm'.
  """
  _check_client_vector('weights', weights, _num_clients('grads', grads))
  g = flatten_clients(grads)
  p = normalized_weights(weights)
  mean = p @ g
  mean_sq = jnp.sum(jnp.square(mean))
  zeta_sq = p @ jnp.sum(jnp.square(g - mean), axis=1)
  second_moment = p @ jnp.sum(jnp.square(g), axis=1)
  b_sq = jnp.where(mean_sq > 0, second_moment / jnp.where(
      mean_sq > 0, mean_sq, 1.), jnp.where(second_moment > 0, jnp.inf, 1.))
  return {'zeta_sq': zeta_sq, 'b_dissimilarity_sq': b_sq,
          'grad_sq_norm': mean_sq}


def drift_bound(learning_rate: jax.typing.ArrayLike, num_steps: jax.Array,
                noise_var: jax.Array, grad_sq_norms: jax.Array,
                weights: jax.Array) -> jax.Array:
  r"""The weighted per-client local-SGD drift bound (module doc).

  .. math:: \sum_i p_i \left(5K_i\eta^2\sigma_i^2
    + 30K_i^2\eta^2\|g_i\|^2\right)

  Args:
    learning_rate: the local SGD step :math:`\eta`.
    num_steps: :math:`K_i`, local steps each client took, [C].
    noise_var: :math:`\sigma_i^2`, each client's stochastic-gradient
      variance, [C].
    grad_sq_norms: :math:`\|g_i\|^2`, [C].
    weights: client weights [C].

  Returns:
    The scalar bound on :math:`\sum_i p_i \|x_i^K - x\|^2`.
  """
  if isinstance(learning_rate, numbers.Real):  # Traced rates unchecked.
    check_number('learning_rate', learning_rate, low=0, low_open=True)
  num_clients = jnp.shape(weights)[0] if jnp.ndim(weights) == 1 else None
  for name, values in (('weights', weights), ('num_steps', num_steps),
                       ('noise_var', noise_var),
                       ('grad_sq_norms', grad_sq_norms)):
    _check_client_vector(name, values, num_clients)
  p = normalized_weights(weights)
  eta_sq = jnp.square(jnp.asarray(learning_rate, jnp.float32))
  k = jnp.asarray(num_steps, jnp.float32)
  per_client = eta_sq * (NOISE_CONSTANT * k * noise_var
                         + DISSIMILARITY_CONSTANT * k * k * grad_sq_norms)
  return p @ per_client
