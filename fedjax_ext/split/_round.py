r"""The split-learning round on the stages: one step builder, many variants.

Every local step s of a round does, for the cohort's batches
[C, S, B, ...] at step s::

    a_i, pull_i = vjp(f_c(w_c,i), x_i)       map_clients over the cohort
    server: out = f_s(w_s, a) on the stacked a [C, B, ...]   (ONE program)
            delta_i = d l_i / d out_i        (server loss, or the client's
                                              tail in U-shaped SL)
            g_s = sum_i w_i J_s(a_i)^T delta_i ; w_s <- opt_s(g_s)
            g_a,i = J_s(a_i)^T delta_i       (the activation gradients)
    w_c,i <- opt_c(pull_i(g_a,i))            map_clients over the cohort

with :math:`\ell_i` client i's masked-mean cross-entropy and :math:`w_i`
the step's client weights (`step_weights`). The loop over the S steps is a
`jax.lax.scan` in the compiled round, outside `core.map_clients`; a client
whose step batch is all padding (or that dropped out, `Failures`) neither
sends nor updates in that step, and a step where no client sends leaves the
server untouched.

What differs between variants is ONE of four pluggable pieces, each a
documented argument of `split_algorithm`:

* the server rule (`ServerRule`): `joint_server` (PSL: one model, one
  update on the weighted sum; ``phi`` > 0 gives EPSL's last-layer gradient
  aggregation), `copies_server` (SFL-V1: one server copy per client),
  `sequential_server` (SFL-V2: one model, clients' activations in turn),
  or GAPSL's aligned rule (`split._methods`);
* ``client_side``: ``'backprop'`` (the server returns activation
  gradients), ``'tail'`` (U-shaped: the client's tail computes the loss and
  returns output gradients; the server never sees labels) or ``'local'``
  (decoupled SL: an auxiliary head trains the client part; the server
  trains on detached activations and returns nothing);
* ``schedule``: ``'parallel'`` (all clients each step) or ``'sequential'``
  (vanilla SL: one client part relayed from client to client, each
  training its S steps in turn, a `lax.scan` over clients);
* ``aggregate_clients``: FedAvg the client parts at the end of the round
  (SFL), or keep one client part per client in the client store (PSL).

Documented choices ([I] where the specs leave them open):

* Client optimizer states start fresh every round (as `clients.local_sgd`)
  and, in vanilla SL, whenever the client part is relayed; the server
  optimizer state of the one server model persists across rounds in
  `SplitState`. SFL-V1's server copies also start a fresh ``server``
  optimizer each round and are averaged like the client parts.
* Client parts that are kept per client (``aggregate_clients=False``) are
  evaluated (`FederatedAlgorithm.model_params`) as the unsplit model with
  the MEAN client part over all clients of the store.
* Aggregation (client parts, SFL-V1 server copies) is FedAvg of updates:
  :math:`w \leftarrow w - \sum_i \omega_i (w - w_i)` with
  :math:`\omega_i \propto` the round weighting (`core.weigh_clients`).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import clients as clients_lib
from fedjax_ext import core
from fedjax_ext._src.checks import check_number
from fedjax_ext.core import _stages
from fedjax_ext.core import Params, PRNGKey, PyTree
from fedjax_ext.split import _models

CLIENT_SIDES = ('backprop', 'tail', 'local')
SCHEDULES = ('parallel', 'sequential')
COMPENSATIONS = ('none', 'inverse_probability')
# Cohort.info columns read by `Failures` when its argument is None.
FAILURE_INFO = {'upload': 'drop_prob', 'download': 'download_drop_prob',
                'aggregation': 'aggregation_drop_prob'}


class SplitState(NamedTuple):
  """State of a split-learning round (what is checkpointed).

  ``client_params`` is the shared client part (the global one for the
  variants that aggregate or relay it), ``()`` when every client keeps its
  own in the client store.
  """
  client_params: PyTree
  server_params: Params
  server_opt_state: optax.OptState
  algorithm_state: PyTree  # The server rule's state (GAPSL's leader).
  round: jax.Array


class ServerCarry(NamedTuple):
  """The server during a round's steps."""
  params: Params  # [C, ...] copies for a per-client rule (SFL-V1).
  opt_state: optax.OptState
  algorithm_state: PyTree


class StepContext(NamedTuple):
  """What a `ServerRule` step gets besides the server and the activations.

  ``output_grads(out_i, target_i) -> (delta_i, aux_i)`` is ONE client's
  gradient of its loss w.r.t. the server output (server-side cross-entropy
  on the labels, or the client's tail in U-shaped SL; ``aux_i`` holds
  'loss', 'accuracy' and, U-shaped, 'tail_grads'); ``output_loss(out_i,
  target_i) -> (loss, metrics)`` is the differentiable server-side loss
  (None when the loss lives on the client).
  """
  server_apply: Callable[[Params, jax.Array], jax.Array]
  output_grads: Callable[..., tuple[jax.Array, dict]]
  output_loss: Callable[..., tuple[jax.Array, dict]] | None
  need_act_grads: bool
  execution: core.Execution


class ServerRule(NamedTuple):
  """How the server processes a step's stacked activations.

  ``init(server_params) -> algorithm_state``; ``step(ctx, carry, acts [C,
  B, ...], targets [C, ...], weights [C], active bool [C], row_mask [C,
  B], key) -> (carry, act_grads [C, B, ...] or None, aux [C], metrics)``.
  ``per_client``: the server holds one copy per cohort client during the
  round (SFL-V1), averaged at its end.
  """
  init: Callable[[Params], PyTree]
  step: Callable[..., tuple[ServerCarry, Any, dict, dict]]
  per_client: bool = False
  phi: float = 0.  # EPSL's aggregation ratio (for the byte counts).


def _no_state(params):
  del params
  return ()


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _expand(v, like):
  """[C] or [C, B] `v` broadcastable against `like` [C, B, ...]."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)).astype(like.dtype)


def batched(apply_fn, params, acts):
  """`apply_fn` on stacked rows [C, B, ...] as ONE batch [C * B, ...]."""
  c, b = acts.shape[:2]
  out = apply_fn(params, acts.reshape((c * b,) + acts.shape[2:]))
  return out.reshape((c, b) + out.shape[1:])


def _optimizer_step(optimizer, params, opt_state, grads):
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def num_aggregated_slots(phi: float, batch_size: int) -> int:
  """EPSL's |J| = round(phi * B) aggregated sample slots (static)."""
  return int(round(phi * batch_size))


def joint_server(optimizer: optax.GradientTransformation, *,
                 phi: float = 0.) -> ServerRule:
  r"""PSL's server: one model, one update on the clients' weighted sum.

  .. math:: g_s = \sum_i w_i J_{f_s}(a_i)^\top \delta_i, \qquad
            g_{a,i} = J_{f_s}(a_i)^\top \delta_i

  (spec 3.2; Jeon & Kim 2020, Lin et al. EPSL arXiv 2303.15991). With
  ``phi`` > 0 this is EPSL's last-layer gradient aggregation (spec 5a, [I]
  reconstruction): of each client's B sample slots, the first |J| =
  round(phi B) are aggregated: for slot j in J,
  :math:`\bar a_j = \sum_i \omega_{ij} a_{ij}` (weights :math:`w_i` times
  the row mask, normalized) and :math:`\bar\delta_j = \sum_i w_i
  \delta_{ij}` are backpropagated ONCE through :math:`f_s` at
  :math:`\bar a_j`, giving a server-gradient contribution and one cut-layer
  gradient :math:`\bar g_j` broadcast to every client (client i uses it for
  its own :math:`a_{ij}`; exact when :math:`f_s` is linear). The other
  slots are backpropagated per sample, so the server backpropagates
  :math:`|J| + (B - |J|) C` rows instead of :math:`C B`. ``phi`` = 0 is
  the PSL program itself.

  Args:
    optimizer: the server's optax optimizer (its state persists).
    phi: EPSL's aggregation ratio in [0, 1].
  """
  phi = check_number('phi', phi, low=0, high=1)

  def grads_and_act_grads(ctx, params, acts, targets, weights, row_mask):
    f = lambda p, a: batched(ctx.server_apply, p, a)
    n_agg = num_aggregated_slots(phi, acts.shape[1])
    if n_agg == 0:
      out, pull = jax.vjp(f, params, acts)
      delta, aux = core.map_clients(ctx.output_grads, out, targets,
                                    execution=ctx.execution)
      grads = pull(_expand(weights, delta) * delta)[0]
      act_grads = pull(delta)[1] if ctx.need_act_grads else None
      return grads, act_grads, aux
    a_agg, a_rest = acts[:, :n_agg], acts[:, n_agg:]
    out_rest, pull_rest = jax.vjp(f, params, a_rest)
    out = jnp.concatenate([f(params, a_agg), out_rest], axis=1)
    delta, aux = core.map_clients(ctx.output_grads, out, targets,
                                  execution=ctx.execution)
    d_agg, d_rest = delta[:, :n_agg], delta[:, n_agg:]
    grads = pull_rest(_expand(weights, d_rest) * d_rest)[0]
    row_w = weights[:, None] * row_mask[:, :n_agg]  # [C, n]
    row_w = row_w / jnp.maximum(jnp.sum(row_w, axis=0, keepdims=True),
                                1e-30)
    a_bar = jnp.sum(_expand(row_w, a_agg) * a_agg, axis=0)  # [n, ...]
    d_bar = jnp.sum(_expand(weights, d_agg) * d_agg, axis=0)
    _, pull_bar = jax.vjp(ctx.server_apply, params, a_bar)
    grads_bar, g_bar = pull_bar(d_bar)
    grads = jax.tree.map(jnp.add, grads, grads_bar)
    act_grads = None
    if ctx.need_act_grads:
      g_agg = g_bar[None] * _expand(row_mask[:, :n_agg], a_agg)
      act_grads = jnp.concatenate([g_agg, pull_rest(d_rest)[1]], axis=1)
    return grads, act_grads, aux

  def step(ctx, carry, acts, targets, weights, active, row_mask, key):
    del key
    grads, act_grads, aux = grads_and_act_grads(ctx, carry.params, acts,
                                                targets, weights, row_mask)
    params, opt_state = _optimizer_step(optimizer, carry.params,
                                        carry.opt_state, grads)
    new = carry._replace(params=params, opt_state=opt_state)
    return _select(jnp.any(active), new, carry), act_grads, aux, {}

  return ServerRule(_no_state, step, phi=phi)


def copies_server(optimizer: optax.GradientTransformation) -> ServerRule:
  r"""SFL-V1's server: one copy of :math:`f_s` per client, updated alone.

  Copy i takes an ``optimizer`` step on client i's own loss
  :math:`\ell_i` (unweighted) at every step the client sends; the copies
  are mapped over the cohort (one batched program under ``'vmap'``) and
  averaged at the round's end like the client parts (Thapa et al.,
  "SplitFed", arXiv 2004.12088).
  """

  def step(ctx, carry, acts, targets, weights, active, row_mask, key):
    del weights, row_mask, key

    def one(params, opt_state, a, target, is_active):
      out, pull = jax.vjp(ctx.server_apply, params, a)
      delta, aux = ctx.output_grads(out, target)
      grads, act_grads = pull(delta)
      new = _optimizer_step(optimizer, params, opt_state, grads)
      params, opt_state = _select(is_active, new, (params, opt_state))
      return params, opt_state, act_grads, aux

    params, opt_state, act_grads, aux = core.map_clients(
        one, carry.params, carry.opt_state, acts, targets, active,
        execution=ctx.execution)
    return (carry._replace(params=params, opt_state=opt_state),
            act_grads if ctx.need_act_grads else None, aux, {})

  return ServerRule(_no_state, step, per_client=True)


def sequential_server(optimizer: optax.GradientTransformation) -> ServerRule:
  r"""SFL-V2's server: one model updated on each client's activations in turn.

  A `lax.scan` over the cohort (in cohort order): client i's activations
  go through the model as updated by clients 1..i-1, and it takes an
  ``optimizer`` step on :math:`\ell_i` (Thapa et al., arXiv 2004.12088;
  the SplitLoRA code's server, spec 5b). The activation gradients returned
  to client i are those of the model it was served by.
  """

  def step(ctx, carry, acts, targets, weights, active, row_mask, key):
    del weights, row_mask, key

    def one(state, inputs):
      params, opt_state = state
      a, target, is_active = inputs
      out, pull = jax.vjp(ctx.server_apply, params, a)
      delta, aux = ctx.output_grads(out, target)
      grads, act_grads = pull(delta)
      new = _optimizer_step(optimizer, params, opt_state, grads)
      return _select(is_active, new, (params, opt_state)), (act_grads, aux)

    (params, opt_state), (act_grads, aux) = jax.lax.scan(
        one, (carry.params, carry.opt_state), (acts, targets, active))
    return (carry._replace(params=params, opt_state=opt_state),
            act_grads if ctx.need_act_grads else None, aux, {})

  return ServerRule(_no_state, step)


class Failures(NamedTuple):
  r"""Unstable participation: per-client failure probabilities per step.

  Spec section 4 (Wei et al., arXiv 2509.17398; 4.3 is [I]). Each step,
  each client's activation upload fails with probability :math:`p^u_i`
  (the server neither sees it nor serves it; the client does not update),
  and, after a successful upload, its gradient download with
  :math:`p^d_i` (the server HAS used its activations; the client does not
  update). At the round's end (``aggregate_clients``) its client-part
  update fails to reach the aggregator with :math:`p^a_i`. A failed event
  contributes nothing: a dropped client's params and optimizer state are
  unchanged for that step.

  Each probability is a float for every client, or None to read the
  cohort column ``Cohort.info[FAILURE_INFO[name]]`` [C] (0 when absent).

  ``compensation``:
    * ``'none'``: failures are dropped silently: the server's weights are
      renormalized over the clients that sent, client steps are plain, and
      the aggregate is over the updates that arrived (slightly biased).
    * ``'inverse_probability'``: the spec's unbiased scaling: server weight
      :math:`w_i \mathbb{1}(s^u_i)/(1 - p^u_i)`, client gradient scaled by
      :math:`\mathbb{1}(s^u)\mathbb{1}(s^d)/((1-p^u)(1-p^d))`, and the
      aggregate :math:`w \leftarrow w - \sum_i \omega_i \mathbb{1}(s^a_i)
      / (1 - p^a_i) \, (w - w_i)` over updates (never raw weights).
  """
  upload: float | None = None
  download: float | None = 0.
  aggregation: float | None = 0.
  compensation: str = 'none'


def check_failures(failures: Failures | None) -> None:
  if failures is None:
    return
  if not isinstance(failures, Failures):
    raise TypeError(f'failures must be a split.Failures, got '
                    f'{type(failures).__name__}.')
  for name in ('upload', 'download', 'aggregation'):
    value = getattr(failures, name)
    if value is not None:
      check_number(f'Failures.{name}', value, low=0, high=1, high_open=True)
  if failures.compensation not in COMPENSATIONS:
    raise ValueError(f'Unknown Failures.compensation '
                     f'{failures.compensation!r}; valid choices: '
                     f'{", ".join(COMPENSATIONS)}.')


def _failure_probs(failures: Failures | None, cohort: core.Cohort
                  ) -> dict[str, jax.Array]:
  num = cohort.client_ids.shape[0]
  probs = {}
  for name, column in FAILURE_INFO.items():
    value = None if failures is None else getattr(failures, name)
    if value is None:
      value = cohort.info.get(column, 0.) if failures is not None else 0.
    probs[name] = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (num,))
  return probs


def _survives(keys, event: int, step, prob):
  """bool [C]: client i's event (1 upload, 2 download, 3 aggregation) ok."""
  def one(key, p):
    k = jax.random.fold_in(jax.random.fold_in(key, event), step)
    return jax.random.uniform(k) >= p
  return jax.vmap(one)(keys, prob)


def step_weights(weighting: str, num_examples: jax.Array,
                 row_mask: jax.Array) -> jax.Array:
  """Unnormalized client weights of a step [C] (``core.WEIGHTINGS``).

  ``'num_examples'``: n_i (spec 3.2's :math:`n_i / \\sum_j n_j`);
  ``'examples_processed'``: the real rows of this step's batch;
  ``'uniform'``: 1. Zero for a client whose step batch is all padding.
  """
  count = jnp.sum(row_mask, axis=1)
  value = {'num_examples': jnp.asarray(num_examples, jnp.float32),
           'examples_processed': count,
           'uniform': jnp.ones_like(count)}[weighting]
  return jnp.where(count > 0, value, 0.)


def _normalize(w):
  total = jnp.sum(w)
  return w / jnp.where(total > 0, total, 1.)


def label_loss(out: jax.Array, target) -> tuple[jax.Array, dict]:
  """ONE client's masked-mean cross-entropy of logits ``out`` [B, K]."""
  y, mask = target
  loss = clients_lib.masked_mean(
      clients_lib.per_example_cross_entropy(out, y), mask)
  correct = (jnp.argmax(out, -1) == y).astype(jnp.float32)
  return loss, {'accuracy': clients_lib.masked_mean(correct, mask)}


def _loss_grads(loss_fn):
  """(out, target) -> (d loss / d out, {'loss', 'accuracy'})."""
  def fn(out, target):
    (loss, metrics), delta = jax.value_and_grad(loss_fn, has_aux=True)(
        out, target)
    return delta, {'loss': loss, **metrics}
  return fn


def _tail_grads(tail_apply):
  """U-shaped: the client's tail gives the server output's gradient."""
  def loss(out, tail_params, y, mask):
    return label_loss(tail_apply(tail_params, out), (y, mask))

  def fn(out, target):
    tail_params, y, mask = target
    (value, metrics), (delta, tail_grads) = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(out, tail_params, y, mask)
    return delta, {'loss': value, **metrics, 'tail_grads': tail_grads}
  return fn


class _Parts(NamedTuple):
  """How a variant's client part relates to the unsplit params."""
  from_full: Callable[[Params], PyTree]  # full -> client part.
  to_full: Callable[[PyTree, Params], Params]  # (client part, server).
  server_from_full: Callable[[Params], Params]


def _parts(model: _models.SplitModel, client_side: str,
           aux: _models.AuxHead | None) -> _Parts:
  if client_side == 'tail':
    return _Parts(
        lambda full: (model.split_params(full)[0],
                      model.split_params(full)[2]),
        lambda part, server: model.merge_params(part[0], server, part[1]),
        lambda full: model.split_params(full)[1])
  if client_side == 'local':
    return _Parts(
        lambda full: (model.split_params(full)[0], aux.init()),
        lambda part, server: model.merge_params(part[0], server),
        lambda full: model.split_params(full)[1])
  return _Parts(lambda full: model.split_params(full)[0],
                lambda part, server: model.merge_params(part, server),
                lambda full: model.split_params(full)[1])


def split_algorithm(
    model: _models.SplitModel,
    client_optimizer: optax.GradientTransformation,
    server_optimizer: optax.GradientTransformation,
    server_rule: ServerRule | None = None,
    *,
    client_side: str = 'backprop',
    schedule: str = 'parallel',
    aggregate_clients: bool = False,
    weighting: str = 'num_examples',
    failures: Failures | None = None,
    aux_seed: int = 0,
    execution: core.Execution | str | None = None,
) -> core.FederatedAlgorithm:
  """The split-learning round: the shared step builder of every variant.

  Args:
    model: a `SplitModel` (U-shaped for ``client_side='tail'``).
    client_optimizer: the clients' optax optimizer (fresh each round).
    server_optimizer: the server's optax optimizer.
    server_rule: a `ServerRule`; default ``joint_server(server_optimizer)``.
    client_side: one of `CLIENT_SIDES` (module docstring).
    schedule: one of `SCHEDULES` (module docstring).
    aggregate_clients: FedAvg the client parts at the round's end (the
      part then lives in the state), else keep one per client (store).
    weighting: ``core.WEIGHTINGS``: the server's per-step client weights
      (`step_weights`) and the round-end aggregation weights
      (`core.weigh_clients`).
    failures: unstable participation (`Failures`), None for none.
    aux_seed: the seed of the auxiliary head's init (``'local'``).
    execution: the run's `core.Execution` (how clients are mapped).

  Returns:
    A `core.FederatedAlgorithm` whose state is a `SplitState`; its
    ``model_params`` is the unsplit model's params. Round metrics:
    ``train_loss`` / ``train_accuracy`` (the task loss, weighted by real
    examples sent), ``local_steps``, ``participation`` (sent / possible
    client steps), the bytes of `split._cost.round_bytes`, and the rule's.
  """
  from fedjax_ext.split import _cost  # pylint: disable=g-import-not-at-top
  if client_side not in CLIENT_SIDES:
    raise ValueError(f'Unknown client_side {client_side!r}; valid choices: '
                     f'{", ".join(CLIENT_SIDES)}.')
  if schedule not in SCHEDULES:
    raise ValueError(f'Unknown schedule {schedule!r}; valid choices: '
                     f'{", ".join(SCHEDULES)}.')
  if (client_side == 'tail') != (model.tail_apply is not None):
    raise ValueError("client_side='tail' needs a U-shaped SplitModel "
                     '(split_model(..., tail_cut=...)) and vice versa; got '
                     f'client_side={client_side!r}, tail_cut='
                     f'{model.tail_cut}.')
  core.check_weighting(weighting)
  check_failures(failures)
  execution = core.as_execution(execution)
  server_rule = server_rule or joint_server(server_optimizer)
  if schedule == 'sequential' and (server_rule.per_client or
                                   aggregate_clients):
    raise ValueError("schedule='sequential' (vanilla SL) relays one client "
                     'part: use a shared-model server rule and '
                     'aggregate_clients=False.')
  aux = _models.aux_head(model, aux_seed) if client_side == 'local' else None
  parts = _parts(model, client_side, aux)
  keep_per_client = not aggregate_clients and schedule == 'parallel'
  compensate = (failures is not None and
                failures.compensation == 'inverse_probability')

  if client_side == 'tail':
    output_grads, output_loss = _tail_grads(model.tail_apply), None
  else:
    output_grads, output_loss = _loss_grads(label_loss), label_loss
  ctx = StepContext(model.server_apply, output_grads, output_loss,
                    client_side != 'local', execution)

  def head(part):
    return part[0] if client_side in ('tail', 'local') else part

  def local_loss_grads(part, x, y, mask):
    """Decoupled SL: the client's own aux-head loss and its gradient."""
    def loss(p):
      acts = model.client_apply(p[0], x)
      value, metrics = label_loss(aux.apply(p[1], acts), (y, mask))
      return value, (acts, metrics)
    (value, (acts, _)), grads = jax.value_and_grad(loss, has_aux=True)(part)
    return jax.lax.stop_gradient(acts), grads, value

  def one_step(carry, inputs):
    """One step of the parallel schedule on the cohort rows [C, B, ...]."""
    part, opt_state, server = carry
    s, batch, keys, base, probs = inputs
    mask = batch['mask']
    has_data = jnp.sum(mask, axis=1) > 0
    uploaded = _survives(keys, 1, s, probs['upload'])
    downloaded = _survives(keys, 2, s, probs['download'])
    sent = has_data & uploaded
    updated = sent & downloaded
    weights = step_weights(weighting, base, mask)
    if compensate:
      weights = _normalize(weights) * sent / (1. - probs['upload'])
    else:
      weights = _normalize(weights * sent)
    metrics = {}
    if client_side == 'local':
      acts, grads, aux_loss = core.map_clients(
          local_loss_grads, part, batch['x'], batch['y'], mask,
          execution=execution)
      metrics['train_aux_loss'] = aux_loss
    else:
      acts, pulls = core.map_clients(
          lambda p, x: jax.vjp(lambda q: model.client_apply(q, x), p),
          head(part), batch['x'], execution=execution)
    targets = ((part[1], batch['y'], mask) if client_side == 'tail'
               else (batch['y'], mask))
    server, act_grads, out_aux, server_metrics = server_rule.step(
        ctx, server, acts, targets, weights, sent, mask,
        jax.random.fold_in(keys[0], s))
    if client_side != 'local':
      scale = jnp.ones_like(weights)
      if compensate:
        scale = 1. / ((1. - probs['upload']) * (1. - probs['download']))
      act_grads = act_grads * _expand(scale, act_grads)
      grads = core.map_clients(lambda pull, g: pull(g)[0], pulls, act_grads,
                               execution=execution)
      if client_side == 'tail':
        tail_scale = jax.tree.map(lambda g: g * _expand(scale, g),
                                  out_aux['tail_grads'])
        grads = (grads, tail_scale)
    new = core.map_clients(
        lambda p, st, g: _optimizer_step(client_optimizer, p, st, g),
        part, opt_state, grads, execution=execution)
    part, opt_state = jax.tree.map(
        lambda a, b: jnp.where(_expand(updated, a), a, b), new,
        (part, opt_state))
    count = jnp.sum(mask, axis=1) * sent
    metrics.update(loss=out_aux['loss'], accuracy=out_aux['accuracy'],
                   count=count, sent=sent.astype(jnp.float32),
                   possible=has_data.astype(jnp.float32))
    return (part, opt_state, server), (metrics, server_metrics)

  def run_steps(part, server, batches, keys, base, probs):
    """lax.scan over the S steps of the cohort's batches [C, S, B, ...]."""
    opt_state = core.map_clients(client_optimizer.init, part,
                                 execution=execution)
    per_step = jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), batches)
    num_steps = batches['mask'].shape[1]
    step = lambda carry, xs: one_step(carry, xs + (keys, base, probs))
    if jax.default_backend() == 'cpu':  # Conv gradients in the loop body.
      step = core.canonicalize_convs(step)
    (part, _, server), (metrics, server_metrics) = jax.lax.scan(
        step, (part, opt_state, server), (jnp.arange(num_steps), per_step),
        unroll=1 if execution.unroll == 'auto' else execution.unroll)
    return part, server, metrics, server_metrics

  def init(params: Params) -> SplitState:
    server = parts.server_from_full(params)
    client = () if keep_per_client else parts.from_full(params)
    return SplitState(client, server, server_optimizer.init(server),
                      server_rule.init(server), jnp.zeros((), jnp.int32))

  def init_client_state(params: Params) -> PyTree:
    return parts.from_full(params) if keep_per_client else ()

  def aggregate(global_params, locals_, weights, survived, p_fail):
    updates = jax.tree.map(lambda g, l: g[None] - l, global_params, locals_)
    if compensate:
      scaled = _normalize(weights) * survived / (1. - p_fail)
      mean = jax.tree.map(
          lambda u: jnp.tensordot(scaled.astype(u.dtype), u, axes=1),
          updates)
    else:
      mean = core.tree_weighted_mean(updates, weights * survived)
    return jax.tree.map(jnp.subtract, global_params, mean)

  def apply(state: SplitState, client_store: PyTree, cohort: core.Cohort,
            key: PRNGKey):
    _stages.check_cohort(cohort)
    num = cohort.client_ids.shape[0]
    keys = core.client_keys(key, state.round, cohort.client_ids)
    probs = _failure_probs(failures, cohort)
    base = cohort.num_examples
    server = ServerCarry(state.server_params, state.server_opt_state,
                         state.algorithm_state)
    if server_rule.per_client:
      copies = core.tree_broadcast(state.server_params, num)
      server = ServerCarry(copies, core.map_clients(
          server_optimizer.init, copies, execution=execution),
                           state.algorithm_state)
    if schedule == 'sequential':
      def one_client(carry, inputs):
        part, server = carry
        batches, k, n, p = inputs
        one = lambda t: jax.tree.map(lambda v: v[None], t)
        part, server, m, sm = run_steps(
            one(part), server, one(batches), one(k), one(n), one(p))
        return (jax.tree.map(lambda v: v[0], part), server), (m, sm)

      (part, server), (metrics, server_metrics) = jax.lax.scan(
          one_client, (state.client_params, server),
          (cohort.batches, keys, base, probs))
      # [C, S, 1] -> [S, C] like the parallel schedule's.
      metrics = jax.tree.map(lambda v: jnp.swapaxes(v[:, :, 0], 0, 1),
                             metrics)
      new_client = part
    else:
      if keep_per_client:
        part = core.tree_gather(client_store, cohort.rows())
      else:
        part = core.tree_broadcast(state.client_params, num)
      part, server, metrics, server_metrics = run_steps(
          part, server, cohort.batches, keys, base, probs)
      processed = jnp.sum(metrics['count'], axis=0)  # [C]
      round_w = core.weigh_clients(
          core.ClientOutput((), processed, (), {}), cohort,
          weighting).weight
      agg_ok = _survives(keys, 3, 0, probs['aggregation'])
      if keep_per_client:
        client_store = core.tree_scatter(client_store, cohort.rows(),
                                         part)
        new_client = ()
      else:
        new_client = aggregate(state.client_params, part, round_w,
                               agg_ok, probs['aggregation'])
      if server_rule.per_client:
        server = server._replace(
            params=aggregate(state.server_params, server.params, round_w,
                             jnp.ones_like(agg_ok), jnp.zeros_like(round_w)),
            opt_state=state.server_opt_state)
    new_state = SplitState(new_client, server.params, server.opt_state,
                           server.algorithm_state, state.round + 1)
    count = metrics['count']
    seen = jnp.maximum(jnp.sum(count), 1.)
    out = {'train_loss': jnp.sum(metrics['loss'] * count) / seen,
           'train_accuracy': jnp.sum(metrics['accuracy'] * count) / seen,
           'local_steps': jnp.mean(jnp.sum(metrics['sent'], axis=0)),
           'participation': jnp.sum(metrics['sent']) / jnp.maximum(
               jnp.sum(metrics['possible']), 1.)}
    if 'train_aux_loss' in metrics:
      out['train_aux_loss'] = jnp.sum(
          metrics['train_aux_loss'] * count) / seen
    out.update({k: jnp.mean(v) for k, v in server_metrics.items()})
    out.update(_cost.round_bytes(
        model, cohort, client_side=client_side, schedule=schedule,
        aggregate_clients=aggregate_clients,
        phi=server_rule.phi,
        client_part=(state.client_params if not keep_per_client else
                     jax.tree.map(lambda v: v[0], client_store)),
        server_copies=server_rule.per_client,
        server_params=state.server_params,
        steps_sent=jnp.sum(metrics['sent'], axis=0)))
    return new_state, client_store, out

  def model_params(state: SplitState, client_store: PyTree) -> Params:
    part = state.client_params
    if keep_per_client:
      part = jax.tree.map(lambda v: jnp.mean(v, axis=0), client_store)
    return parts.to_full(part, state.server_params)

  return core.FederatedAlgorithm(init, init_client_state, apply,
                                 model_params)
