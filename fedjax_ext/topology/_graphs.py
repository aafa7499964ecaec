r"""Communication graphs as arrays, and the processes that draw them per round.

A round's graph is a `Graph`: a padded neighbour table plus the mixing
weights of a symmetric, doubly stochastic matrix :math:`W` (Xiao & Boyd,
"Fast linear iterations for distributed averaging", Systems & Control
Letters 2004). A `Topology` is a (possibly random, time-varying) process of
such graphs: ``topology.sample(key)`` is pure and jittable, so a compiled
decentralized round draws its graph from the round key and a time-varying
run never retraces (the shapes ``[N, D]`` are fixed; only the values change).

**Representation.** ``neighbors[i, d]`` is a neighbour :math:`j \ne i` of
node :math:`i`, or :math:`i` itself in a padding slot;
``weights[i, d] = W[i, neighbors[i, d]]`` (0 on padding slots);
``self_weights[i] = W[i, i]``. So a slot is an edge exactly when
``neighbors[i, d] != i`` (with either mixing rule an edge's weight is
positive). Padding slots point at the node itself, so a gather never reads
another node's row through a padding slot (no NaN crosses an absent edge).
Memory is :math:`O(N D)`; with a static degree bound :math:`D` this is
linear in edges.

**Mixing weights** are computed inside ``sample`` from the drawn adjacency
(degrees from the sparse table), by one of

* ``'metropolis_hastings'`` (default): :math:`W_{ij} = 1 / (1 +
  \max(d_i, d_j))` on edges, :math:`W_{ii} = 1 - \sum_{j \ne i} W_{ij}`
  (Xiao, Boyd & Lall, "A scheme for robust distributed sensor fusion based
  on average consensus", IPSN 2005; Boyd, Diaconis & Xiao, "Fastest mixing
  Markov chain on a graph", SIAM Review 2004; the TAD-LoRA reproduction,
  arXiv 2602.00451, uses it). Needs only the two endpoints' degrees.
* ``'uniform_degree'`` ("max-degree" weights, Xiao & Boyd 2004 Sec. 4.1):
  :math:`W_{ij} = 1 / (1 + d_{\max})` on edges, where :math:`d_{\max}` is
  the largest degree of the current graph, and :math:`W_{ii} = 1 - d_i /
  (1 + d_{\max})`. Needs one global maximum per round.

Both are symmetric with nonnegative entries and unit row sums, hence doubly
stochastic: gossip :math:`x \leftarrow W x` preserves the average
:math:`\bar x` of the rows and (on a connected graph) drives every row to it.

**Failures.** `with_link_failures` drops each edge independently per round
and `with_node_dropout` drops each node; both recompute the weights on the
surviving graph. An inactive node has no edges, ``self_weights = 1`` and
nobody mixes with it, so `mix` leaves its row unchanged. Edge draws are
symmetric: the uniform for edge :math:`\{i, j\}` comes from the key folded
with :math:`(\min(i, j), \max(i, j))`, so both endpoints agree.

**Sparse time-varying graphs.** `erdos_renyi` activates edges of the
complete graph (``D = N - 1``, memory and mixing cost :math:`O(N^2)` per
round: fine for the TAD-LoRA setting of ~10 nodes, not for 100k). For large
sparse time-varying graphs, fail links of a sparse base instead, e.g.
``with_link_failures(exponential(N, num_hops=4), q)`` (``D = 8``), or use
`random_matching` (``D = 1``).
"""

import math
import numbers
from typing import Callable, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

MIXING_RULES = ('metropolis_hastings', 'uniform_degree')


class Graph(NamedTuple):
  """One round's mixing matrix W, sparse and padded (a pytree of arrays).

  Attributes:
    neighbors: int32 [N, D]: neighbour indices j != i; padding slots hold i.
    weights: float32 [N, D]: ``W[i, neighbors[i, d]]``; 0 on padding slots.
    self_weights: float32 [N]: ``W[i, i]``.
    active: bool [N]: nodes taking part this round (node dropout). Inactive
      nodes have self weight 1, no edges, and no one mixes with them.
  """
  neighbors: jax.Array
  weights: jax.Array
  self_weights: jax.Array
  active: jax.Array


class Topology(NamedTuple):
  """A (possibly random, time-varying) graph process.

  Attributes:
    name: a readable description, e.g. ``'ring(16)'``.
    num_nodes: N.
    max_degree: D, the (static) width of ``Graph.neighbors``.
    sample: ``key -> Graph``; pure and jittable. Deterministic topologies
      ignore the key.
    mixing: the weight rule (one of `MIXING_RULES`); failure wrappers reuse
      it unless told otherwise.
    deterministic: whether ``sample`` ignores its key (a fixed graph), so
      one draw gives the exact E[W^T W].
  """
  name: str
  num_nodes: int
  max_degree: int
  sample: Callable[[jax.Array], Graph]
  mixing: str = 'metropolis_hastings'
  deterministic: bool = False


# ----------------------------------------------------------------------------
# Validation.


def check_int(name: str, value, minimum: int) -> int:
  """``value`` as an int >= ``minimum`` (bools rejected), else ValueError."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or
      value < minimum):
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')
  return int(value)


def check_probability(name: str, value) -> float:
  """``value`` as a float in [0, 1] (NaN rejected), else ValueError."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not 0.0 <= float(value) <= 1.0):
    raise ValueError(f'{name} must be a probability in [0, 1], got '
                     f'{value!r}.')
  return float(value)


def check_mixing(mixing) -> str:
  """``mixing`` if it is one of `MIXING_RULES`, else ValueError."""
  if mixing not in MIXING_RULES:
    raise ValueError(f'Unknown mixing {mixing!r}; valid values are '
                     f'{", ".join(repr(m) for m in MIXING_RULES)}.')
  return mixing


def check_topology(topology) -> Topology:
  """``topology`` if it is a `Topology`, else TypeError."""
  if not isinstance(topology, Topology):
    raise TypeError(f'topology must be a topology.Topology, got '
                    f'{type(topology).__name__}.')
  return topology


# ----------------------------------------------------------------------------
# Weights from the drawn adjacency (inside the jitted sample).


def mixing_weights(neighbors: jax.Array, edges: jax.Array,
                   active: jax.Array,
                   mixing: str = 'metropolis_hastings') -> Graph:
  r"""The `Graph` of the given adjacency under a mixing rule (jittable).

  Args:
    neighbors: int [N, D] neighbour table (any value in slots that are not
      edges).
    edges: bool [N, D], which slots are edges this round; must be symmetric
      (slot (i, d) with j = neighbors[i, d] is on iff j's slot for i is on).
    active: bool [N], nodes taking part; edges touching an inactive node
      are dropped.
    mixing: one of `MIXING_RULES` (see the module docstring).

  With NumPy inputs (fixed graphs, once on the host) it computes in NumPy.

  Returns:
    The padded `Graph`: dead slots point at the node itself with weight 0;
    degrees :math:`d_i` count the live slots of row i.
  """
  check_mixing(mixing)
  # NumPy inputs (fixed graphs, built once on the host) stay in NumPy.
  on_host = all(isinstance(a, np.ndarray) for a in (neighbors, edges, active))
  xp = np if on_host else jnp
  neighbors = xp.asarray(neighbors, xp.int32)
  n = neighbors.shape[0]
  own = xp.arange(n, dtype=xp.int32)[:, None]
  active = xp.asarray(active, bool)
  edges = (xp.asarray(edges, bool) & (neighbors != own) & active[:, None] &
           active[neighbors])
  neighbors = xp.where(edges, neighbors, own)
  degree = xp.sum(edges, axis=1, dtype=xp.int32)
  if mixing == 'metropolis_hastings':
    larger = xp.maximum(degree[:, None], degree[neighbors])
  else:
    larger = xp.broadcast_to(xp.max(degree, initial=0), neighbors.shape)
  weights = xp.where(edges, 1.0 / (1.0 + larger.astype(xp.float32)), 0.0)
  weights = weights.astype(xp.float32)
  self_weights = (1.0 - xp.sum(weights, axis=1)).astype(xp.float32)
  return Graph(neighbors, weights, self_weights, active)


def edge_uniforms(key: jax.Array, neighbors: jax.Array) -> jax.Array:
  r"""A uniform [0, 1) per slot, equal for both directions of an edge.

  Slot (i, d) with j = neighbors[i, d] gets the Threefry-2x32 hash
  (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
  the counter-based generator behind ``jax.random``) of the counter
  :math:`(\min(i, j), \max(i, j))` under ``key`` (its raw words for a
  threefry key, as ``jax.random`` itself does; a seed drawn from it for
  other PRNG implementations): one hash per slot, and an undirected edge is
  one draw. Do not reuse ``key`` for other draws.
  """
  words = jax.random.key_data(key)
  if words.shape == (2,) and words.dtype == jnp.uint32:
    seed = words
  else:
    seed = jax.random.bits(key, (2,), jnp.uint32)
  n = neighbors.shape[0]
  own = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None],
                         neighbors.shape)
  low = jnp.minimum(own, neighbors).reshape(-1).astype(jnp.uint32)
  high = jnp.maximum(own, neighbors).reshape(-1).astype(jnp.uint32)
  bits = jax.extend.random.threefry_2x32(
      seed, jnp.concatenate([low, high]))[:low.shape[0]]
  uniform = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
  return uniform.reshape(neighbors.shape)


# ----------------------------------------------------------------------------
# Static graphs, built on the host with numpy.


def _neighbor_table(num_nodes: int, edges: np.ndarray) -> np.ndarray:
  """Padded [N, D] table (D >= 1) of an undirected edge list [E, 2]."""
  edges = np.asarray(edges, np.int64).reshape(-1, 2)
  edges = edges[edges[:, 0] != edges[:, 1]]
  both = np.concatenate([edges, edges[:, ::-1]])
  both = np.unique(both, axis=0)  # Sorted by source; no duplicate edges.
  degree = np.bincount(both[:, 0], minlength=num_nodes)
  width = max(1, int(degree.max(initial=0)))
  table = np.repeat(np.arange(num_nodes, dtype=np.int32)[:, None], width, 1)
  start = np.concatenate([[0], np.cumsum(degree)[:-1]])
  slot = np.arange(len(both)) - start[both[:, 0]]
  table[both[:, 0], slot] = both[:, 1]
  return table


def _static(name: str, num_nodes: int, table: np.ndarray,
            mixing: str) -> Topology:
  """A deterministic topology of a fixed padded table."""
  check_mixing(mixing)
  table = np.asarray(table, np.int32)
  own = np.arange(num_nodes, dtype=np.int32)[:, None]
  edges = table != own

  cache = []

  def sample(key):
    """The fixed graph: weights computed once on the host, then reused."""
    del key
    if not cache:
      graph = mixing_weights(table, edges, np.ones(num_nodes, bool), mixing)
      with jax.ensure_compile_time_eval():
        cache.append(jax.tree.map(jnp.asarray, graph))
    return cache[0]

  return Topology(name, num_nodes, table.shape[1], sample, mixing, True)


def from_edges(num_nodes: int, edges, *, mixing: str = 'metropolis_hastings',
               name: str | None = None) -> Topology:
  """A fixed graph from an undirected edge list.

  Args:
    num_nodes: N >= 1.
    edges: int array-like [E, 2] of node pairs in [0, N); self loops and
      duplicates (in either direction) are ignored.
    mixing: one of `MIXING_RULES`.
    name: defaults to ``'graph(N, E edges)'``.

  Returns:
    A deterministic `Topology` with D = the largest degree (at least 1).
  """
  num_nodes = check_int('num_nodes', num_nodes, 1)
  check_mixing(mixing)
  edges = np.asarray(edges)
  if edges.size and (edges.ndim != 2 or edges.shape[1] != 2 or
                     not np.issubdtype(edges.dtype, np.integer)):
    raise ValueError(f'edges must be an int array [E, 2], got shape '
                     f'{edges.shape} and dtype {edges.dtype}.')
  if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
    raise ValueError(f'edges must hold node indices in [0, {num_nodes}), got '
                     f'values in [{edges.min()}, {edges.max()}].')
  table = _neighbor_table(num_nodes, edges)
  name = name or f'graph({num_nodes}, {len(edges)} edges)'
  return _static(name, num_nodes, table, mixing)


def _circulant(name: str, num_nodes: int, offsets, mixing: str) -> Topology:
  """Node i linked to i + s mod N for s in ``offsets`` (closed under -s)."""
  shifts = sorted({int(s) % num_nodes for s in offsets} - {0})
  if not shifts:
    return from_edges(num_nodes, np.zeros((0, 2), np.int64), mixing=mixing,
                      name=name)
  own = np.arange(num_nodes, dtype=np.int64)[:, None]
  table = ((own + np.asarray(shifts)[None, :]) % num_nodes).astype(np.int32)
  return _static(name, num_nodes, table, mixing)


def ring(num_nodes: int, *, mixing: str = 'metropolis_hastings') -> Topology:
  r"""Cycle i ~ i +- 1 mod N (D = 2; N = 2 is one edge, N = 1 no edge).

  With Metropolis-Hastings weights every entry is 1/3, and the eigenvalues
  are :math:`\tfrac13 + \tfrac23 \cos(2\pi k / N)`, so the spectral gap is
  :math:`\tfrac23 (1 - \cos(2\pi/N)) \approx 4\pi^2 / (3 N^2)` for N >= 5:
  the worst-connected graph here.
  """
  num_nodes = check_int('num_nodes', num_nodes, 1)
  return _circulant(f'ring({num_nodes})', num_nodes, (1, -1),
                    check_mixing(mixing))


def torus(rows: int, cols: int, *,
          mixing: str = 'metropolis_hastings') -> Topology:
  """2-D torus grid of rows x cols nodes, node r * cols + c (D <= 4)."""
  rows = check_int('rows', rows, 1)
  cols = check_int('cols', cols, 1)
  check_mixing(mixing)
  node = np.arange(rows * cols).reshape(rows, cols)
  right = np.stack([node, np.roll(node, -1, axis=1)], -1).reshape(-1, 2)
  down = np.stack([node, np.roll(node, -1, axis=0)], -1).reshape(-1, 2)
  return from_edges(rows * cols, np.concatenate([right, down]), mixing=mixing,
                    name=f'torus({rows}x{cols})')


def complete(num_nodes: int, *,
             mixing: str = 'metropolis_hastings') -> Topology:
  """All pairs linked (D = N - 1); uniform weights average in one step."""
  num_nodes = check_int('num_nodes', num_nodes, 1)
  return _circulant(f'complete({num_nodes})', num_nodes,
                    range(1, num_nodes), check_mixing(mixing))


def star(num_nodes: int, *, mixing: str = 'metropolis_hastings') -> Topology:
  """Hub 0 linked to every other node (D = N - 1 for the padded table)."""
  num_nodes = check_int('num_nodes', num_nodes, 1)
  check_mixing(mixing)
  leaves = np.arange(1, num_nodes)
  edges = np.stack([np.zeros_like(leaves), leaves], -1)
  return from_edges(num_nodes, edges, mixing=mixing,
                    name=f'star({num_nodes})')


def exponential(num_nodes: int, num_hops: int | None = None, *,
                mixing: str = 'metropolis_hastings') -> Topology:
  r"""Static exponential graph: i ~ i +- 2^k mod N for k < ``num_hops``.

  The undirected form of the exponential graph of Assran et al. (SGP,
  ICML 2019) and Ying et al. ("Exponential Graph is Provably Efficient for
  Decentralized Deep Training", NeurIPS 2021): degree :math:`\approx 2
  \log_2 N` with a spectral gap :math:`\Theta(1 / \log N)` by default.

  Args:
    num_nodes: N >= 1.
    num_hops: K >= 1, the number of powers of two (default: every k with
      :math:`2^k < N`). ``num_hops=4`` gives a degree-8 graph (N >= 17).
    mixing: one of `MIXING_RULES`.
  """
  num_nodes = check_int('num_nodes', num_nodes, 1)
  check_mixing(mixing)
  if num_hops is None:
    num_hops = max(1, math.ceil(math.log2(num_nodes))) if num_nodes > 1 else 1
  num_hops = check_int('num_hops', num_hops, 1)
  offsets = [s * 2**k for k in range(num_hops) for s in (1, -1)]
  return _circulant(f'exponential({num_nodes}, hops={num_hops})', num_nodes,
                    offsets, mixing)


# ----------------------------------------------------------------------------
# Random graphs and failure models.


def random_matching(num_nodes: int, *,
                    mixing: str = 'metropolis_hastings') -> Topology:
  """A uniformly random (near-)perfect matching per round (D = 1).

  Pairs ``perm[2k]`` with ``perm[2k + 1]`` for a random permutation; with
  odd N one node sits out (no edge). Both rules give weight 1/2 per pair:
  the random pairwise gossip of Boyd et al. ("Randomized gossip
  algorithms", IEEE Trans. Inf. Theory 2006), synchronous form.
  """
  num_nodes = check_int('num_nodes', num_nodes, 1)
  check_mixing(mixing)
  pairs = num_nodes // 2

  def sample(key):
    perm = jax.random.permutation(key, num_nodes).astype(jnp.int32)
    partner = jnp.arange(num_nodes, dtype=jnp.int32)
    first, second = perm[0:2 * pairs:2], perm[1:2 * pairs:2]
    partner = partner.at[first].set(second).at[second].set(first)
    table = partner[:, None]
    own = jnp.arange(num_nodes, dtype=jnp.int32)[:, None]
    return mixing_weights(table, table != own,
                          jnp.ones(num_nodes, bool), mixing)

  return Topology(f'random_matching({num_nodes})', num_nodes, 1, sample,
                  mixing, False)


def with_link_failures(topology: Topology, q: float, *,
                       mixing: str | None = None,
                       name: str | None = None) -> Topology:
  """Each edge of ``topology``'s draw fails independently with prob. ``q``.

  Failures are redrawn every round (symmetric: `edge_uniforms`), and the
  weights are recomputed on the surviving edges, so W stays doubly
  stochastic. ``q = 1`` gives W = I.

  Args:
    topology: the base process (static or random).
    q: failure probability in [0, 1].
    mixing: the weight rule; defaults to the base topology's.
    name: defaults to ``'<base>+links(q=...)'``.
  """
  check_topology(topology)
  q = check_probability('q', q)
  mixing = check_mixing(topology.mixing if mixing is None else mixing)
  n = topology.num_nodes

  def sample(key):
    base_key, fail_key = jax.random.split(key)
    graph = topology.sample(base_key)
    own = jnp.arange(n, dtype=jnp.int32)[:, None]
    alive = edge_uniforms(fail_key, graph.neighbors) >= q
    return mixing_weights(graph.neighbors, (graph.neighbors != own) & alive,
                          graph.active, mixing)

  return Topology(name or f'{topology.name}+links(q={q:g})', n,
                  topology.max_degree, sample, mixing, q == 0.0 and
                  topology.deterministic)


def erdos_renyi(num_nodes: int, p: float, *,
                mixing: str = 'metropolis_hastings') -> Topology:
  """Every edge of K_N active independently with probability ``p`` per round.

  The TAD-LoRA dynamic topology (arXiv 2602.00451, p in {0.5, ..., 0.01}).
  This is ``with_link_failures(complete(N), 1 - p)``: D = N - 1, so memory
  and mixing cost are O(N^2) per round (fine for tens to a few thousand
  nodes). For sparse time-varying graphs at scale, fail the links of a
  sparse base instead, e.g. ``with_link_failures(exponential(N, 4), q)``.
  """
  num_nodes = check_int('num_nodes', num_nodes, 1)
  p = check_probability('p', p)
  check_mixing(mixing)
  return with_link_failures(complete(num_nodes, mixing=mixing), 1.0 - p,
                            name=f'erdos_renyi({num_nodes}, p={p:g})')


def with_node_dropout(topology: Topology, q: float, *,
                      mixing: str | None = None,
                      name: str | None = None) -> Topology:
  """Each node drops out independently with probability ``q`` per round.

  A dropped node is inactive in the `Graph`: its edges vanish, its self
  weight is 1 (its row is left unchanged by `mix`), and the weights of the
  remaining nodes are recomputed on the active subgraph.

  Args:
    topology: the base process (its own inactive nodes stay inactive).
    q: dropout probability in [0, 1].
    mixing: the weight rule; defaults to the base topology's.
    name: defaults to ``'<base>+dropout(q=...)'``.
  """
  check_topology(topology)
  q = check_probability('q', q)
  mixing = check_mixing(topology.mixing if mixing is None else mixing)
  n = topology.num_nodes

  def sample(key):
    base_key, drop_key = jax.random.split(key)
    graph = topology.sample(base_key)
    active = graph.active & (jax.random.uniform(drop_key, (n,)) >= q)
    own = jnp.arange(n, dtype=jnp.int32)[:, None]
    return mixing_weights(graph.neighbors, graph.neighbors != own, active,
                          mixing)

  return Topology(name or f'{topology.name}+dropout(q={q:g})', n,
                  topology.max_degree, sample, mixing, q == 0.0 and
                  topology.deterministic)
