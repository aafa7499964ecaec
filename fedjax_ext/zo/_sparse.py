r"""Sparse ZO with Horvitz-Thompson correction, and CurvZO, as optax transforms.

A *block* is one parameter leaf. Block :math:`b` is perturbed only if it is
in the step's Poisson sample :math:`S_t` (inclusion probability
:math:`\pi_b`, `_sampling`), and with the two-point scalars
:math:`\delta_j` (`_two_point`)

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
the 1/π²-weighted energy share of a rare draw lifts them. The learnt part
of the state is a `SamplerState` (`_states.sampler_state`,
`_states.with_sampler_state`); a federated server carries its cohort mean
across rounds in its ``algorithm_state`` so that clients do not restart
cold every round (`fedjax_ext.zo.zo_fed_avg`, our design [I]).

References:
  Horvitz and Thompson, `A generalization of sampling without replacement
  from a finite universe <https://doi.org/10.1080/01621459.1952.10483446>`_,
  JASA 1952.

  Wang, Chen and Tang, `CurvZO: Curvature-guided sparse zeroth-order
  fine-tuning <https://arxiv.org/abs/2603.21725>`_, ICML 2026.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_ext._src.checks import check_int
from fedjax_ext._src.checks import check_number
from fedjax_ext.core import Params, PRNGKey
from fedjax_ext.zo import _sampling
from fedjax_ext.zo import _two_point

SAMPLINGS = ('uniform', 'curvature')
SCORE_RULES = ('port', 'paper')


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
  server carries it across rounds in ``ServerState.algorithm_state``
  (`fedjax_ext.zo.zo_fed_avg`).
  """
  count: jax.Array  # int32: steps taken (phase of the budget schedule).
  scores: jax.Array  # float32 [n]: per-block score S_b.
  feedback_scale: jax.Array  # float32: G.
  budget: jax.Array  # float32: f.


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
  _two_point.check_common(distribution=distribution,
                          num_directions=num_directions, epsilon=epsilon)
  _two_point.check_choice(sampling, SAMPLINGS, 'sampling')
  _two_point.check_choice(score_rule, SCORE_RULES, 'score_rule')
  _two_point.check_key(key)
  check_number('budget', budget, low=0, high=1, low_open=True)
  _sampling.check_budget_args(
      min_budget, max_budget, budget_momentum, support_weight,
      sharpness_weight, names=('min_budget', 'max_budget', 'budget_momentum',
                               'support_weight', 'sharpness_weight'))
  for name, value in (('score_decay', score_decay),
                      ('scale_decay', scale_decay)):
    check_number(name, value, low=0, high=1, low_open=True)
  for name, value in (('score_init', score_init),
                      ('scale_init', scale_init)):
    check_number(name, value, low=0, low_open=True)
  if adaptive_budget and not min_budget <= budget <= max_budget:
    raise ValueError(f'budget {budget} must lie in [min_budget, max_budget]'
                     f' = [{min_budget}, {max_budget}] when adaptive.')
  check_number('uniform_mix', uniform_mix, low=0, high=1)
  check_int('adapt_every', adapt_every, low=1)
  power = 1. if score_rule == 'port' else 0.5

  def init_fn(params: Params) -> SparseZOState:
    n = len(jax.tree.leaves(params))
    return SparseZOState(
        key=_two_point.as_key(key),
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
    _two_point.check_update_args(params, obj_fn, projected_grads,
                                 'sparse_zo')
    sizes = jnp.array([x.size for x in jax.tree.leaves(params)], jnp.float32)
    n = sizes.shape[0]
    next_key, step_key = jax.random.split(state.key)
    mask_key, dir_key = jax.random.split(step_key)
    probs = inclusion_probs(state, n)
    mask = jax.random.uniform(mask_key, (n,)) < probs
    maskf = mask.astype(jnp.float32)
    pg, loss, total, sq_norms = _two_point.two_point(
        params, dir_key, obj_fn=obj_fn, projected_grads=projected_grads,
        num_directions=num_directions, epsilon=epsilon,
        distribution=distribution, perturb=maskf, sequential=sequential)
    factor = maskf / probs if horvitz_thompson else maskf
    estimate = _two_point.scale_blocks(total, factor)

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
