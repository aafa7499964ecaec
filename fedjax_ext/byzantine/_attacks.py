r"""Byzantine attacks as pure functions of the round's stacked updates.

An `Attack` rewrites the rows of the Byzantine clients in the stacked
updates [C, ...] of one round. Omniscient attacks (sign flip, ALIE, IPM,
mimic) read the *honest* updates of the same round: inside the jitted
round this runs as `core.federated_algorithm`'s ``transform_outputs``
hook (see `byzantine.attack_outputs`). Label flipping is data-side: its
``corrupt`` is the identity and ``flips_labels`` tells the client wrapper
(`byzantine.byzantine_client`) to train Byzantine clients on flipped labels.

Honest statistics are over clients that are not Byzantine and take part
(positive, finite weight and finite update); with no honest client in the
round every attack sends zeros.

Definitions follow ByzFL (LPD-EPFL, https://arxiv.org/abs/2505.24802) and the
method spec (`byzantine_split_moe_satellite.md`, section 1.6, all [B]):

* sign flip (SF): :math:`-\bar x_H`;
* ALIE (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing
  Defenses For Distributed Learning", NeurIPS 2019,
  https://arxiv.org/abs/1902.06156): :math:`\mu_H + z \sigma_H`
  coordinate-wise;
* IPM / fall of empires (Xie, Koyejo, Gupta, "Fall of Empires: Breaking
  Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019,
  https://arxiv.org/abs/1903.03936): :math:`-\epsilon \bar x_H`;
* label flip (LF): Byzantine clients train on labels :math:`K - 1 - y`;
* mimic (Karimireddy, He, Jaggi, ICLR 2022,
  https://arxiv.org/abs/2006.09365): a copy of one honest client's update;
* Gaussian: :math:`\mathcal N(\mu, s^2 I)` noise;
* non-finite: NaN or Inf in every coordinate;
* optimal ALIE / IPM (`optimal_alie`, `optimal_ipm`): the factor (ALIE's
  :math:`z`, IPM's :math:`\epsilon`) that maximises the deviation
  :math:`\|F(x) - \bar x_H\|` of the aggregator :math:`F` in use from the
  honest mean, searched over a grid in every round (ByzFL's
  ``LineMaximize``-optimised attacks; Allouah et al., "Fixing by Mixing",
  AISTATS 2023, https://arxiv.org/abs/2302.01772, evaluate against them).
  Inside a round (`RoundContext`) the attacker simulates :math:`F` from the
  defence's *current* state (centered clipping's last center), with the
  round's extra arguments, so its simulation is the server's aggregation.
"""

import math
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special

from fedjax_ext.aggregators import present_clients
from fedjax_ext.core import (Aggregator, PRNGKey, PyTree, ServerState,
                             Updates)

# corrupt(updates [C, ...], byzantine bool [C], weights [C], key) -> updates.
CorruptFn = Callable[[Updates, jax.Array, jax.Array, PRNGKey], Updates]


class RoundContext(NamedTuple):
  """What a round shows an optimised attack beyond the stacked updates.

  Built by `byzantine.attack_outputs` from ``transform_outputs``'s
  arguments, so that the attacker simulates the server's aggregation
  exactly: ``aggregator.update(updates, server_state.aggregator_state,
  server_state.params, weights=..., key=key, server_state=server_state,
  client_info=client_info)``, as `core.aggregate_outputs` calls it.
  """
  aggregator: Aggregator | None  # The rule the server uses this round.
  server_state: ServerState  # The server state before the round.
  key: PRNGKey  # The aggregation stage's key (`core.stage_key`, stage 1).
  client_info: Mapping[str, jax.Array]  # `Cohort.client_info()`, [C] each.


class Attack(NamedTuple):
  """A Byzantine attack (module docstring)."""
  corrupt: CorruptFn  # Rewrites the Byzantine rows of the stacked updates.
  flips_labels: bool = False  # Byzantine clients train on flipped labels.
  # Optimised attacks only: ``choose_factor(updates, byzantine, weights,
  # key, context=None) -> factor`` and ``corrupt_with(updates, byzantine,
  # weights, factor) -> updates``; ``corrupt`` is their composition (and
  # takes the same optional ``context``, a `RoundContext`). Split so that a
  # round can report the factor it used (`byzantine.attack_outputs`).
  choose_factor: Callable[..., jax.Array] | None = None
  corrupt_with: Callable[..., Updates] | None = None


def _row_mask(byzantine: jax.Array, leaf: jax.Array) -> jax.Array:
  return byzantine.reshape((-1,) + (1,) * (leaf.ndim - 1))


def _replace(updates: Updates, byzantine: jax.Array,
             attack_vector: PyTree) -> Updates:
  """Byzantine rows := attack_vector (one client's shape, broadcast)."""
  return jax.tree.map(
      lambda leaf, a: jnp.where(_row_mask(byzantine, leaf),
                                a.astype(leaf.dtype)[None], leaf),
      updates, attack_vector)


def _honest(updates, byzantine, weights):
  return present_clients(updates, weights) & ~byzantine


def honest_mean_std(updates: Updates, honest: jax.Array
                    ) -> tuple[PyTree, PyTree]:
  """Coordinate-wise mean and (population) std over the honest clients."""
  count = jnp.maximum(jnp.sum(honest), 1).astype(jnp.float32)
  weights = honest.astype(jnp.float32) / count

  def stats(leaf):
    # [C, d] matmuls: XLA:CPU reduces N-D leading axes ~100x slower.
    flat = leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)
    flat = jnp.where(honest[:, None], flat, 0.)
    mu = jnp.matmul(weights, flat, precision=jax.lax.Precision.HIGHEST)
    var = jnp.matmul(weights, jnp.square(flat - mu[None]),
                     precision=jax.lax.Precision.HIGHEST)
    return mu.reshape(leaf.shape[1:]), jnp.sqrt(var).reshape(leaf.shape[1:])

  pairs = jax.tree.map(stats, updates)
  outer = jax.tree.structure(updates)
  inner = jax.tree.structure((0, 0))
  mu, std = jax.tree.transpose(outer, inner, pairs)
  return mu, std


def no_attack() -> Attack:
  """Byzantine clients behave honestly (the control)."""
  return Attack(lambda updates, byzantine, weights, key: updates)


def sign_flip() -> Attack:
  r"""Sign flip: Byzantine clients send :math:`-\bar x_H`."""

  def corrupt(updates, byzantine, weights, key):
    del key
    mu, _ = honest_mean_std(updates, _honest(updates, byzantine, weights))
    return _replace(updates, byzantine, jax.tree.map(jnp.negative, mu))

  return Attack(corrupt)


def alie_z(num_clients: jax.Array, num_byzantine: jax.Array) -> jax.Array:
  r"""Baruch et al.'s :math:`z_{\max} = \Phi^{-1}((n - s) / n)`,
  :math:`s = \lfloor n/2 + 1 \rfloor - b`, clamped to [0, 10]."""
  n = jnp.asarray(num_clients, jnp.float32)
  s = jnp.floor(n / 2 + 1) - num_byzantine
  p = jnp.clip((n - s) / jnp.maximum(n, 1.), 0.5, 1. - 1e-7)
  return jnp.clip(jax.scipy.special.ndtri(p), 0., 10.)


def alie(z: float | None = None) -> Attack:
  r"""A little is enough (ALIE): :math:`\mu_H + z \sigma_H` per coordinate.

  Args:
    z: the number of honest standard deviations. ``None`` uses Baruch et
      al.'s :math:`z_{\max}` (`alie_z`) with ``n`` the clients taking part
      in the round and ``b`` the Byzantine ones among them (as ByzFL's
      ``ALittleIsEnough`` does); a fixed value (e.g. 1.5, as some
      benchmarks use) is the configurable alternative ([B] in the spec).

  Returns:
    An omniscient `Attack`.
  """

  def corrupt(updates, byzantine, weights, key):
    del key
    honest = _honest(updates, byzantine, weights)
    mu, std = honest_mean_std(updates, honest)
    if z is None:
      taking_part = jnp.isfinite(weights) & (weights > 0)
      zz = alie_z(jnp.sum(taking_part | byzantine),
                  jnp.sum(byzantine))
    else:
      zz = jnp.asarray(z, jnp.float32)
    return _replace(updates, byzantine,
                    jax.tree.map(lambda m, s: m + zz * s, mu, std))

  return Attack(corrupt)


def inner_product_manipulation(epsilon: float = 0.1) -> Attack:
  r"""IPM / fall of empires: :math:`-\epsilon \bar x_H`.

  Small :math:`\epsilon` (0.1) fools distance-based rules; large ones (e.g.
  100, "fall of empires") overwhelm averaging. ByzFL's ``tau`` is
  :math:`1 + \epsilon`.
  """

  def corrupt(updates, byzantine, weights, key):
    del key
    mu, _ = honest_mean_std(updates, _honest(updates, byzantine, weights))
    return _replace(updates, byzantine,
                    jax.tree.map(lambda m: -epsilon * m, mu))

  return Attack(corrupt)


def label_flip() -> Attack:
  """Label flipping: data-side, Byzantine clients train on ``K - 1 - y``."""
  return Attack(lambda updates, byzantine, weights, key: updates,
                flips_labels=True)


def mimic() -> Attack:
  """Mimic: every Byzantine client copies the first honest client's update.

  "First" is the honest client taking part with the smallest position in
  the cohort; cohorts from `data.sample_clients` are sorted by client id,
  so it is the honest client of smallest id (a fixed target as in
  Karimireddy et al. 2022's mimic, which overweights one client's data).
  """

  def corrupt(updates, byzantine, weights, key):
    del key
    honest = _honest(updates, byzantine, weights)
    target = jnp.argmax(honest)
    vec = jax.tree.map(lambda leaf: jnp.where(jnp.any(honest), leaf[target],
                                              jnp.zeros_like(leaf[target])),
                       updates)
    return _replace(updates, byzantine, vec)

  return Attack(corrupt)


def gaussian(scale: float = 1.0, *, mean: float = 0.) -> Attack:
  r"""Gaussian noise: Byzantine clients send :math:`\mathcal N(\mu, s^2 I)`.

  Each Byzantine client draws its own noise from the round key.
  """

  def corrupt(updates, byzantine, weights, key):
    del weights
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(key, len(leaves))
    noisy = [mean + scale * jax.random.normal(k, leaf.shape, jnp.float32)
             for k, leaf in zip(keys, leaves)]
    noise = jax.tree.unflatten(treedef, noisy)
    return jax.tree.map(
        lambda leaf, n: jnp.where(_row_mask(byzantine, leaf),
                                  n.astype(leaf.dtype), leaf),
        updates, noise)

  return Attack(corrupt)


def non_finite(value: str = 'nan') -> Attack:
  """Byzantine clients send NaN (``'nan'``), +Inf (``'inf'``) or -Inf."""
  values = {'nan': jnp.nan, 'inf': jnp.inf, '-inf': -jnp.inf}
  if value not in values:
    raise ValueError(f'Unknown non-finite value {value!r}; valid choices: '
                     f'{", ".join(values)}.')

  def corrupt(updates, byzantine, weights, key):
    del weights, key
    return jax.tree.map(
        lambda leaf: jnp.where(_row_mask(byzantine, leaf),
                               jnp.asarray(values[value], leaf.dtype), leaf),
        updates)

  return Attack(corrupt)


# A sqrt(2)-spaced grid of attack factors, 0.25 .. 32 (15 values).
OPTIMAL_FACTORS = tuple(float(2. ** (k / 2)) for k in range(-4, 11))


def simulate_aggregation(aggregator: Aggregator, updates: Updates,
                         weights: jax.Array,
                         context: RoundContext | None = None) -> Updates:
  """The aggregate an attacker predicts for ``updates`` [C, ...].

  With a `RoundContext` whose ``aggregator`` is `aggregator` (the attack
  targets the rule in use), the simulation starts from the defence's
  current state ``server_state.aggregator_state`` (centered clipping's last
  center, bucketing's key) and passes the round's params and extra
  arguments: it IS the server's aggregation of these updates. For another
  rule, or without a context (an attack called on bare updates), the rule
  starts from its ``init`` state (exact for stateless rules); the round's
  extra arguments are still passed when there is a context.
  """
  template = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape[1:], leaf.dtype),
                          updates)
  if context is None:
    out, _ = aggregator.update(updates, aggregator.init(template),
                               weights=weights)
    return out
  server_state = context.server_state
  in_use = context.aggregator is not None and context.aggregator == aggregator
  state = (server_state.aggregator_state if in_use
           else aggregator.init(template))
  out, _ = aggregator.update(updates, state, server_state.params,
                             weights=weights, key=context.key,
                             server_state=server_state,
                             client_info=context.client_info)
  return out


def _optimal(vector_fn: Callable[[PyTree, PyTree, jax.Array], PyTree],
             aggregator: Aggregator, factors) -> Attack:
  """The attack ``vector_fn(mu_H, sigma_H, factor)`` with the factor of
  ``factors`` that maximises ``||F(x) - mu_H||`` (first on ties), ``F``
  simulated by `simulate_aggregation`."""
  factors = tuple(float(f) for f in factors)
  if not factors:
    raise ValueError('An optimal attack needs at least one factor.')
  if not all(math.isfinite(f) for f in factors):
    raise ValueError(f'factors must be finite, got {factors}.')

  def corrupt_with(updates, byzantine, weights, factor):
    mu, std = honest_mean_std(updates, _honest(updates, byzantine, weights))
    return _replace(updates, byzantine, vector_fn(mu, std, factor))

  def choose_factor(updates, byzantine, weights, key, context=None):
    del key
    mu, std = honest_mean_std(updates, _honest(updates, byzantine, weights))

    def deviation(factor):
      attacked = _replace(updates, byzantine, vector_fn(mu, std, factor))
      out = simulate_aggregation(aggregator, attacked, weights, context)
      sq = sum(jnp.sum(jnp.square(o.astype(jnp.float32) - m))
               for o, m in zip(jax.tree.leaves(out), jax.tree.leaves(mu)))
      return jnp.where(jnp.isnan(sq), -jnp.inf, sq)

    grid = jnp.asarray(factors, jnp.float32)
    return grid[jnp.argmax(jax.lax.map(deviation, grid))]

  def corrupt(updates, byzantine, weights, key, context=None):
    factor = choose_factor(updates, byzantine, weights, key, context)
    return corrupt_with(updates, byzantine, weights, factor)

  return Attack(corrupt, choose_factor=choose_factor,
                corrupt_with=corrupt_with)


def optimal_alie(aggregator: Aggregator,
                 factors=OPTIMAL_FACTORS) -> Attack:
  r"""ALIE with the :math:`z` that hurts the aggregator in use most.

  Each round, for every :math:`z` of ``factors``, the attacker (omniscient:
  it sees the honest updates and knows :math:`F`) evaluates
  :math:`\|F(x^{(z)}) - \mu_H\|` where :math:`x^{(z)}` has the Byzantine
  rows at :math:`\mu_H + z \sigma_H`, and sends the maximiser. This is
  the static-grid, jit-compatible version of ByzFL's line-maximised ALIE
  (its ``LineMaximize`` explores :math:`z \ge 0` adaptively in 16 steps);
  the grid (default `OPTIMAL_FACTORS`: 0.25 to 32, ratio :math:`\sqrt 2`)
  is a configurable choice, and it costs one extra aggregation per grid
  point per round.

  Args:
    aggregator: the rule the attacker targets. Inside a round
      (`byzantine.attack_outputs`, which passes a `RoundContext`) it is
      simulated from the defence's current state when it is the rule in
      use (the same `core.Aggregator` object), with the round's params,
      ``key``, ``server_state`` and ``client_info``: e.g. centered clipping
      from its last center, so the simulated aggregate of the chosen
      attack is the server's. Otherwise, and on bare updates, from its
      ``init`` state (`simulate_aggregation`).
    factors: the candidate :math:`z` values (finite).

  Returns:
    An omniscient `Attack` that can report the chosen :math:`z`.
  """
  return _optimal(lambda mu, std, z: jax.tree.map(
      lambda m, s: m + z * s, mu, std), aggregator, factors)


def optimal_ipm(aggregator: Aggregator,
                factors=OPTIMAL_FACTORS) -> Attack:
  r"""IPM with the :math:`\epsilon` that hurts the aggregator most.

  As `optimal_alie`, over :math:`-\epsilon \mu_H` for :math:`\epsilon` in
  ``factors`` (ByzFL's line-maximised fall of empires).
  """
  return _optimal(lambda mu, std, eps: jax.tree.map(
      lambda m: -eps * m, mu), aggregator, factors)


ATTACKS = ('none', 'sign_flip', 'alie', 'ipm', 'label_flip', 'mimic',
           'gaussian', 'nan', 'inf', 'alie_optimal', 'ipm_optimal')


def create_attack(name: str, **kwargs) -> Attack:
  """An attack by name (`ATTACKS`); kwargs go to its factory.

  The ``*_optimal`` attacks need ``aggregator=`` (the rule they target).
  """
  factories = {
      'none': no_attack, 'sign_flip': sign_flip, 'alie': alie,
      'ipm': inner_product_manipulation, 'label_flip': label_flip,
      'mimic': mimic, 'gaussian': gaussian,
      'nan': lambda: non_finite('nan'), 'inf': lambda: non_finite('inf'),
      'alie_optimal': optimal_alie, 'ipm_optimal': optimal_ipm}
  if name not in factories:
    raise ValueError(f'Unknown attack {name!r}; valid choices: '
                     f'{", ".join(ATTACKS)}.')
  return factories[name](**kwargs)
