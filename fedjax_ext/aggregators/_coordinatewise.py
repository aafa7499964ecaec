r"""Coordinate-wise rules: the mean, the median and the trimmed mean.

Each coordinate :math:`j` of the aggregate is a function of the present
clients' values :math:`x_{1, j}, \dots, x_{k, j}` alone (their order
statistics come from `_order`). Presence, dtypes and the extra arguments
follow `_presence`'s conventions; Bulyan, which selects clients by distance
first, lives in `_distance`.
"""

import jax.numpy as jnp

from fedjax_ext.aggregators import _order
from fedjax_ext.aggregators._presence import (cast_like, check_cohort_size,
                                              check_num_byzantine,
                                              empty_state, finite_rows,
                                              num_clients, present_clients,
                                              weighted_rows_mean)
from fedjax_ext.core import Aggregator, tree_weighted_mean


def mean(*, reject_non_finite: bool = False) -> Aggregator:
  r"""The weighted mean, optionally guarded against non-finite clients.

  .. math:: F(x) = \sum_i w_i x_i / \sum_i w_i.

  Not robust: one Byzantine client moves it arbitrarily far
  (:math:`\kappa = \infty`). With ``reject_non_finite=False`` it is exactly
  `aggregators.weighted_mean` (so a run with it equals plain FedAvg bit for
  bit) and a NaN or Inf client makes the aggregate non-finite. With
  ``reject_non_finite=True`` clients rejected by `present_clients` get
  weight 0 first.

  Args:
    reject_non_finite: drop non-finite clients before averaging.

  Returns:
    A stateless `core.Aggregator`.
  """

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    del params, extra
    if not reject_non_finite:
      return tree_weighted_mean(client_updates, weights), state
    finite = finite_rows(client_updates)
    present = present_clients(client_updates, weights)
    weights = jnp.where(present, weights, 0.).astype(jnp.float32)
    return cast_like(weighted_rows_mean(client_updates, weights, finite),
                      client_updates), state

  return Aggregator(empty_state, update_fn)


def coordinate_median(*, method: str = 'auto') -> Aggregator:
  r"""Coordinate-wise median (CWMed) of the present clients.

  .. math:: F(x)_j = \operatorname{median}_i\, x_{i, j},

  the mean of the two middle values when the number of present clients
  ``k`` is even. :math:`(b, \kappa)`-robust with
  :math:`\kappa \le 4 (1 + b / (n - 2b))^2` (Allouah et al. 2023).

  The order statistics come from `_order` (a pruned sorting network on CPU,
  ``jnp.sort`` elsewhere; identical values).

  References:
    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018,
    https://arxiv.org/abs/1803.01498.

  Args:
    method: ``'auto'``, ``'network'`` or ``'sort'``
      (`_order.coordinatewise`).

  Returns:
    A stateless `core.Aggregator`; zeros when no client is present.
  """
  _order.check_method(method)

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    del params, extra
    present = present_clients(client_updates, weights)
    n = num_clients(client_updates)
    k = jnp.sum(present)
    # Absent clients split around the present ones: rows lo, hi are the
    # middle ones of the present values, near n / 2 for every k.
    low_pad = _order.centred_low_pad(n, k)
    lo, hi = low_pad + jnp.maximum(k - 1, 0) // 2, low_pad + k // 2
    outputs = _order.needed_rows(
        n, lambda c: (_order.centred_low_pad(n, c) + (c - 1) // 2,
                      _order.centred_low_pad(n, c) + c // 2))

    def combine(rows):
      mid = (0.5 * _order.select_row(rows, lo)
             + 0.5 * _order.select_row(rows, hi))
      return jnp.where(k > 0, mid, 0.)

    return _order.coordinatewise(combine, client_updates, present,
                                 low_pad, outputs, method=method), state

  return Aggregator(empty_state, update_fn)


def _trim(num_byzantine, k):
  """Values trimmed per side: ``min(b, floor((k - 1) / 2))`` (>= 0)."""
  return jnp.minimum(num_byzantine, jnp.maximum(k - 1, 0) // 2)


def trimmed_mean(num_byzantine: int, *, method: str = 'auto') -> Aggregator:
  r"""Coordinate-wise trimmed mean (CWTM).

  Per coordinate, drop the ``b`` largest and ``b`` smallest values of the
  ``k`` present clients and average the remaining ``k - 2b``. If
  ``k <= 2b`` the trim shrinks to :math:`\lfloor (k - 1) / 2 \rfloor` per
  side (the median). :math:`\kappa \le \frac{6b}{n - 2b}
  (1 + \frac{b}{n - 2b})` (Allouah et al. 2023).

  References:
    Yin et al., ICML 2018, https://arxiv.org/abs/1803.01498.

  Args:
    num_byzantine: ``b``, values trimmed at each end per coordinate;
      ``2 b`` must be below the cohort size (checked when traced).
    method: ``'auto'``, ``'network'`` or ``'sort'``
      (`_order.coordinatewise`).

  Returns:
    A stateless `core.Aggregator`; zeros when no client is present.
  """
  check_num_byzantine(num_byzantine)
  _order.check_method(method)

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    del params, extra
    check_cohort_size(num_byzantine, client_updates, 'trimmed_mean')
    present = present_clients(client_updates, weights)
    n = num_clients(client_updates)
    k = jnp.sum(present)
    trim = _trim(num_byzantine, k)
    kept = jnp.maximum(k - 2 * trim, 1).astype(jnp.float32)
    low_pad = _order.centred_low_pad(n, k)
    lo, hi = low_pad + trim, low_pad + k - trim  # Kept sorted rows.

    def rows_for(c):
      t = min(num_byzantine, (c - 1) // 2)
      pad = _order.centred_low_pad(n, c)
      return range(pad + t, pad + c - t)

    outputs = _order.needed_rows(n, rows_for)

    def combine(rows):
      total = jnp.zeros_like(rows[outputs[0]])
      for r in outputs:  # Kept rows are present, hence finite.
        total = total + jnp.where((lo <= r) & (r < hi), rows[r], 0.)
      return total / kept

    return _order.coordinatewise(combine, client_updates, present,
                                 low_pad, outputs, method=method), state

  return Aggregator(empty_state, update_fn)

