r"""Split-learning variants, each a short function on `split_algorithm`.

Every variant returns a `core.FederatedAlgorithm` (state `SplitState`) that
`training.run_rounds` runs unchanged. ``model`` is a `SplitModel`
(`split_model`), optimizers are optax ``GradientTransformation``s.

=====================  ==================  ==============  ===============
variant                server rule         client side     client parts
=====================  ==================  ==============  ===============
`vanilla_sl`           one model           backprop        relayed
`sfl_v1`               per-client copies   backprop        FedAvg
`sfl_v2`               one model, in turn  backprop        FedAvg
`psl`                  one model, joint    backprop        kept (flag)
`epsl`                 joint, phi          backprop        kept (flag)
`local_loss_sl`        joint, no grads     local aux head  FedAvg (flag)
`gapsl`                joint, aligned      backprop        kept
`ushaped_psl`          joint               tail (labels)   kept (flag)
`unstable_sfl`         joint + failures    backprop        FedAvg (flag)
=====================  ==================  ==============  ===============
"""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import optax

from fedjax_ext import core
from fedjax_ext._src.checks import check_number
from fedjax_ext.split import _models
from fedjax_ext.split import _round
from fedjax_ext.split._round import Failures
from fedjax_ext.split._round import ServerRule
from fedjax_ext.split._round import split_algorithm

GAPSL_LEADERS = ('threshold', 'top_fraction')
GAPSL_ALIGNMENTS = ('rotate', 'project', 'regularize')


def vanilla_sl(model: _models.SplitModel,
               client_optimizer: optax.GradientTransformation,
               server_optimizer: optax.GradientTransformation, *,
               execution=None) -> core.FederatedAlgorithm:
  """Vanilla split learning: ONE client part relayed from client to client.

  Clients train in cohort order (a `lax.scan` over clients): client i
  receives the client part from client i - 1, runs its S steps with the
  one server model, and passes the part on (Gupta & Raskar, "Distributed
  learning of deep neural network over multiple agents", arXiv
  1810.06060; Vepakomma et al., arXiv 1812.00564).
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         schedule='sequential', execution=execution)


def sfl_v1(model: _models.SplitModel,
           client_optimizer: optax.GradientTransformation,
           server_optimizer: optax.GradientTransformation, *,
           weighting: str = 'num_examples',
           execution=None) -> core.FederatedAlgorithm:
  """SplitFed V1: per-client server copies; both sides FedAvg'd.

  Each client's pair (client part, server copy) trains like a FedAvg
  client on its own data; at the round's end both are averaged by the
  round's weights (Thapa et al., "SplitFed", arXiv 2004.12088). With plain
  SGD this IS FedAvg of the unsplit model (tested). ``server_optimizer``
  is each copy's local optimizer, fresh every round.
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         _round.copies_server(server_optimizer),
                         aggregate_clients=True, weighting=weighting,
                         execution=execution)


def sfl_v2(model: _models.SplitModel,
           client_optimizer: optax.GradientTransformation,
           server_optimizer: optax.GradientTransformation, *,
           weighting: str = 'num_examples',
           execution=None) -> core.FederatedAlgorithm:
  """SplitFed V2: one server model over the clients in turn; FedAvg clients.

  Each step the server takes one step per client, in cohort order, on
  that client's activations (`sequential_server`); client parts are
  FedAvg'd at the round's end (Thapa et al., arXiv 2004.12088).
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         _round.sequential_server(server_optimizer),
                         aggregate_clients=True, weighting=weighting,
                         execution=execution)


def psl(model: _models.SplitModel,
        client_optimizer: optax.GradientTransformation,
        server_optimizer: optax.GradientTransformation, *,
        aggregate_clients: bool = False, weighting: str = 'num_examples',
        execution=None) -> core.FederatedAlgorithm:
  r"""Parallel split learning: one server step on all clients' activations.

  :math:`w_s \leftarrow w_s - \eta \sum_i (n_i / \sum_j n_j) g_i`, each
  client stepping on its own :math:`\delta_i` (spec 3.2; Jeon & Kim,
  "Privacy-sensitive parallel split learning", ICOIN 2020). Client parts
  are never aggregated by default (as Lin et al.'s PSL, spec 3.1); with
  ``aggregate_clients=True`` they are FedAvg'd every round.
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         aggregate_clients=aggregate_clients,
                         weighting=weighting, execution=execution)


def epsl(model: _models.SplitModel,
         client_optimizer: optax.GradientTransformation,
         server_optimizer: optax.GradientTransformation, *,
         phi: float = 0.5, aggregate_clients: bool = False,
         weighting: str = 'num_examples',
         execution=None) -> core.FederatedAlgorithm:
  """EPSL: PSL with last-layer gradient aggregation of ratio `phi`.

  Lin et al., "Efficient Parallel Split Learning over Resource-constrained
  Wireless Edge Networks", arXiv 2303.15991 (spec 5a; the backprop through
  the aggregated rows is the [I] reconstruction of `joint_server`).
  ``phi`` = 0 is `psl` exactly. Whether EPSL also FedAvgs the client parts
  is unconfirmed: a flag, off by default.
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         _round.joint_server(server_optimizer, phi=phi),
                         aggregate_clients=aggregate_clients,
                         weighting=weighting, execution=execution)


def local_loss_sl(model: _models.SplitModel,
                  client_optimizer: optax.GradientTransformation,
                  server_optimizer: optax.GradientTransformation, *,
                  aggregate_clients: bool = True, aux_seed: int = 0,
                  weighting: str = 'num_examples',
                  execution=None) -> core.FederatedAlgorithm:
  r"""Decoupled split learning via an auxiliary loss: no gradient comes back.

  Client: :math:`z = f_c(x)`, loss :math:`CE(a_\phi(z), y)` with the
  auxiliary head `aux_head` (pool + linear), one ``client_optimizer`` step
  on :math:`(\theta_c, \phi)`; it sends :math:`(\mathrm{sg}(z), y)`.
  Server: :math:`CE(f_s(z), y)`, a step on :math:`\theta_s` only; the
  gradient stops at z and nothing is sent down (Zihad et al., arXiv
  2601.19261, spec 2; the head and schedule are [I]). The client scheduling
  is unknown in the paper: clients run in parallel and their parts
  (client part + aux head) are FedAvg'd by default (one shared
  :math:`f_c`), or kept per client with ``aggregate_clients=False``.
  Inference uses :math:`f_s(f_c(x))`; the aux head is not in
  ``model_params``.
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         client_side='local',
                         aggregate_clients=aggregate_clients,
                         aux_seed=aux_seed, weighting=weighting,
                         execution=execution)


def ushaped_psl(model: _models.SplitModel,
                client_optimizer: optax.GradientTransformation,
                server_optimizer: optax.GradientTransformation, *,
                aggregate_clients: bool = False,
                weighting: str = 'num_examples',
                execution=None) -> core.FederatedAlgorithm:
  """U-shaped parallel split learning: labels and the loss stay on clients.

  ``model`` is cut U-shaped (``split_model(..., tail_cut=t)``): the client
  runs its head, the server its body on the stacked activations and
  returns the body's output; each client's tail computes the loss and
  sends the output gradient up; the server steps and returns the
  activation gradients (Vepakomma et al., arXiv 1812.00564, "U-shaped
  configuration"). The server's only inputs are activations and output
  gradients.
  """
  return split_algorithm(model, client_optimizer, server_optimizer,
                         client_side='tail',
                         aggregate_clients=aggregate_clients,
                         weighting=weighting, execution=execution)


def unstable_sfl(model: _models.SplitModel,
                 client_optimizer: optax.GradientTransformation,
                 server_optimizer: optax.GradientTransformation, *,
                 drop_prob: float | None = None,
                 download_drop_prob: float | None = 0.,
                 aggregation_drop_prob: float | None = 0.,
                 compensation: str = 'inverse_probability',
                 aggregate_clients: bool = True,
                 weighting: str = 'num_examples',
                 execution=None) -> core.FederatedAlgorithm:
  """Split FL with unstable participation (Wei et al., arXiv 2509.17398).

  The PSL step (one server model, joint update) with per-client,
  per-step activation-upload failures (``drop_prob``; None reads
  ``Cohort.info['drop_prob']``, default 0), gradient-download failures and
  round-end aggregation failures, handled as `Failures` documents (spec
  4.3 [I]; ``compensation='inverse_probability'`` is the paper's
  :math:`\\mathbb{1}(s)/(1-p)` scaling, ``'none'`` drops failures
  silently). Client parts are FedAvg'd (SFL) by default. Drop
  probabilities 0 give `psl` with the same ``aggregate_clients``.
  """
  failures = Failures(drop_prob, download_drop_prob, aggregation_drop_prob,
                      compensation)
  return split_algorithm(model, client_optimizer, server_optimizer,
                         aggregate_clients=aggregate_clients,
                         failures=failures, weighting=weighting,
                         execution=execution)


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _cos(a, b, eps=1e-24):
  """Cosine with norms sqrt(|x|^2 + eps): differentiable at zero."""
  norm = lambda x: jnp.sqrt(jnp.sum(x * x) + eps)
  return jnp.dot(a, b) / (norm(a) * norm(b))


def gapsl_server(optimizer: optax.GradientTransformation, *,
                 leader: str = 'threshold', tau: float = 0.,
                 rho: float = 0.5, zeta: float = 0.9, lam: float = 0.5,
                 alignment: str = 'rotate') -> ServerRule:
  r"""GAPSL's server: leader gradient identification + direction alignment.

  Lin et al., "GAPSL: A Gradient-Aligned Parallel Split Learning on
  Heterogeneous Data", arXiv 2603.18540. The formulas are the spec's [I]
  reconstruction (section 3.3); every open choice is an argument.

  Per step, from the per-client server gradients :math:`g_i =
  \nabla_{w_s}\ell_i` (one vmapped backward; flattened):

  * LGI: :math:`C_{ij} = \cos(g_i, g_j)`, :math:`\mathrm{score}_i =
    \mathrm{mean}_{j \ne i} C_{ij}` over the clients that sent; leaders
    :math:`\Lambda` = ``{score >= tau}`` (``leader='threshold'``) or the
    top :math:`\lceil \rho N \rceil` (``'top_fraction'``); an empty set
    falls back to all senders. :math:`g_L = \sum_\Lambda w_i g_i /
    \sum_\Lambda w_i`, smoothed :math:`\bar g_L \leftarrow \zeta \bar g_L +
    (1 - \zeta) g_L` (``zeta``; kept in ``algorithm_state`` across steps
    and rounds).
  * GDA (``alignment``):
    ``'rotate'`` (option A): :math:`c_i = \cos(g_i, \bar g_L)`,
    :math:`\alpha_i = \lambda (1 - c_i) / 2`, :math:`\hat g_i = (1 -
    \alpha_i) g_i + \alpha_i (\|g_i\| / \|\bar g_L\|) \bar g_L`;
    ``'project'`` (PCGrad, spec's option C): when :math:`c_i < 0`,
    :math:`\hat g_i = g_i - \lambda (\langle g_i, \bar g_L\rangle /
    \|\bar g_L\|^2) \bar g_L` (:math:`\lambda` = 1 is PCGrad's full
    projection; the factor makes ``lam`` = 0 PSL for every option);
    ``'regularize'`` (option B): :math:`\tilde\ell_i = \ell_i + \lambda (1
    - \cos(\nabla_{w_s}\ell_i, \mathrm{sg}(\bar g_L)))` differentiated
    (double backprop) w.r.t. both :math:`w_s` and :math:`a_i`, so the
    alignment also reaches the client parts.
  * :math:`w_s \leftarrow` ``optimizer`` step on :math:`\sum_i w_i \hat
    g_i`. With options A and C the activation gradients are PSL's.

  ``lam`` = 0 is PSL. Metrics: ``gapsl_mean_cosine`` (mean pairwise cosine
  of the senders' :math:`g_i`, spec 3.5) and ``gapsl_leaders``.
  """
  if leader not in GAPSL_LEADERS:
    raise ValueError(f'Unknown leader {leader!r}; valid choices: '
                     f'{", ".join(GAPSL_LEADERS)}.')
  if alignment not in GAPSL_ALIGNMENTS:
    raise ValueError(f'Unknown alignment {alignment!r}; valid choices: '
                     f'{", ".join(GAPSL_ALIGNMENTS)}.')
  tau = check_number('tau', tau, low=-1, high=1)
  rho = check_number('rho', rho, low=0, high=1, low_open=True)
  zeta = check_number('zeta', zeta, low=0, high=1, high_open=True)
  lam = check_number('lam', lam, low=0, high=1)

  def init(server_params):
    return {'leader': jax.tree.map(jnp.zeros_like, server_params)}

  def step(ctx, carry, acts, targets, weights, active, row_mask, key):
    del row_mask, key
    params = carry.params
    if alignment == 'regularize' and ctx.output_loss is None:
      raise ValueError("gapsl alignment='regularize' needs the loss on the "
                       'server (not U-shaped SL).')

    def per_client(a, target):
      out, pull = jax.vjp(ctx.server_apply, params, a)
      delta, aux = ctx.output_grads(out, target)
      grads, act_grads = pull(delta)
      return grads, act_grads, aux

    grads, act_grads, aux = jax.vmap(per_client)(acts, targets)
    _, unravel = ravel_pytree(params)
    flat = jax.vmap(_flat)(grads)  # [C, D]
    num = flat.shape[0]
    norms = jnp.linalg.norm(flat, axis=1)
    cosine = (flat @ flat.T) / jnp.maximum(norms[:, None] * norms[None],
                                           1e-12)
    pair = active[:, None] & active[None] & ~jnp.eye(num, dtype=bool)
    senders = jnp.sum(active)
    score = jnp.sum(jnp.where(pair, cosine, 0.), axis=1) / jnp.maximum(
        senders - 1, 1)
    if leader == 'threshold':
      leaders = active & (score >= tau)
    else:
      ranked = jnp.where(active, score, -jnp.inf)
      rank = jnp.argsort(jnp.argsort(-ranked))
      leaders = active & (rank < jnp.ceil(rho * senders))
    leaders = jnp.where(jnp.any(leaders), leaders, active)
    lw = weights * leaders
    g_lead = (lw @ flat) / jnp.maximum(jnp.sum(lw), 1e-30)
    previous = _flat(carry.algorithm_state['leader'])
    g_bar = zeta * previous + (1. - zeta) * g_lead
    bar_norm = jnp.maximum(jnp.linalg.norm(g_bar), 1e-12)
    c = (flat @ g_bar) / jnp.maximum(norms * bar_norm, 1e-12)
    if alignment == 'rotate':
      alpha = lam * (1. - c) / 2.
      aligned = ((1. - alpha)[:, None] * flat +
                 (alpha * norms / bar_norm)[:, None] * g_bar[None])
    elif alignment == 'project':
      coef = jnp.where(c < 0, lam * (flat @ g_bar) / bar_norm**2, 0.)
      aligned = flat - coef[:, None] * g_bar[None]
    else:
      lead_tree = unravel(jax.lax.stop_gradient(g_bar))

      def regularized(p, a, target):
        loss_fn = lambda q: ctx.output_loss(ctx.server_apply(q, a),
                                            target)[0]
        g = jax.grad(loss_fn)(p)
        return loss_fn(p) + lam * (1. - _cos(_flat(g), _flat(lead_tree)))

      reg_grads, act_grads = jax.vmap(
          jax.grad(regularized, argnums=(0, 1)), in_axes=(None, 0, 0))(
              params, acts, targets)
      aligned = jax.vmap(_flat)(reg_grads)
      act_grads = jnp.where(_round._expand(active, act_grads), act_grads,  # pylint: disable=protected-access
                            0.)
    aligned = jnp.where(active[:, None], aligned, 0.)
    total = unravel(weights @ aligned)
    new_params, opt_state = _round._optimizer_step(  # pylint: disable=protected-access
        optimizer, params, carry.opt_state, total)
    new = carry._replace(params=new_params, opt_state=opt_state,
                         algorithm_state={'leader': unravel(g_bar)})
    mean_cos = jnp.sum(jnp.where(pair, cosine, 0.)) / jnp.maximum(
        senders * (senders - 1), 1)
    metrics = {'gapsl_mean_cosine': mean_cos,
               'gapsl_leaders': jnp.sum(leaders).astype(jnp.float32)}
    new = _round._select(jnp.any(active), new, carry)  # pylint: disable=protected-access
    return (new, act_grads if ctx.need_act_grads else None, aux, metrics)

  return ServerRule(init, step)


def gapsl(model: _models.SplitModel,
          client_optimizer: optax.GradientTransformation,
          server_optimizer: optax.GradientTransformation, *,
          leader: str = 'threshold', tau: float = 0., rho: float = 0.5,
          zeta: float = 0.9, lam: float = 0.5, alignment: str = 'rotate',
          aggregate_clients: bool = False, weighting: str = 'num_examples',
          execution=None) -> core.FederatedAlgorithm:
  """GAPSL: PSL with `gapsl_server`'s aligned update.

  Client parts are kept per client (PSL is aggregation-free, spec 3.1);
  ``aggregate_clients=True`` FedAvgs them every round.
  """
  return split_algorithm(
      model, client_optimizer, server_optimizer,
      gapsl_server(server_optimizer, leader=leader, tau=tau, rho=rho,
                   zeta=zeta, lam=lam, alignment=alignment),
      aggregate_clients=aggregate_clients, weighting=weighting,
      execution=execution)
