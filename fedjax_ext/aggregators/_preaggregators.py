r"""Pre-aggregators and their composition with a robust aggregator.

A pre-aggregator maps stacked client updates [C, ...] and weights [C] to
new stacked updates [C', ...] and weights [C'] (NNM and clipping keep C,
bucketing makes ``ceil(C / s)`` buckets). `process` chains any number of
them in front of an aggregator into one `core.Aggregator`, e.g.
``process(nnm(b), trimmed_mean(b))``. Presence (finite, positive weight)
follows `_presence.present_clients`: a rejected client stays rejected (weight
0, zero row) through every stage.

References:
  * NNM: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
    Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
    AISTATS 2023, https://arxiv.org/abs/2302.01772.
  * Bucketing: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR 2022,
    https://arxiv.org/abs/2006.09365.
  * Norm clipping: as in ByzFL's ``Clipping`` pre-aggregator (LPD-EPFL,
    https://arxiv.org/abs/2505.24802).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_ext.aggregators import _distance
from fedjax_ext.aggregators import _presence
from fedjax_ext.core import Aggregator, PyTree


class PreAggregator(NamedTuple):
  """Stacked updates [C, ...] -> stacked updates [C', ...], optax style.

  ``update(client_updates, state, params=None, *, weights, **extra_args)
  -> ((client_updates', weights'), state)``.
  """
  init: Callable[[PyTree], PyTree]
  update: Callable[..., tuple[tuple[PyTree, jax.Array], PyTree]]


def nnm_mixing(dist: jax.Array, present: jax.Array,
               num_byzantine: int) -> jax.Array:
  """NNM's mixing matrix M [C, C] from squared distances: ``mixed = M x``.

  Row i averages the ``max(k - b, 1)`` present clients nearest to client
  i, itself first; rows of absent clients are 0. The Gram matrix of the
  mixed updates is then ``_distance.mixed_gram(M, G)`` (no new pass).
  """
  k = jnp.sum(present)
  m = jnp.maximum(k - num_byzantine, 1)
  # Itself first, whatever the ties at distance 0.
  dist = jnp.where(jnp.eye(dist.shape[0], dtype=bool), -1., dist)
  nearest = (_distance.ranks(dist) < m) & present[None, :]
  return jnp.where(present[:, None] & nearest, 1., 0.) / m


def nnm(num_byzantine: int, *, distances: str = 'gram') -> PreAggregator:
  r"""Nearest-neighbour mixing (NNM).

  Each present client's update becomes the mean of its
  :math:`m = \max(k - b, 1)` nearest present updates, itself included
  (``k`` present clients), in Euclidean distance of the flattened updates:

  .. math:: y_i = \frac{1}{m} \sum_{j \in N_m(i)} x_j.

  If :math:`F` is :math:`(b, \kappa)`-robust, :math:`F \circ` NNM is
  :math:`(b, \frac{8b}{n - b}(\kappa + 1))`-robust (Allouah et al. 2023).
  Ties in distance are broken by position.

  Presence and distances come from one Gram matrix of the updates
  (`_distance.rule_geometry`; ``gram=`` extra argument: use that one),
  so NNM reads the updates twice: the Gram matmul and the mixing matmul.
  The mixed updates' Gram matrix, should a Gram-based rule follow, is
  ``_distance.mixed_gram(nnm_mixing(...), G)`` at :math:`O(C^3)`.

  Args:
    num_byzantine: ``b``.
    distances: ``'gram'`` or ``'exact'``
      (`_distance.pairwise_sq_distances`).

  Returns:
    A stateless `PreAggregator` keeping C and the weights of present
    clients.
  """
  _presence.check_num_byzantine(num_byzantine)
  _distance.check_distance_method(distances)

  def update_fn(client_updates, state, params=None, *, weights, gram=None,
                **extra):
    del params, extra
    _presence.check_cohort_size(num_byzantine, client_updates, 'nnm')
    present, finite, _, dist = _distance.rule_geometry(
        client_updates, weights, distances, gram)
    mixing = nnm_mixing(dist, present, num_byzantine)
    mixed = _presence.mix_rows(mixing, client_updates, finite)
    new_weights = jnp.where(present, weights, 0.).astype(jnp.float32)
    return (_presence.cast_like(mixed, client_updates),
            new_weights), state

  return PreAggregator(_presence.empty_state, update_fn)


def _scale_rows(stacked: PyTree, scale: jax.Array,
                present: jax.Array) -> PyTree:
  """Row i times ``scale[i]``; absent rows become zeros (one pass)."""

  def apply(leaf):
    shape = (-1,) + (1,) * (leaf.ndim - 1)
    dtype = _presence.compute_dtype(leaf.dtype)
    out = leaf.astype(dtype) * scale.reshape(shape).astype(dtype)
    return jnp.where(present.reshape(shape), out, 0.).astype(leaf.dtype)

  return jax.tree.map(apply, stacked)


def norm_clipping(max_norm: float) -> PreAggregator:
  r"""Clips each client's flattened update to norm at most ``max_norm``.

  .. math:: x_i \leftarrow x_i \min(1, \tau / \|x_i\|).

  Rejected clients become zero rows of weight 0.

  Args:
    max_norm: :math:`\tau > 0`.

  Returns:
    A stateless `PreAggregator`.
  """
  _presence.check_positive('max_norm', max_norm)

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    del params, extra
    present = _presence.present_clients(client_updates, weights)
    norms = jnp.sqrt(jnp.where(present,
                               _presence.client_sq_norms(client_updates), 0.))
    scale = jnp.minimum(1., max_norm / jnp.where(norms > 0, norms, 1.))
    new_weights = jnp.where(present, weights, 0.).astype(jnp.float32)
    return (_scale_rows(client_updates, scale, present),
            new_weights), state

  return PreAggregator(_presence.empty_state, update_fn)


def arc(num_byzantine: int) -> PreAggregator:
  r"""Adaptive robust clipping (ARC).

  With ``k`` present clients, the
  :math:`m = \lfloor 2 b (k - b) / k \rfloor` updates of largest norm are
  clipped to the norm of the largest remaining one:

  .. math:: x_i \leftarrow x_i \min\Big(1, \frac{\|x_{(k - m)}\|}
     {\|x_i\|}\Big),

  where :math:`\|x_{(1)}\| \le \dots \le \|x_{(k)}\|` are the present
  clients' norms (no clipping when :math:`m \le 0`). The threshold adapts
  to the round, unlike `norm_clipping`; Allouah et al. show that ARC keeps
  any :math:`(b, \kappa)`-robust rule :math:`(b, \kappa')`-robust with
  :math:`\kappa' = O(\kappa)` and improves robustness under attack when the
  honest updates have small norms.

  References:
    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "The Vital Role of
    Gradient Clipping in Byzantine-Resilient Distributed Learning", 2024,
    https://arxiv.org/abs/2405.14432 (as ByzFL's ``ARC``).

  Args:
    num_byzantine: ``b``.

  Returns:
    A stateless `PreAggregator`; rejected clients become zero rows of
    weight 0.
  """
  _presence.check_num_byzantine(num_byzantine)

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    del params, extra
    _presence.check_cohort_size(num_byzantine, client_updates, 'arc')
    present = _presence.present_clients(client_updates, weights)
    k = jnp.sum(present)
    norms = jnp.sqrt(jnp.where(present,
                               _presence.client_sq_norms(client_updates), 0.))
    clipped = jnp.clip(2 * num_byzantine * (k - num_byzantine)
                       // jnp.maximum(k, 1), 0, jnp.maximum(k - 1, 0))
    ascending = jnp.sort(jnp.where(present, norms, jnp.inf))
    threshold = ascending[jnp.maximum(k - clipped - 1, 0)]
    scale = jnp.where(norms > threshold,
                      threshold / jnp.where(norms > 0, norms, 1.), 1.)
    new_weights = jnp.where(present, weights, 0.).astype(jnp.float32)
    return (_scale_rows(client_updates, scale, present),
            new_weights), state

  return PreAggregator(_presence.empty_state, update_fn)


class BucketingState(NamedTuple):
  """State of `bucketing`."""
  rng_key: jax.Array  # Split at every update.


def _content_hash(stacked: PyTree) -> jax.Array:
  """uint32 [C]: a hash of each client's update bits (order-free input)."""
  total = jnp.zeros(jax.tree.leaves(stacked)[0].shape[0], jnp.uint32)
  for n, leaf in enumerate(jax.tree.leaves(stacked)):
    flat = leaf.reshape(leaf.shape[0], -1)
    if flat.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(
          jnp.uint32)
    elif flat.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
    else:
      bits = jax.lax.bitcast_convert_type(flat.astype(jnp.float32),
                                          jnp.uint32)
    position = (jnp.arange(flat.shape[1], dtype=jnp.uint32)
                * jnp.uint32(2654435761) + jnp.uint32(2 * n + 1))
    total = total * jnp.uint32(16777619) + jnp.sum(bits * position, axis=1,
                                                   dtype=jnp.uint32)
  return total


def bucketing(bucket_size: int, *, key: jax.Array) -> PreAggregator:
  r"""Random bucketing: the means of random groups of ``s`` clients.

  Clients are put in a random order, cut into ``ceil(C / s)`` buckets of
  ``s`` (the last padded with absent clients), and each bucket becomes
  the mean of its present members (absent if it has none). The
  aggregator after it then sees ``ceil(C / s)`` inputs.

  Randomness: the state holds an ``rng_key``, split at every update; an
  ``key=`` extra argument, when given, is used instead (and the state's key
  is left as it is). The random order is drawn from the key *and* a hash of
  each client's update, not from its position, so the result does not
  depend on the order in which clients arrive (identical updates are
  interchangeable); for a fixed key it is a fixed function of the
  multiset of updates.

  Args:
    bucket_size: ``s >= 1``.
    key: the initial key stored in the state.

  Returns:
    A `PreAggregator` with `BucketingState`.
  """
  if not isinstance(bucket_size, int) or bucket_size < 1:
    raise ValueError(f'bucket_size must be an int >= 1, got '
                     f'{bucket_size!r}.')

  def init_fn(params):
    del params
    return BucketingState(rng_key=key)

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    del params
    if extra.get('key') is not None:
      use_key, new_state = extra['key'], state
    else:
      use_key, next_key = jax.random.split(state.rng_key)
      new_state = BucketingState(rng_key=next_key)
    present = _presence.present_clients(client_updates, weights)
    num = present.shape[0]
    num_buckets = -(-num // bucket_size)
    # An absent client hashes like a zero row (hash 0), whatever it sent.
    hashes = jnp.where(present, _content_hash(client_updates), 0)
    priority = jax.vmap(
        lambda h: jax.random.bits(jax.random.fold_in(use_key, h)))(hashes)
    order = jnp.argsort(priority, stable=True)
    # Bucket i holds the clients at positions i*s .. i*s + s - 1 of the
    # random order; its mean is a sum of s gathered rows fused into one
    # pass that writes only the [C / s, d] means (no [C, d] copy).
    padded = jnp.concatenate([order, jnp.zeros(
        num_buckets * bucket_size - num, order.dtype)])
    slot_present = jnp.concatenate([present[order], jnp.zeros(
        num_buckets * bucket_size - num, bool)]).reshape(num_buckets,
                                                         bucket_size)
    members = padded.reshape(num_buckets, bucket_size)
    count = jnp.sum(slot_present, axis=1).astype(jnp.float32)
    inverse = 1. / jnp.maximum(count, 1.)

    def bucket(leaf):
      dtype = _presence.compute_dtype(leaf.dtype)
      flat = leaf.reshape(num, -1)  # [C, d]: fast on XLA:CPU.
      total = jnp.zeros((num_buckets, flat.shape[1]), dtype)
      for j in range(bucket_size):
        total = total + jnp.where(slot_present[:, j, None],
                                  flat[members[:, j]].astype(dtype), 0.)
      total = total * inverse[:, None].astype(dtype)
      return total.reshape((num_buckets,) + leaf.shape[1:]).astype(
          leaf.dtype)

    return (jax.tree.map(bucket, client_updates),
            count), new_state

  return PreAggregator(init_fn, update_fn)


def process(*stages) -> Aggregator:
  """Chains pre-aggregators and a final aggregator into one `Aggregator`.

  ``process(p_1, ..., p_m, F)`` aggregates ``F(p_m(...p_1(x)))``; the state
  is the tuple of the stages' states. ``params`` and every extra keyword
  argument (the round's ``key``, ``server_state`` and ``client_info``,
  `core.aggregate_outputs`) reach every stage unchanged; ``client_info``
  stays per original client even after a stage (bucketing) changes C.

  Args:
    *stages: zero or more `PreAggregator` followed by one `core.Aggregator`.

  Returns:
    A `core.Aggregator`.
  """
  if not stages:
    raise ValueError('process needs at least a final aggregator.')
  *pre, final = stages
  for p in pre:
    if not isinstance(p, PreAggregator):
      raise TypeError(f'Every stage but the last must be a PreAggregator, '
                      f'got {type(p).__name__}.')
  if isinstance(final, PreAggregator) or not isinstance(final, Aggregator):
    raise TypeError('The last stage must be a core.Aggregator.')

  def init_fn(params):
    return tuple(s.init(params) for s in stages)

  def update_fn(client_updates, state, params=None, *, weights, **extra):
    new_states = []
    for stage, stage_state in zip(pre, state[:-1]):
      (client_updates, weights), stage_state = stage.update(
          client_updates, stage_state, params, weights=weights, **extra)
      new_states.append(stage_state)
    aggregate, final_state = final.update(client_updates, state[-1], params,
                                          weights=weights, **extra)
    return aggregate, tuple(new_states) + (final_state,)

  return Aggregator(init_fn, update_fn)


chain = process
