r"""Server optimizers on the pseudo-gradient, as optax transforms.

The server treats the aggregated pseudo-gradient
:math:`g_t = x_t - \mathrm{mean}_i\, y_i` as a gradient. FedAvg and FedAvgM
are SGD without and with momentum on it; FedAdagrad, FedAdam and FedYogi are
the adaptive methods of Reddi et al., "Adaptive Federated Optimization",
ICLR 2021 (https://arxiv.org/abs/2003.00295), Algorithm 2:

.. math::
  m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
  v_t &= v_{t-1} + g_t^2 & \text{(FedAdagrad)} \\
  v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 & \text{(FedAdam)} \\
  v_t &= v_{t-1} - (1 - \beta_2)\, g_t^2\, \mathrm{sign}(v_{t-1} - g_t^2)
      & \text{(FedYogi)} \\
  x_{t+1} &= x_t - \eta\, m_t / (\sqrt{v_t} + \tau)

with :math:`m_{-1} = 0` and :math:`v_{-1} = \tau^2`, and no bias correction,
as in the paper (this is why these are not `optax.adam` / `optax.yogi`,
which correct the bias and start v at 0).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext._src.checks import check_number

ADAPTIVE_VARIANTS = ('adagrad', 'adam', 'yogi')
SERVER_OPTIMIZERS = ('fedavg', 'fedavgm', 'fedadagrad', 'fedadam', 'fedyogi')


class ScaleByFedOptState(NamedTuple):
  """State of `scale_by_fedopt`."""
  mu: optax.Updates  # First moment m_t, shaped like the params.
  nu: optax.Updates  # Second moment v_t, shaped like the params.


def check_betas_and_tau(*, b1: float, b2: float, tau: float) -> None:
  """Named errors unless b1, b2 are in [0, 1) and tau is finite > 0."""
  check_number('b1', b1, low=0, high=1, high_open=True)
  check_number('b2', b2, low=0, high=1, high_open=True)
  check_number('tau', tau, low=0, low_open=True)


def scale_by_fedopt(variant: str, *, b1: float = 0.9, b2: float = 0.99,
                    tau: float = 1e-3) -> optax.GradientTransformation:
  r"""Rescales by :math:`m_t / (\sqrt{v_t} + \tau)` (module docstring).

  Args:
    variant: ``'adagrad'``, ``'adam'`` or ``'yogi'``: how v_t accumulates.
    b1: first-moment decay :math:`\beta_1` in [0, 1).
    b2: second-moment decay :math:`\beta_2` in [0, 1) (unused by adagrad).
    tau: adaptivity :math:`\tau > 0`; v starts at :math:`\tau^2`.

  Returns:
    An optax transform; chain it with ``optax.scale(-learning_rate)``.
  """
  if variant not in ADAPTIVE_VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; valid choices: '
                     f'{", ".join(ADAPTIVE_VARIANTS)}.')
  check_betas_and_tau(b1=b1, b2=b2, tau=tau)

  def init_fn(params):
    return ScaleByFedOptState(
        mu=optax.tree.zeros_like(params),
        nu=jax.tree.map(lambda p: jnp.full_like(p, tau**2), params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)

    def second_moment(v, g):
      g2 = jnp.square(g)
      if variant == 'adagrad':
        return v + g2
      if variant == 'adam':
        return b2 * v + (1 - b2) * g2
      return v - (1 - b2) * g2 * jnp.sign(v - g2)

    nu = jax.tree.map(second_moment, state.nu, updates)
    scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), mu, nu)
    return scaled, ScaleByFedOptState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def server_optimizer(name: str, learning_rate: float, *,
                     momentum: float = 0.9, b1: float = 0.9,
                     b2: float = 0.99,
                     tau: float = 1e-3) -> optax.GradientTransformation:
  """The server optimizer of a named algorithm family.

  Args:
    name: one of `SERVER_OPTIMIZERS`.
    learning_rate: server learning rate (1.0 is plain FedAvg).
    momentum: FedAvgM's momentum.
    b1, b2, tau: the adaptive methods' constants (`scale_by_fedopt`).

  Returns:
    An optax transform applied to the pseudo-gradient.
  """
  if name not in SERVER_OPTIMIZERS:
    raise ValueError(f'Unknown server optimizer {name!r}; valid choices: '
                     f'{", ".join(SERVER_OPTIMIZERS)}.')
  check_number('learning_rate', learning_rate, low=0, low_open=True)
  if name == 'fedavgm':
    check_number('momentum', momentum, low=0, high=1, high_open=True)
  if name == 'fedavg':
    return optax.sgd(learning_rate)
  if name == 'fedavgm':
    return optax.sgd(learning_rate, momentum=momentum)
  if name in ('fedadagrad', 'fedadam', 'fedyogi'):
    return optax.chain(
        scale_by_fedopt(name.removeprefix('fed'), b1=b1, b2=b2, tau=tau),
        optax.scale(-learning_rate))
  raise ValueError(f'Unknown server optimizer {name!r}; valid choices: '
                   f'{", ".join(SERVER_OPTIMIZERS)}.')
