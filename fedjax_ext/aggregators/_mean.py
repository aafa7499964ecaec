"""The weighted mean of client updates (McMahan et al., AISTATS 2017)."""

import jax

from fedjax_ext.core import Aggregator, PyTree, tree_weighted_mean


def weighted_mean() -> Aggregator:
  r"""Aggregates stacked updates by their weighted mean.

  .. math:: \Delta = \sum_{i \in S} w_i \Delta_i / \sum_{i \in S} w_i

  Clients of weight 0 (they saw no data) do not count; a cohort whose
  weights are all 0 aggregates to zeros.

  Returns:
    An `Aggregator` whose ``update(client_updates [C, ...], state, params,
    *, weights [C])`` returns the mean update and an empty state.
  """

  def init_fn(params: PyTree) -> tuple[()]:
    del params
    return ()

  def update_fn(client_updates, state, params=None, *, weights: jax.Array,
                **extra_args):
    del params, extra_args
    return tree_weighted_mean(client_updates, weights), state

  return Aggregator(init_fn, update_fn)
