"""Small pytree helpers; everything else goes through `optax.tree`."""

import jax
import jax.numpy as jnp

from fedjax_ext.core._types import PyTree


def tree_weighted_mean(stacked: PyTree, weights: jax.Array) -> PyTree:
  r"""Weighted mean over the leading client axis.

  .. math:: \bar u = \sum_i w_i u_i / \sum_i w_i,

  with the convention that all-zero weights give zeros (not NaN).

  Args:
    stacked: a pytree whose leaves have a leading axis [C, ...].
    weights: non-negative weights, shape [C].

  Returns:
    A pytree shaped like one client's leaf, in the leaves' dtype.
  """
  leaves = jax.tree.leaves(stacked)
  if jnp.ndim(weights) != 1 or any(
      leaf.shape[:1] != jnp.shape(weights) for leaf in leaves):
    raise ValueError(
        f'tree_weighted_mean: weights must have shape [C] matching the '
        f'leading axis of every leaf; got weights {jnp.shape(weights)} and '
        f'leaves {sorted({tuple(leaf.shape[:1]) for leaf in leaves})}.')
  total = jnp.sum(weights)
  normalized = weights / jnp.where(total > 0, total, 1.)

  def mean(leaf):
    # A [C] x [C, d] matmul: XLA:CPU reduces the leading axis of an N-D
    # array ~100x slower than this (0.71 s vs 0.008 s for 10 clients of the
    # 1.2M-parameter CNN).
    flat = leaf.reshape(leaf.shape[0], -1)
    out = jnp.matmul(normalized.astype(leaf.dtype), flat,
                     precision=jax.lax.Precision.HIGHEST)
    return out.reshape(leaf.shape[1:])

  return jax.tree.map(mean, stacked)


def tree_gather(stacked: PyTree, indices: jax.Array) -> PyTree:
  """Rows `indices` of every leaf's leading axis: [N, ...] -> [C, ...]."""
  return jax.tree.map(lambda leaf: leaf[indices], stacked)


def tree_scatter(stacked: PyTree, indices: jax.Array,
                 rows: PyTree) -> PyTree:
  """Writes `rows` [C, ...] into rows `indices` of `stacked` [N, ...]."""
  return jax.tree.map(lambda leaf, r: leaf.at[indices].set(r), stacked, rows)


def tree_broadcast(tree: PyTree, size: int) -> PyTree:
  """Adds a leading axis of `size` copies to every leaf: [...] -> [N, ...]."""
  return jax.tree.map(
      lambda leaf: jnp.broadcast_to(leaf, (size,) + jnp.shape(leaf)), tree)


def tree_all_finite(tree: PyTree) -> jax.Array:
  """A boolean scalar: True when every element of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
