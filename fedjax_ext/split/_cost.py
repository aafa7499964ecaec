r"""Cost model of split learning: bytes, FLOPs and simulated latency.

**Bytes** (from shapes; per client and per step it sends; `step_bytes`).
With B rows per step, :math:`|a|` the bytes of one cut-layer activation
row, :math:`|y|` of one label and :math:`|o|` of one server-output row:

* ``'backprop'`` (SL, SFL, PSL, EPSL, GAPSL): up :math:`B(|a| + |y|)`,
  down :math:`B|a|`. EPSL broadcasts its |J| = round(phi B) aggregated
  gradient rows once to the cohort (spec 5a), so the server sends
  :math:`|J| + (B - |J|) C` rows in all, counted here per client as
  :math:`(B - |J|)|a| + |J||a|/C`.
* ``'local'`` (decoupled SL, spec 2.4): up :math:`B(|a| + |y|)`, down 0.
* ``'tail'`` (U-shaped): up :math:`B(|a| + |o|)` (activations, then the
  tail's output gradients), down :math:`B(|o| + |a|)` (the server output,
  then the activation gradients); no labels.

plus, per round, the client part down and its update up for the variants
that aggregate it (FedAvg), or the client part relayed in vanilla SL (one
receive and one send per client). The round reports these per client,
averaged over the cohort, from the steps each client actually sent; the
totals are ``upload_bytes_per_client`` / ``downlink_bytes_per_client``
(`core.communication_metrics`' names). Server-to-server traffic (SFL-V1's
copies) is not client traffic and is not counted.

**FLOPs** (`step_costs`): from the compiled programs' cost analysis
(``jax.jit(f).lower(...).compile().cost_analysis()['flops']``; NaN where
the backend gives none): ONE client's step (forward and backward of its
part, or of its part plus aux head for local-loss SL, plus the tail for
U-shaped SL) and the server's step on the whole cohort's stacked
activations (the `joint_server` program, with EPSL's row reduction).

**Latency** (`simulated_latency`, a configurable model [I]): per-client
compute speed :math:`s_i` (FLOP/s), uplink and downlink bandwidths
:math:`u_i, d_i` (bytes/s) and server speed :math:`s_0`:

.. math::

  T_\text{step} = \max_i \Big(\frac{F_c}{s_i} + \frac{U_i}{u_i} +
  \frac{D_i}{d_i}\Big) + \frac{F_s}{s_0}, \qquad
  T_\text{round} = S\,T_\text{step} + \max_i \Big(\frac{M^u_i}{u_i} +
  \frac{M^d_i}{d_i}\Big)

for the parallel schedule (clients in parallel, one batched server step),
and :math:`T_\text{round} = \sum_i \big[S (F_c/s_i + U_i/u_i + D_i/d_i +
F_s/(C s_0)) + M^u_i/u_i + M^d_i/d_i\big]` for vanilla SL's sequential
relay (one client at a time; the server's cohort program divided evenly).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext.core import Params
from fedjax_ext.split import _models
from fedjax_ext.split import _round


def _nbytes(tree) -> float:
  return float(sum(math.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def _head(part, client_side: str):
  return part[0] if client_side in ('tail', 'local') else part


def step_bytes(model: _models.SplitModel, head_params: Params,
               batches: dict[str, jax.Array], *, client_side: str,
               phi: float = 0., server_params: Params | None = None
              ) -> dict[str, float]:
  """Bytes one client sends and receives in one step (from shapes).

  Args:
    model: the `SplitModel`.
    head_params: ONE client's client part (the head for U-shaped SL).
    batches: the cohort's batches [C, S, B, ...] (shapes only).
    client_side: ``'backprop'``, ``'tail'`` or ``'local'``.
    phi: EPSL's aggregation ratio.
    server_params: needed for ``'tail'`` (the server output's shape).

  Returns:
    ``{'activation_upload', 'label_upload', 'output_gradient_upload',
    'gradient_download', 'server_output_download'}`` bytes per step.
  """
  x, y = batches['x'], batches['y']
  num_clients, batch_size = x.shape[0], x.shape[2]
  row = jax.ShapeDtypeStruct((1,) + tuple(x.shape[3:]), x.dtype)
  acts = jax.eval_shape(model.client_apply, head_params, row)
  act_row = _nbytes(acts)
  label_row = (math.prod(y.shape[3:]) * jnp.dtype(y.dtype).itemsize)
  out = {'activation_upload': batch_size * act_row, 'label_upload': 0.,
         'output_gradient_upload': 0., 'gradient_download': 0.,
         'server_output_download': 0.}
  if client_side == 'tail':
    out_row = _nbytes(jax.eval_shape(model.server_apply, server_params,
                                     acts))
    out['output_gradient_upload'] = batch_size * out_row
    out['server_output_download'] = batch_size * out_row
    out['gradient_download'] = batch_size * act_row
    return out
  out['label_upload'] = float(batch_size * label_row)
  if client_side == 'backprop':
    n_agg = _round.num_aggregated_slots(phi, batch_size)
    out['gradient_download'] = ((batch_size - n_agg) * act_row +
                                n_agg * act_row / num_clients)
  return out


def round_bytes(model: _models.SplitModel, cohort: core.Cohort, *,
                client_side: str, schedule: str, aggregate_clients: bool,
                phi: float, client_part, server_copies: bool,
                server_params: Params, steps_sent: jax.Array
               ) -> dict[str, jax.Array]:
  """The round's byte metrics per client (module docstring).

  ``steps_sent`` [C]: the steps each client sent activations in.
  """
  del server_copies
  per_step = step_bytes(model, _head(client_part, client_side),
                        cohort.batches, client_side=client_side, phi=phi,
                        server_params=server_params)
  steps = jnp.mean(steps_sent.astype(jnp.float32))
  metrics = {f'{k}_bytes_per_client': steps * v for k, v in per_step.items()}
  model_bytes = 0.
  if aggregate_clients or schedule == 'sequential':
    model_bytes = _nbytes(client_part)
  metrics['model_upload_bytes_per_client'] = jnp.float32(model_bytes)
  metrics['model_download_bytes_per_client'] = jnp.float32(model_bytes)
  metrics['upload_bytes_per_client'] = model_bytes + steps * (
      per_step['activation_upload'] + per_step['label_upload'] +
      per_step['output_gradient_upload'])
  metrics['downlink_bytes_per_client'] = model_bytes + steps * (
      per_step['gradient_download'] + per_step['server_output_download'])
  return metrics


def _flops(fn, *args) -> float:
  """FLOPs of the compiled `fn` (NaN when the backend reports none)."""
  try:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float('nan')
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return float('nan')
  return float(analysis['flops'])


class StepCosts(NamedTuple):
  """Costs of one split step (per client unless said otherwise)."""
  client_flops: float  # ONE client's step (forward + backward).
  server_flops: float  # The server's step on the whole cohort.
  upload_bytes: float  # Per client per step.
  download_bytes: float  # Per client per step.
  model_upload_bytes: float  # Per client per round.
  model_download_bytes: float  # Per client per round.
  num_clients: int
  num_steps: int


def step_costs(model: _models.SplitModel, params: Params,
               cohort: core.Cohort, *, client_side: str = 'backprop',
               phi: float = 0., aggregate_clients: bool = False,
               schedule: str = 'parallel', aux_seed: int = 0) -> StepCosts:
  """FLOPs (compiled cost analysis) and bytes of one step of a variant.

  Args:
    model: the `SplitModel` (U-shaped for ``client_side='tail'``).
    params: the UNSPLIT model's params.
    cohort: a cohort with the run's shapes [C, S, B, ...].
    client_side, phi, aggregate_clients, schedule: as `split_algorithm`.
    aux_seed: the aux head's seed (``'local'``).

  Returns:
    `StepCosts`.
  """
  pieces = model.split_params(params)
  head, server = pieces[0], pieces[1]
  x, y, mask = (cohort.batches['x'][:, 0], cohort.batches['y'][:, 0],
                cohort.batches['mask'][:, 0])
  num_clients, num_steps = cohort.batches['mask'].shape[:2]
  acts = jax.eval_shape(lambda p, v: _round.batched(
      lambda q, r: model.client_apply(q, r), p, v), head, x)
  acts = jnp.zeros(acts.shape, acts.dtype)
  part = head
  if client_side == 'local':
    aux = _models.aux_head(model, aux_seed)
    part = (head, aux.init())

    def client_fn(p, xi, yi, mi):
      def loss(q):
        a = model.client_apply(q[0], xi)
        return _round.label_loss(aux.apply(q[1], a), (yi, mi))[0]
      return jax.grad(loss)(p)
    client_flops = _flops(client_fn, part, x[0], y[0], mask[0])
  else:
    def client_fn(p, xi, g):
      a, pull = jax.vjp(lambda q: model.client_apply(q, xi), p)
      return pull(g.astype(a.dtype))[0]
    client_flops = _flops(client_fn, head, x[0], acts[0])
  if client_side == 'tail':
    tail = pieces[2]
    part = (head, tail)
    out = jax.eval_shape(lambda p, a: _round.batched(model.server_apply, p,
                                                     a), server, acts)
    tail_fn = lambda t, o, yi, mi: jax.grad(
        lambda tt, oo: _round.label_loss(model.tail_apply(tt, oo),
                                         (yi, mi))[0], argnums=(0, 1))(t, o)
    client_flops += _flops(tail_fn, tail, jnp.zeros(out.shape[1:],
                                                    out.dtype), y[0],
                           mask[0])

    def server_fn(p, a, d):
      _, pull = jax.vjp(lambda q, b: _round.batched(model.server_apply, q,
                                                    b), p, a)
      return pull(d)
    server_flops = _flops(server_fn, server, acts,
                          jnp.zeros(out.shape, out.dtype))
  else:
    rule = _round.joint_server(optax.sgd(0.), phi=phi)
    ctx = _round.StepContext(model.server_apply,
                             _round._loss_grads(_round.label_loss),  # pylint: disable=protected-access
                             _round.label_loss, client_side != 'local',
                             core.as_execution('vmap'))
    weights = jnp.full((num_clients,), 1. / num_clients)

    def server_fn(p, a, yy, mm):
      carry = _round.ServerCarry(p, optax.sgd(0.).init(p), ())
      return rule.step(ctx, carry, a, (yy, mm), weights,
                       jnp.ones((num_clients,), bool), mm, None)[:2]
    server_flops = _flops(server_fn, server, acts, y, mask)
  per_step = step_bytes(model, head, cohort.batches, client_side=client_side,
                        phi=phi, server_params=server)
  model_bytes = (_nbytes(part) if aggregate_clients or
                 schedule == 'sequential' else 0.)
  return StepCosts(
      client_flops=client_flops, server_flops=server_flops,
      upload_bytes=(per_step['activation_upload'] + per_step['label_upload']
                    + per_step['output_gradient_upload']),
      download_bytes=(per_step['gradient_download'] +
                      per_step['server_output_download']),
      model_upload_bytes=model_bytes, model_download_bytes=model_bytes,
      num_clients=int(num_clients), num_steps=int(num_steps))


class Profile(NamedTuple):
  """Per-client compute and bandwidth, and the server's speed.

  Each client field is a float (every client) or a sequence of C floats.
  """
  client_flops_per_s: float | tuple = 1e9
  uplink_bytes_per_s: float | tuple = 1e6
  downlink_bytes_per_s: float | tuple = 1e7
  server_flops_per_s: float = 1e11


def simulated_latency(costs: StepCosts, profile: Profile = Profile(), *,
                      schedule: str = 'parallel') -> dict[str, float]:
  """Seconds per step and per round under `profile` (module docstring).

  Returns:
    ``{'step_latency_s', 'round_latency_s', 'client_compute_s',
    'communication_s', 'server_compute_s'}`` (the last three per step,
    the first two of the slowest client for the parallel schedule).

  Raises:
    ValueError: naming a profile field that is not positive or does not
      have C entries, or an unknown `schedule`.
  """
  if schedule not in _round.SCHEDULES:
    raise ValueError(f'Unknown schedule {schedule!r}; valid choices: '
                     f'{", ".join(_round.SCHEDULES)}.')
  num = costs.num_clients
  fields = {}
  for name in ('client_flops_per_s', 'uplink_bytes_per_s',
               'downlink_bytes_per_s', 'server_flops_per_s'):
    value = np.asarray(getattr(profile, name), np.float64)
    if name != 'server_flops_per_s':
      if value.ndim == 0:
        value = np.full(num, float(value))
      if value.shape != (num,):
        raise ValueError(f'Profile.{name} must be a float or {num} floats, '
                         f'got shape {value.shape}.')
    if not np.all(value > 0):
      raise ValueError(f'Profile.{name} must be > 0, got {value}.')
    fields[name] = value
  compute = costs.client_flops / fields['client_flops_per_s']
  comm = (costs.upload_bytes / fields['uplink_bytes_per_s'] +
          costs.download_bytes / fields['downlink_bytes_per_s'])
  model = (costs.model_upload_bytes / fields['uplink_bytes_per_s'] +
           costs.model_download_bytes / fields['downlink_bytes_per_s'])
  server = costs.server_flops / fields['server_flops_per_s']
  if schedule == 'parallel':
    step = float(np.max(compute + comm)) + float(server)
    total = costs.num_steps * step + float(np.max(model))
  else:
    per_client = (costs.num_steps * (compute + comm + server / num) + model)
    total = float(np.sum(per_client))
    step = total / max(costs.num_steps * num, 1)
  return {'step_latency_s': step, 'round_latency_s': total,
          'client_compute_s': float(np.max(compute)),
          'communication_s': float(np.max(comm)),
          'server_compute_s': float(server)}
