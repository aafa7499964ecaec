r"""Zeroth-order gradient estimators as optax transforms: MeZO, sparse, CurvZO.

Each estimator is an `optax.GradientTransformationExtraArgs` whose
``update(updates, state, params, *, obj_fn)`` ignores the incoming
``updates``, evaluates the scalar objective ``obj_fn(params)`` twice per
direction, and returns a gradient *estimate* shaped like ``params``; chain it
with any optax transform (``optax.chain(zo.mezo(), optax.sgd(1e-3))``,
momentum, ``add_decayed_weights``...). The random key lives in the state
and is split every step.

Two-point SPSA (Spall 1992) as used by MeZO, with q directions
:math:`z_j` and step :math:`\epsilon`:

.. math::
  \delta_j = \frac{L(\theta + \epsilon z_j) - L(\theta - \epsilon z_j)}
                  {2\epsilon}, \qquad
  \hat g = \frac{1}{q} \sum_{j=1}^q \delta_j z_j ,

unbiased for the gradient of a Gaussian-smoothed :math:`L` (up to
:math:`O(\epsilon^2)` for smooth :math:`L`) when
:math:`\mathbb{E}[z z^\top] = I` (Gaussian or Rademacher :math:`z`).

**Seed replay.** The directions are regenerated from the step's key, never
kept: the state holds only the key and the q scalars
:math:`\delta_j` (``projected_grads``). Passing those scalars back through
``update(..., projected_grads=...)`` *instead of* ``obj_fn`` replays the
exact same update without any data, which is how a server rebuilds a
client's trajectory from (seed, scalar) uploads (`fedjax_ext.zo.replay`).
Within one compiled step XLA may still hold :math:`z` and
:math:`\theta \pm \epsilon z` as parameter-sized temporaries; nothing
parameter-sized survives the step, and the 2q evaluations run one after
the other (``sequential=True``) so their activations never coexist.

**Sparse ZO with Horvitz-Thompson correction.** Block :math:`b` (one
parameter leaf) is perturbed only if it is in the step's Poisson sample
:math:`S_t` (inclusion probability :math:`\pi_b`), and

.. math:: \hat g_b = \frac{1[b \in S_t]}{\pi_b}\,\frac1q\sum_j \delta_j z_{j,b},

which is unbiased because :math:`\mathbb{E}[1[b\in S_t]] = \pi_b`; without
the :math:`1/\pi_b` factor the mean is :math:`\pi_b g_b`.

**CurvZO** keeps a per-block score :math:`S_b` learnt from the scalar
feedback, samples with Poisson probability-proportional-to-size
:math:`\pi_b \propto S_b^{p}` at an expected budget of
:math:`K = \lfloor f n \rfloor` blocks, and re-estimates the fraction
:math:`f` every few steps (`adapt_budget`). Two score rules:

* ``'port'`` (default; the third-party port EkkoXy/AIM-ZO, derived from
  the authors' code, [C]): :math:`G \leftarrow (1-\beta_G) G + \beta_G
  |\bar\delta|`, :math:`e_b = \|z_b\|^2 / \pi_b^2` for sampled blocks,
  :math:`w_b = e_b / \sum_{S_t} e`,
  :math:`S_b \leftarrow (1-\beta) S_b + \beta\,(|\bar\delta| / G)\,w_b`,
  sampled with :math:`p = 1`.
* ``'paper'`` (the review's formula :math:`s_i = \delta^2 z_i^2`, [S-h];
  the block mean and the normalisation by the EMA :math:`G` of
  :math:`\delta^2` are **our reconstruction** [I]):
  :math:`S_b \leftarrow (1-\beta) S_b + \beta\,\overline{\delta^2}
  \|z_b\|^2 / (d_b G)` for sampled blocks, sampled with :math:`p = 1/2`
  (the paper's variance-optimal :math:`\pi \propto \sqrt{F}`).

The optional exploration mix :math:`\pi \leftarrow (1-\alpha)\pi + \alpha
K/n` is a reconstruction [I] of the port's unused ``sgs_alpha``; here
:math:`\alpha` is a fixed argument. Unlike the port we never force a block
into an empty sample (that would change the inclusion probabilities and bias
the Horvitz-Thompson estimate); an empty sample gives a zero update.

**Cold start.** The port's initial state (:math:`S_b = 0.01`,
:math:`G = 10^{-8}`, no bias correction) makes the first steps'
probabilities extreme: the first step's signal :math:`|\bar\delta|/G` is
:math:`1/\beta_G` times its steady value, the largest sampled block jumps
~100x above the rest, and their :math:`\pi_b` fall to a few percent until
the 1/π²-weighted energy share of a rare draw lifts them. The learnt part of the state is a `SamplerState`
(`sampler_state`, `with_sampler_state`); a federated server carries its
cohort mean across rounds so that clients do not restart cold every round
(`fedjax_ext.zo.zo_fed_avg`, our design [I]).

References:
  Malladi et al., `Fine-Tuning Language Models with Just Forward Passes
  <https://arxiv.org/abs/2305.17333>`_, NeurIPS 2023 (MeZO).

  Spall, `Multivariate stochastic approximation using a simultaneous
  perturbation gradient approximation
  <https://doi.org/10.1109/9.119632>`_, IEEE TAC 1992 (SPSA).

  Horvitz and Thompson, `A generalization of sampling without replacement
  from a finite universe <https://doi.org/10.1080/01621459.1952.10483446>`_,
  JASA 1952.

  Wang, Chen and Tang, `CurvZO: Curvature-guided sparse zeroth-order
  fine-tuning <https://arxiv.org/abs/2603.21725>`_, ICML 2026.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext.core import Params, PRNGKey, PyTree
from fedjax_ext.zo import _sampling

DISTRIBUTIONS = ('gaussian', 'rademacher')
SAMPLINGS = ('uniform', 'curvature')
SCORE_RULES = ('port', 'paper')

_SAMPLERS = {'gaussian': jax.random.normal,
             'rademacher': jax.random.rademacher}


class MeZOState(NamedTuple):
  """State of `mezo`: a key and the last step's scalars."""
  key: PRNGKey  # Split every step; the step key regenerates the z_j.
  projected_grads: jax.Array  # float32 [q]: the last step's delta_j.
  loss: jax.Array  # float32: mean of (L+ + L-)/2 last step; 0 if replayed.


class SparseZOState(NamedTuple):
  """State of `sparse_zo` / `curvzo`: one float per block plus scalars."""
  key: PRNGKey
  projected_grads: jax.Array  # float32 [q]: the last step's delta_j.
  loss: jax.Array  # float32: mean of (L+ + L-)/2 last step; 0 if replayed.
  count: jax.Array  # int32: steps taken.
  scores: jax.Array  # float32 [n]: per-block score S_b (n = param leaves).
  feedback_scale: jax.Array  # float32: G, EMA of |delta| or delta^2.
  budget: jax.Array  # float32: f, expected fraction of blocks perturbed.
  probs: jax.Array  # float32 [n]: the last step's inclusion probabilities.
  mask: jax.Array  # bool [n]: the last step's sampled blocks.


class SamplerState(NamedTuple):
  """What a sparse estimator learns across steps: its block sampler.

  The fields of `SparseZOState` that persist from step to step (the key and
  the last step's scalars, probabilities and mask do not). A federated
  server carries it across rounds (`fedjax_ext.zo.zo_fed_avg`).
  """
  count: jax.Array  # int32: steps taken (phase of the budget schedule).
  scores: jax.Array  # float32 [n]: per-block score S_b.
  feedback_scale: jax.Array  # float32: G.
  budget: jax.Array  # float32: f.


ObjFn = Callable[[Params], jax.Array]


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
  if value not in choices:
    raise ValueError(f'Unknown {name} {value!r}; valid choices: '
                     f'{", ".join(choices)}.')


def _as_key(key: int | PRNGKey) -> PRNGKey:
  if isinstance(key, int):
    return jax.random.key(key)
  return key


def _check_args(params, obj_fn, projected_grads, name):
  if params is None:
    raise ValueError(f'params must be provided to the {name} update function.')
  if obj_fn is None and projected_grads is None:
    raise ValueError(f'obj_fn (or projected_grads, to replay a step) must be '
                     f'provided to the {name} update function.')


def direction(key: PRNGKey, params: Params,
              distribution: str = 'gaussian') -> Params:
  """The random direction z regenerated from `key` (one per leaf)."""
  return optax.tree.random_like(key, params, _SAMPLERS[distribution])


def _scale_blocks(tree: PyTree, factors: jax.Array) -> PyTree:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten(
      [x * factors[i].astype(x.dtype) for i, x in enumerate(leaves)])


def _block_sq_norms(tree: PyTree) -> jax.Array:
  return jnp.stack([jnp.sum(jnp.square(x.astype(jnp.float32)))
                    for x in jax.tree.leaves(tree)])


def _add_scaled(params: Params, scale: jax.Array, z: Params) -> Params:
  return jax.tree.map(lambda p, d: p + scale.astype(p.dtype) * d, params, z)


def _evaluate(obj_fn: ObjFn, params: Params, key: PRNGKey, *,
              num_directions: int, epsilon: float, distribution: str,
              perturb: jax.Array | None,
              sequential: bool) -> tuple[jax.Array, jax.Array]:
  """The 2q losses L(theta +- epsilon z_j): (plus [q], minus [q]).

  With `sequential`, one `lax.map` iteration per evaluation regenerates its
  z_j from the key, so only one forward pass's activations are alive at a
  time (XLA:CPU does not reuse the buffers of two unrolled forward passes;
  the memory test pins this). Otherwise the evaluations are unrolled.
  """

  def evaluate(i):
    j, sign = i // 2, 1 - 2 * (i % 2)
    z = direction(jax.random.fold_in(key, j), params, distribution)
    if perturb is not None:
      z = _scale_blocks(z, perturb)
    value = obj_fn(_add_scaled(params, jnp.float32(epsilon) * sign, z))
    return jnp.asarray(value, jnp.float32)

  indices = jnp.arange(2 * num_directions)
  if sequential:
    values = jax.lax.map(evaluate, indices)
  else:
    values = jnp.stack([evaluate(i) for i in range(2 * num_directions)])
  values = values.reshape((num_directions, 2))
  return values[:, 0], values[:, 1]


def _zo_core(params: Params, key: PRNGKey, *, obj_fn: ObjFn | None,
             projected_grads: jax.Array | None, num_directions: int,
             epsilon: float, distribution: str,
             perturb: jax.Array | None, sequential: bool):
  """Scalars, the unscaled mean of delta_j z_j and block norms ||z_jb||^2.

  `perturb` (float [n] of 0/1, or None for all) masks the blocks moved by
  the perturbation. With `projected_grads` given, no objective is
  evaluated: the same directions are regenerated and combined (replay).
  """
  if projected_grads is None:
    plus, minus = _evaluate(
        obj_fn, params, key, num_directions=num_directions, epsilon=epsilon,
        distribution=distribution, perturb=perturb, sequential=sequential)
    projected_grads = (plus - minus) / (2. * epsilon)
    loss = jnp.mean(0.5 * (plus + minus))
  else:
    projected_grads = jnp.asarray(projected_grads, jnp.float32).reshape(
        (num_directions,))
    loss = jnp.zeros((), jnp.float32)
  zs = [direction(jax.random.fold_in(key, j), params, distribution)
        for j in range(num_directions)]
  total = None
  for j, z in enumerate(zs):
    term = jax.tree.map(lambda x, pg=projected_grads[j]: pg.astype(x.dtype)
                        * x, z)
    total = term if total is None else jax.tree.map(jnp.add, total, term)
  if num_directions > 1:
    total = jax.tree.map(lambda x: x / num_directions, total)
  sq_norms = jnp.stack([_block_sq_norms(z) for z in zs])
  return projected_grads, loss, total, sq_norms


def mezo(*, epsilon: float = 1e-3, num_directions: int = 1,
         distribution: str = 'gaussian', sequential: bool = True,
         key: int | PRNGKey = 0) -> optax.GradientTransformationExtraArgs:
  r"""Dense two-point SPSA / MeZO gradient estimator (module docstring).

  Args:
    epsilon: perturbation size :math:`\epsilon` (MeZO: 1e-3).
    num_directions: q, directions averaged per step (MeZO: 1).
    distribution: ``'gaussian'`` (MeZO) or ``'rademacher'`` directions.
    sequential: run the 2q evaluations in a ``lax.map`` so that one forward
      pass's activations are alive at a time (inference-level memory);
      False unrolls them (may be faster for tiny models, more memory).
    key: initial PRNG key (or an int seed); split every step.

  Returns:
    A `GradientTransformationExtraArgs`; ``update(updates, state, params,
    *, obj_fn)`` returns the estimate :math:`\hat g` (``updates`` is
    ignored and may be None). ``projected_grads=`` [q] instead of
    ``obj_fn`` replays a step from its scalars.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(mezo(key=0), optax.sgd(0.1))
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> f = lambda p: jnp.sum(p['w'] ** 2)
    >>> updates, state = tx.update(None, state, params, obj_fn=f)
    >>> updates['w'].shape
    (3,)
  """
  _check_choice(distribution, DISTRIBUTIONS, 'distribution')
  if num_directions < 1:
    raise ValueError(f'num_directions must be >= 1, got {num_directions}.')
  if not epsilon > 0:
    raise ValueError(f'epsilon must be > 0, got {epsilon}.')

  def init_fn(params: Params) -> MeZOState:
    del params
    return MeZOState(key=_as_key(key),
                     projected_grads=jnp.zeros((num_directions,),
                                               jnp.float32),
                     loss=jnp.zeros((), jnp.float32))

  def update_fn(updates, state: MeZOState, params=None, *, obj_fn=None,
                projected_grads=None, **extra_args):
    del updates, extra_args
    _check_args(params, obj_fn, projected_grads, 'mezo')
    next_key, step_key = jax.random.split(state.key)
    pg, loss, estimate, _ = _zo_core(
        params, step_key, obj_fn=obj_fn, projected_grads=projected_grads,
        num_directions=num_directions, epsilon=epsilon,
        distribution=distribution, perturb=None, sequential=sequential)
    return estimate, MeZOState(key=next_key, projected_grads=pg, loss=loss)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sparse_zo(*, budget: float = 0.4, sampling: str = 'uniform',
              adaptive_budget: bool = False, epsilon: float = 1e-3,
              num_directions: int = 1, distribution: str = 'gaussian',
              horvitz_thompson: bool = True, score_rule: str = 'port',
              score_decay: float = 0.1, scale_decay: float = 0.1,
              score_init: float = 0.01, scale_init: float = 1e-8,
              uniform_mix: float = 0.0, adapt_every: int = 20,
              min_budget: float = 0.1, max_budget: float = 0.8,
              budget_momentum: float = 0.9, support_weight: float = 0.7,
              sharpness_weight: float = 0.3, sequential: bool = True,
              key: int | PRNGKey = 0
              ) -> optax.GradientTransformationExtraArgs:
  r"""Block-sparse two-point ZO estimator with Horvitz-Thompson correction.

  A block is one parameter leaf. Each step draws the Poisson sample
  :math:`S_t` with probabilities :math:`\pi` (uniform :math:`K/n`, or
  curvature-guided PPS), perturbs only the sampled blocks and returns
  :math:`\hat g_b = 1[b\in S_t]\,\bar\delta z_b / \pi_b` (module docstring).
  With ``sampling='curvature'`` and ``adaptive_budget=True`` this is CurvZO
  (`curvzo`); ``sampling='uniform'`` is the uniform-sparse baseline (and,
  with ``adaptive_budget``, the paper's "US+AB" ablation). The score EMA
  is updated in both modes, so the budget can adapt under uniform sampling.

  Args:
    budget: initial (or fixed) fraction f of blocks perturbed in
      expectation; K = max(1, floor(f n)) (paper ablation B = 0.4d).
    sampling: ``'uniform'`` or ``'curvature'`` (PPS on the scores).
    adaptive_budget: re-estimate f every `adapt_every` steps
      (`adapt_budget`).
    epsilon: perturbation size (paper: 1e-3).
    num_directions: q directions per step sharing one block sample.
    distribution: ``'gaussian'`` (paper) or ``'rademacher'``.
    horvitz_thompson: divide by :math:`\pi_b` (unbiased). False is the
      biased ablation used by the tests.
    score_rule: ``'port'`` [C] or ``'paper'`` [S-h formula, I details].
    score_decay: beta, EMA weight of a new score (port: 0.1).
    scale_decay: beta_G, EMA weight of the feedback scale G (port: 0.1).
    score_init: initial S_b (port: 0.01).
    scale_init: initial G (port: 1e-8).
    uniform_mix: alpha of the exploration mix with uniform sampling, in
      [0, 1]; a reconstruction [I], 0 disables it (the port's sampler).
    adapt_every: steps between budget updates (port: 20).
    min_budget: lower bound of f (port: 0.1).
    max_budget: upper bound of f (port: 0.8).
    budget_momentum: weight of the old f in its EMA (port: 0.9).
    support_weight: weight of d_eff / n in the raw budget (port: 0.7).
    sharpness_weight: weight of 1 - entropy in the raw budget (port: 0.3).
    sequential: as in `mezo`.
    key: initial PRNG key (or an int seed); split every step.

  Returns:
    A `GradientTransformationExtraArgs` like `mezo`'s, with state
    `SparseZOState`.
  """
  _check_choice(distribution, DISTRIBUTIONS, 'distribution')
  _check_choice(sampling, SAMPLINGS, 'sampling')
  _check_choice(score_rule, SCORE_RULES, 'score_rule')
  if num_directions < 1:
    raise ValueError(f'num_directions must be >= 1, got {num_directions}.')
  if not epsilon > 0:
    raise ValueError(f'epsilon must be > 0, got {epsilon}.')
  if not 0 < min_budget <= max_budget <= 1:
    raise ValueError('Need 0 < min_budget <= max_budget <= 1, got '
                     f'{min_budget} and {max_budget}.')
  if not 0 < budget <= 1:
    raise ValueError(f'budget must be in (0, 1], got {budget}.')
  if adaptive_budget and not min_budget <= budget <= max_budget:
    raise ValueError(f'budget {budget} must lie in [min_budget, max_budget]'
                     f' = [{min_budget}, {max_budget}] when adaptive.')
  if not 0 <= uniform_mix <= 1:
    raise ValueError(f'uniform_mix must be in [0, 1], got {uniform_mix}.')
  if adapt_every < 1:
    raise ValueError(f'adapt_every must be >= 1, got {adapt_every}.')
  power = 1. if score_rule == 'port' else 0.5

  def init_fn(params: Params) -> SparseZOState:
    n = len(jax.tree.leaves(params))
    return SparseZOState(
        key=_as_key(key),
        projected_grads=jnp.zeros((num_directions,), jnp.float32),
        loss=jnp.zeros((), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        scores=jnp.full((n,), score_init, jnp.float32),
        feedback_scale=jnp.asarray(scale_init, jnp.float32),
        budget=jnp.asarray(budget, jnp.float32),
        probs=jnp.zeros((n,), jnp.float32),
        mask=jnp.zeros((n,), bool))

  def inclusion_probs(state: SparseZOState, n: int) -> jax.Array:
    k = jnp.maximum(1., jnp.floor(state.budget * n))
    uniform = jnp.full((n,), k / n, jnp.float32)
    if sampling == 'uniform':
      return uniform
    pps = _sampling.poisson_pps_probs(state.scores ** power, k)
    return (1. - uniform_mix) * pps + uniform_mix * uniform

  def update_fn(updates, state: SparseZOState, params=None, *, obj_fn=None,
                projected_grads=None, **extra_args):
    del updates, extra_args
    _check_args(params, obj_fn, projected_grads, 'sparse_zo')
    sizes = jnp.array([x.size for x in jax.tree.leaves(params)], jnp.float32)
    n = sizes.shape[0]
    next_key, step_key = jax.random.split(state.key)
    mask_key, dir_key = jax.random.split(step_key)
    probs = inclusion_probs(state, n)
    mask = jax.random.uniform(mask_key, (n,)) < probs
    maskf = mask.astype(jnp.float32)
    pg, loss, total, sq_norms = _zo_core(
        params, dir_key, obj_fn=obj_fn, projected_grads=projected_grads,
        num_directions=num_directions, epsilon=epsilon,
        distribution=distribution, perturb=maskf, sequential=sequential)
    factor = maskf / probs if horvitz_thompson else maskf
    estimate = _scale_blocks(total, factor)

    # Score update from the scalar feedback (sampled blocks only).
    if score_rule == 'port':
      signal = jnp.mean(jnp.abs(pg))
      scale = (1. - scale_decay) * state.feedback_scale + scale_decay * signal
      energy = maskf * jnp.mean(sq_norms, 0) / jnp.square(probs)
      share = energy / jnp.maximum(jnp.sum(energy), 1e-30)
      new_score = signal / scale * share
    else:
      signal = jnp.mean(jnp.square(pg))
      scale = (1. - scale_decay) * state.feedback_scale + scale_decay * signal
      per_coord = jnp.mean(jnp.square(pg)[:, None] * sq_norms, 0) / sizes
      new_score = per_coord / jnp.maximum(scale, 1e-30)
    scores = jnp.where(mask, (1. - score_decay) * state.scores
                       + score_decay * new_score, state.scores)
    # Scores stay positive: a block scored 0 could never be sampled again.
    scores = jnp.maximum(scores, jnp.finfo(jnp.float32).tiny)
    count = state.count + 1
    new_budget = state.budget
    if adaptive_budget:
      adapted = _sampling.adapt_budget(
          scores, state.budget, min_fraction=min_budget,
          max_fraction=max_budget, momentum=budget_momentum,
          support_weight=support_weight, sharpness_weight=sharpness_weight)
      new_budget = jnp.where(count % adapt_every == 0, adapted, state.budget)
    return estimate, SparseZOState(
        key=next_key, projected_grads=pg, loss=loss, count=count,
        scores=scores, feedback_scale=scale, budget=new_budget, probs=probs,
        mask=mask)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def curvzo(*, budget: float = 0.4, adaptive_budget: bool = True,
           **kwargs: Any) -> optax.GradientTransformationExtraArgs:
  """CurvZO: `sparse_zo` with curvature sampling and an adaptive budget.

  Args:
    budget: initial fraction of blocks (paper ablation: 0.4).
    adaptive_budget: False gives "CurvZO at a fixed budget".
    **kwargs: any other `sparse_zo` argument.

  Returns:
    The `sparse_zo` transform with ``sampling='curvature'``.
  """
  return sparse_zo(budget=budget, sampling='curvature',
                   adaptive_budget=adaptive_budget, **kwargs)


_ZO_STATES = (MeZOState, SparseZOState)


def _is_zo_state(x) -> bool:
  return isinstance(x, _ZO_STATES)


def reseed(opt_state: optax.OptState, key: PRNGKey) -> optax.OptState:
  """Replaces the key of every ZO estimator state inside `opt_state`.

  The i-th estimator found (in pytree order) gets ``fold_in(key, i)``; a
  federated client reseeds a fresh ``optimizer.init(params)`` with its
  round key so every client perturbs differently.
  """
  counter = iter(range(1 << 30))

  def fn(x):
    if _is_zo_state(x):
      return x._replace(key=jax.random.fold_in(key, next(counter)))
    return x

  return jax.tree.map(fn, opt_state, is_leaf=_is_zo_state)


def zo_states(opt_state: optax.OptState) -> list[MeZOState | SparseZOState]:
  """The ZO estimator states inside `opt_state`, in pytree order."""
  return [x for x in jax.tree.leaves(opt_state, is_leaf=_is_zo_state)
          if _is_zo_state(x)]


def _single_zo_state(opt_state):
  found = zo_states(opt_state)
  if len(found) != 1:
    raise ValueError(f'Expected exactly one ZO estimator in the optimizer, '
                     f'found {len(found)}.')
  return found[0]


def projected_grads(opt_state: optax.OptState) -> jax.Array:
  """The last step's scalars [q] of the one ZO estimator in `opt_state`."""
  return _single_zo_state(opt_state).projected_grads


def zo_loss(opt_state: optax.OptState) -> jax.Array:
  """The last step's mean of (L+ + L-)/2 of the one ZO estimator."""
  return _single_zo_state(opt_state).loss


def sampler_state(opt_state: optax.OptState) -> SamplerState | None:
  """The `SamplerState` of the one ZO estimator; None for `mezo` (none)."""
  state = _single_zo_state(opt_state)
  if not isinstance(state, SparseZOState):
    return None
  return SamplerState(count=state.count, scores=state.scores,
                      feedback_scale=state.feedback_scale,
                      budget=state.budget)


def with_sampler_state(opt_state: optax.OptState,
                       sampler: SamplerState | None) -> optax.OptState:
  """`opt_state` with its one ZO estimator's sampler replaced by `sampler`.

  None leaves `opt_state` unchanged (e.g. `mezo`, which has no sampler).
  """
  if sampler is None:
    return opt_state
  _single_zo_state(opt_state)  # Exactly one estimator.

  def fn(x):
    if isinstance(x, SparseZOState):
      return x._replace(**sampler._asdict())
    if _is_zo_state(x):
      raise ValueError('A SamplerState needs a sparse_zo / curvzo estimator, '
                       f'found {type(x).__name__}.')
    return x

  return jax.tree.map(fn, opt_state, is_leaf=_is_zo_state)


def mean_sampler_state(samplers: SamplerState,
                       weights: jax.Array) -> SamplerState:
  r"""Weighted mean of stacked [C] sampler states (a server's carry).

  Scores, :math:`G` and the budget are averaged with the (non-negative)
  client weights; the step count is the largest count of a client with
  positive weight. With no positive weight, client 0's state is returned
  (in a federated round that is the broadcast state, since a client
  without data takes no step).
  """
  w = jnp.asarray(weights, jnp.float32)
  total = jnp.sum(w)
  safe = jnp.where(total > 0, w / jnp.maximum(total, 1e-30),
                   jnp.zeros_like(w).at[0].set(1.))
  mean = lambda x: jnp.tensordot(safe, x.astype(jnp.float32), axes=1)
  count = jnp.max(jnp.where(w > 0, samplers.count, samplers.count[0]))
  return SamplerState(count=count.astype(jnp.int32),
                      scores=mean(samplers.scores),
                      feedback_scale=mean(samplers.feedback_scale),
                      budget=mean(samplers.budget))


def num_blocks(params: Params) -> int:
  """n, the number of blocks (parameter leaves)."""
  return len(jax.tree.leaves(params))


def num_parameters(params: Params) -> int:
  """Total number of scalars in `params`."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
