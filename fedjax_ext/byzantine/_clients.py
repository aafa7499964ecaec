r"""Client updates of Byzantine-robust training: DSGD, worker momentum,
and the wrapper that marks (and label-flips) Byzantine clients.

The distributed SGD analysed by Ruan, Wang and Liu ("Byzantine-Robust
Distributed SGD: A Unified Analysis and Tight Error Bounds", arXiv
2604.10179, 2026) makes ONE stochastic gradient per round on each worker,
optionally smoothed by worker momentum (the EMA form of Karimireddy, He,
Jaggi, ICML 2021, and Allouah et al., AISTATS 2023; [B] in the method spec):

.. math:: m_i^t = \beta m_i^{t-1} + (1 - \beta) g_i^t, \qquad
   \theta^{t+1} = \theta^t - \gamma F(m_1^t, \dots, m_n^t).

`sgd_gradient` is that worker (its ``update`` is :math:`g_i`, so
``optax.sgd(gamma)`` on the server is the paper's step), `worker_momentum`
wraps ANY client update (DSGD's gradient or FedAvg's multi-step
pseudo-gradient) with the EMA, keeping :math:`m_i` in the client store.

Every client here reports the real examples it processed as its
``weight``; the round's weighting stage (`core.weigh_clients`) sets the
aggregation weight. Who is Byzantine is per-round data, so it travels in
``Cohort.info['byzantine']`` and reaches each client as its fifth
argument, ``info``.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import clients
from fedjax_ext import core

# `Cohort.info` column (float32 [C]): 1. for a Byzantine client, else 0.;
# also the client metric that reports it.
BYZANTINE = 'byzantine'
MOMENTUM_INITS = ('zeros', 'first')


def sgd_gradient(loss_fn: clients.LossFn) -> core.ClientUpdateFn:
  r"""One stochastic gradient per round: the DSGD worker.

  The gradient is taken of the masked mean loss over ALL the client's
  examples of the round, i.e. its batches [S, B] seen as one minibatch of
  up to S * B examples (pack with S = 1 for the paper's minibatch of size
  B).

  Args:
    loss_fn: masked mean loss of one batch.

  Returns:
    A stateless `core.ClientUpdateFn` whose ``update`` is the gradient
    :math:`g_i = \nabla \ell(\theta; \xi_i)` and whose ``weight`` is the
    real examples in the minibatch (0 for a client without data). The
    theory's equal weighting of workers is the round's ``'uniform'``
    weighting (`byzantine.robust_algorithm`'s default).
  """

  def client_update(params, client_state, batches, key, info=None):
    del info
    flat = jax.tree.map(
        lambda c: c.reshape((c.shape[0] * c.shape[1],) + c.shape[2:]),
        batches)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, flat, jax.random.fold_in(key, 0))
    count = jnp.sum(flat['mask'])
    stats = clients.LocalStats(loss=loss, accuracy=metrics['accuracy'],
                               num_steps=(count > 0).astype(jnp.float32),
                               num_examples=count)
    return core.ClientOutput(update=grads, weight=count,
                             client_state=client_state,
                             metrics=clients.stats_metrics(stats))

  return client_update


def worker_momentum(client_update: core.ClientUpdateFn,
                    beta: jax.typing.ArrayLike, *,
                    init: str = 'zeros') -> core.ClientUpdateFn:
  r"""Worker momentum around a stateless client update.

  .. math:: m_i \leftarrow \beta m_i + (1 - \beta) u_i,

  and the client sends :math:`m_i` instead of its update :math:`u_i`. A
  client that saw no data this round (it reports weight 0) keeps its
  :math:`m_i`. The client's ``info`` reaches the wrapped update unchanged.
  The client state is :math:`m_i` (shaped like params, float32), kept in
  the client store between the rounds the client takes part in: use
  ``optax.tree.zeros_like`` as `init_client_state`.

  Args:
    client_update: a stateless client update (its state is ``()``)
      reporting the examples it processed as its weight.
    beta: :math:`\beta \in [0, 1)`; may be a traced array (so one compiled
      program serves several values under ``vmap``).
    init: ``'zeros'`` (:math:`m^{-1} = 0`, ByzFL's choice) or ``'first'``
      (:math:`m^0 = u^0`: a client's first update is sent unshrunk), the
      two conventions of the method spec ([B]). ``'first'`` detects the
      first round by :math:`m = 0` exactly.

  Returns:
    A `core.ClientUpdateFn` whose client state is the momentum.
  """
  if init not in MOMENTUM_INITS:
    raise ValueError(f'Unknown momentum init {init!r}; valid choices: '
                     f'{", ".join(MOMENTUM_INITS)}.')
  if isinstance(beta, (int, float)) and not 0 <= beta < 1:
    raise ValueError(f'momentum beta must be in [0, 1), got {beta}.')

  def momentum_update(message, momentum, batches, key, info=None):
    out = client_update(message, (), batches, key, info)
    b = jnp.asarray(beta, jnp.float32)
    if init == 'first':
      fresh = optax.tree.norm(momentum, squared=True) == 0
      b = jnp.where(fresh, 0., b)
    active = out.weight > 0
    new_m = jax.tree.map(
        lambda m, u: jnp.where(active, b * m + (1 - b) * u.astype(m.dtype),
                               m), momentum, out.update)
    sent = jax.tree.map(lambda m, u: m.astype(u.dtype), new_m, out.update)
    return out._replace(update=sent, client_state=new_m)

  return momentum_update


def client_flag(info: Mapping[str, jax.Array] | None) -> jax.Array:
  """float32 scalar: ONE client's ``info['byzantine']`` (0. if absent)."""
  if info is None or BYZANTINE not in info:
    return jnp.zeros((), jnp.float32)
  return jnp.asarray(info[BYZANTINE], jnp.float32)


def byzantine_client(client_update: core.ClientUpdateFn, *,
                     flip_labels: bool = False,
                     num_classes: int | None = None) -> core.ClientUpdateFn:
  """Reads the client's Byzantine flag from ``info``, flips labels.

  The flag is ``info['byzantine']`` (the client's entry of
  ``Cohort.info['byzantine']``: `byzantine.mark_cohort`); without it every
  client is honest. It is reported as the client metric
  ``metrics['byzantine']``: a per-client scalar like the training loss, so
  the round metric is the weighted Byzantine fraction and
  `byzantine.robustness_metrics` (which sees only the outputs) counts the
  Byzantine clients from it. The wrapped update gets the same ``info``.

  Args:
    client_update: the honest client update.
    flip_labels: Byzantine clients train on labels ``K - 1 - y`` (the
      label-flip attack).
    num_classes: ``K``, needed when `flip_labels`.

  Returns:
    A `core.ClientUpdateFn`.
  """
  if flip_labels and not num_classes:
    raise ValueError('flip_labels needs num_classes.')

  def wrapped(message, client_state, batches, key,
              info: Mapping[str, jax.Array] | None = None):
    flag = client_flag(info)
    if flip_labels:
      batches = dict(batches)
      y = batches['y']
      batches['y'] = jnp.where(flag > 0, num_classes - 1 - y, y)
    out = client_update(message, client_state, batches, key, info)
    metrics = dict(out.metrics)
    metrics[BYZANTINE] = flag
    return out._replace(metrics=metrics)

  return wrapped
