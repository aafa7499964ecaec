r"""Which clients a robust rule aggregates, and reading their rows cheaply.

Every robust rule (`_coordinatewise`, `_distance`, `_preaggregators`) is an
optax-style `core.Aggregator` whose ``update(client_updates, state,
params=None, *, weights, **extra_args)`` maps a pytree whose leaves are
stacked along a leading client axis [C, ...] to one pytree without it. The
round's extra arguments (``key``, ``server_state``, ``client_info``) are
accepted and ignored unless a rule documents otherwise. Rules that need
distances treat a client's whole pytree as ONE flattened vector
:math:`x_i \in \mathbb{R}^d`; they compute it leaf by leaf (Gram matrices
summed over leaves), never by concatenating the leaves.

Robustness follows the :math:`(b, \kappa)` definition (Allouah et al.,
"Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
AISTATS 2023, https://arxiv.org/abs/2302.01772): :math:`F` is
:math:`(b, \kappa)`-robust if for every set :math:`S` of :math:`n - b`
clients

.. math:: \|F(x_1, \dots, x_n) - \bar x_S\|^2 \le
   \frac{\kappa}{|S|} \sum_{i \in S} \|x_i - \bar x_S\|^2,

the notion under which Ruan, Wang and Liu ("Byzantine-Robust Distributed
SGD: A Unified Analysis and Tight Error Bounds", arXiv 2604.10179, 2026)
bound the error floors of robust SGD with and without worker momentum.

Conventions shared by every robust rule:

* **Presence.** Client :math:`i` takes part when its weight is positive and
  finite and its squared norm :math:`\|x_i\|^2` is finite (`present_clients`).
  A client that sends NaN or Inf, or values so large that its squared norm
  overflows, is *rejected*: it is treated exactly like an absent client, so
  it can never make the aggregate non-finite. The number of clients present
  ``k`` is dynamic (traced); ``num_byzantine`` (``b``) is a static int,
  and must be below half the cohort size ``C`` (`check_cohort_size`).
* **Weights** only decide presence: robust rules weigh present clients
  equally, because example counts are reported by the clients themselves and
  a Byzantine client could claim any weight. (`mean` is the exception.)
* **Dtypes.** Arithmetic runs in float32 (or wider); outputs are cast back
  to each leaf's dtype.
* **Client order.** Every rule is a function of the multiset of client
  updates (permutation invariant up to float rounding of sums); ties in
  Krum's scores are broken by position, which only matters when the tied
  updates are identical.
* **Speed on CPU.** Coordinate-wise order statistics come from a sorting
  network (`_order`), and no rule copies the [C, d] updates: Gram
  matrices, norms and `mix_rows` matmuls read them in place (absent rows
  masked, or cleaned only when some row is non-finite).
"""

import math

import jax
import jax.numpy as jnp

from fedjax_ext.core import PyTree

HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype rules compute in: ``dtype`` promoted to at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def flat_leaves(stacked: PyTree) -> list[jax.Array]:
  """Every leaf as [C, d_leaf] in its compute dtype (>= float32)."""
  return [leaf.reshape(leaf.shape[0], -1).astype(compute_dtype(leaf.dtype))
          for leaf in jax.tree.leaves(stacked)]


def num_clients(stacked: PyTree) -> int:
  """C, the (static) length of the leading client axis."""
  return jax.tree.leaves(stacked)[0].shape[0]


def client_sq_norms(stacked: PyTree) -> jax.Array:
  r"""Squared norms [C] of each client's flattened update, in float32."""
  return sum(jnp.sum(jnp.square(x), axis=1) for x in flat_leaves(stacked))


def present_clients(stacked: PyTree, weights: jax.Array) -> jax.Array:
  r"""Boolean [C]: the clients a robust rule aggregates.

  A client is present when its weight is positive and finite and the
  squared norm of its update is finite: NaN, Inf and overflowing updates
  (say from a Byzantine client) make a client absent, i.e. rejected.
  """
  weights = jnp.asarray(weights)
  return ((weights > 0) & jnp.isfinite(weights)
          & jnp.isfinite(client_sq_norms(stacked)))


def finite_rows(stacked: PyTree) -> jax.Array:
  """Boolean [C]: clients whose update has a finite squared norm."""
  return jnp.isfinite(client_sq_norms(stacked))


def rejected_clients(stacked: PyTree, weights: jax.Array) -> jax.Array:
  r"""Boolean [C]: clients that sent a non-finite update or weight.

  These are the clients `present_clients` leaves out for being non-finite
  (not merely for a zero weight); their count is what a run reports.
  """
  weights = jnp.asarray(weights)
  return (~jnp.isfinite(weights)) | (
      (weights != 0) & ~jnp.isfinite(client_sq_norms(stacked)))


def clean_rows(stacked: PyTree, present: jax.Array) -> PyTree:
  """Absent clients' rows replaced by zeros (NaN * 0 is NaN: use where).

  This writes a copy of the updates; the rules avoid it where they can
  (`mix_rows`), because on XLA:CPU writing a fresh [100, 1.2M] array costs
  ~0.25 s (page faults), ten times a matmul that reads it.
  """

  def clean(leaf):
    mask = present.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.where(mask, leaf, jnp.zeros((), leaf.dtype))

  return jax.tree.map(clean, stacked)


def mix_rows(matrix: jax.Array, stacked: PyTree,
             finite: jax.Array) -> PyTree:
  r"""``matrix @ rows`` leaf by leaf: [M, C] (or [C]) x [C, d] matmuls.

  Rows that are not ``finite`` (bool [C]) must have zero columns in
  ``matrix`` and are read as zeros. When every row is finite (the usual
  case) the matmul reads the updates directly; otherwise (`lax.cond`) it
  reads a cleaned copy, since :math:`0 \cdot \mathrm{NaN} = \mathrm{NaN}`.

  Returns:
    Leaves [M, *leaf_shape] (or [*leaf_shape]) in compute dtype.
  """

  def apply(rows):
    def mix(leaf):
      flat = leaf.reshape(leaf.shape[0], -1)
      dtype = compute_dtype(leaf.dtype)
      out = jnp.matmul(matrix.astype(dtype), flat.astype(dtype),
                       precision=HIGHEST)
      return out.reshape(matrix.shape[:-1] + leaf.shape[1:])
    return jax.tree.map(mix, rows)

  return jax.lax.cond(jnp.all(finite), apply,
                      lambda rows: apply(clean_rows(rows, finite)), stacked)


def weighted_rows_mean(stacked: PyTree, weights: jax.Array,
                       finite: jax.Array) -> PyTree:
  """sum_i w_i x_i / sum_i w_i in compute dtype; zeros if all w_i = 0.

  Rows that are not ``finite`` must have weight 0 (`mix_rows`).
  """
  total = jnp.sum(weights)
  return mix_rows(weights / jnp.where(total > 0, total, 1.), stacked, finite)


def present_mean(stacked: PyTree, present: jax.Array,
                 finite: jax.Array) -> PyTree:
  """Uniform mean over present clients in compute dtype; zeros if none."""
  return weighted_rows_mean(stacked, present.astype(jnp.float32), finite)


def cast_like(tree: PyTree, stacked: PyTree) -> PyTree:
  """``tree``'s leaves cast to the dtypes of ``stacked``'s leaves."""
  return jax.tree.map(lambda x, ref: x.astype(ref.dtype), tree, stacked)


def check_num_byzantine(num_byzantine: int) -> None:
  """Raises a ValueError unless ``num_byzantine`` is an int >= 0."""
  if (isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int)
      or num_byzantine < 0):
    raise ValueError(f'num_byzantine must be an int >= 0, got '
                     f'{num_byzantine!r}.')


def check_cohort_size(num_byzantine: int, stacked: PyTree,
                      rule: str) -> None:
  """At trace time: ``2 * num_byzantine < C`` for the cohort of ``stacked``.

  No rule tolerates Byzantine clients that make up half the cohort or more
  (the :math:`(b, \\kappa)` definition needs :math:`n > 2b`), and there the
  rules' clamps would silently average Byzantine clients. ``C`` is static
  (the leading axis), so this fails when the round is traced.
  """
  count = num_clients(stacked)
  if 2 * num_byzantine >= count:
    raise ValueError(
        f'{rule}: num_byzantine={num_byzantine} is too large for a cohort of '
        f'{count} clients; it must be below half of them (num_byzantine <= '
        f'{max((count - 1) // 2, 0)}).')


def check_positive(name: str, value: float, *, finite: bool = False) -> None:
  """Raises a ValueError naming ``name`` unless ``value > 0`` (not NaN)."""
  ok = value > 0 and (not finite or math.isfinite(value))
  if not ok:
    what = 'a finite number > 0' if finite else 'a number > 0'
    raise ValueError(f'{name} must be {what}, got {value!r}.')


def empty_state(params: PyTree) -> tuple[()]:
  """``init`` of a stateless rule."""
  del params
  return ()
