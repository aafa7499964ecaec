r"""Gossip mixing :math:`x \leftarrow W x` and how fast it reaches consensus.

**Mixing.** Every leaf of ``rows`` is stacked over nodes, [N, ...]; one
gossip step replaces row :math:`i` by :math:`\sum_j W_{ij} x_j`. `mix` reads
the sparse `Graph` slot by slot, accumulating into one [N, ...] buffer:
memory :math:`O(N \cdot |x|)` and time :math:`O((N + |E|) \cdot |x|)`,
linear in edges. `mix_dense` is the matmul :math:`W X` for small N (or a
dense W from elsewhere; :math:`O(N^2 |x|)`).

**Consensus.** Write :math:`J = \mathbf{1}\mathbf{1}^\top / N`. For a doubly
stochastic W, :math:`W J = J W = J`, so with :math:`\bar x = J x`,
:math:`W x - \bar x = (W - J)(x - \bar x)` and

.. math:: \mathbb{E}\|W x - \bar x\|^2
   = (x - \bar x)^\top \mathbb{E}[W^\top W] (x - \bar x)
   \le \rho \, \|x - \bar x\|^2,
   \qquad \rho = \lambda_2(\mathbb{E}[W^\top W]),

the second largest eigenvalue (the largest on the subspace orthogonal to
:math:`\mathbf{1}`; Boyd et al., "Randomized gossip algorithms", IEEE
Trans. Inf. Theory 2006, Sec. II; Koloskova et al., "A Unified Theory of
Decentralized SGD with Changing Topology and Local Updates", ICML 2020,
Assumption 4, where :math:`p = 1 - \rho`). `contraction` estimates
:math:`\rho` by Monte Carlo (exact from one draw for a fixed graph). For a
fixed symmetric W, :math:`\rho = |\lambda_2(W)|^2` where :math:`|\lambda_2|`
is the second largest eigenvalue modulus, and `spectral_gap` is :math:`1 -
|\lambda_2(W)|`: :math:`\|W^t x - \bar x\| \le |\lambda_2|^t \|x - \bar
x\|`, so about :math:`1/\text{gap}` steps shrink disagreement by a factor
:math:`e`. A disconnected graph has :math:`|\lambda_2| = 1` (gap 0): each
component reaches its own average only.

**TAD-LoRA interval.** TAD-LoRA (arXiv 2602.00451) alternates which LoRA
factor is trained every T rounds with :math:`T^\ast(\rho) \asymp 1 /
\sqrt{1 - \rho}`: `tad_lora_interval` is the practical rule
:math:`T = \max(1, \mathrm{round}(c / \sqrt{1 - \rho}))`.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext.core import PyTree
from fedjax_ext.topology import _graphs

HIGHEST = jax.lax.Precision.HIGHEST

# Up to this many slots the loop over slots is unrolled in Python, so XLA
# fuses the whole mix into one pass over the output; wider tables (complete
# and Erdos-Renyi graphs) use a fori_loop to keep compile time flat.
_UNROLL_SLOTS = 16


def _leaf_dtype(leaf, caller: str):
  dtype = jnp.result_type(leaf)
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(f'{caller} mixes floating leaves only, got a leaf of '
                    f'dtype {dtype}.')
  return jnp.promote_types(dtype, jnp.float32)


def _check_rows(leaf, num_nodes: int, caller: str):
  if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num_nodes:
    raise ValueError(f'{caller}: every leaf of rows must be [N={num_nodes}, '
                     f'...], got shape {jnp.shape(leaf)}.')


@jax.jit
def mix(graph: _graphs.Graph, rows: PyTree) -> PyTree:
  r"""One gossip step :math:`x_i \leftarrow W_{ii} x_i + \sum_d
  W_{i, n_{id}} x_{n_{id}}` on every leaf [N, ...] (jittable).

  Loops over the D neighbour slots, gathering one [N, ...] block per slot
  and accumulating in float32 (or wider): memory :math:`O(N |x|)`, time
  linear in edges. Padding slots gather the node's own row with weight 0,
  so an inactive node's row comes back unchanged (bit for bit when finite).
  Under node-axis sharding XLA inserts the collectives the gather needs.

  Args:
    graph: this round's `Graph` (e.g. ``topology.sample(key)``).
    rows: pytree of floating leaves [N, ...].

  Returns:
    The mixed pytree, leaves in their input dtypes.
  """
  num_nodes, slots = graph.neighbors.shape

  def mix_leaf(leaf):
    _check_rows(leaf, num_nodes, 'mix')
    dtype = _leaf_dtype(leaf, 'mix')
    x = jnp.asarray(leaf).astype(dtype)
    shape = (num_nodes,) + (1,) * (x.ndim - 1)
    out = graph.self_weights.astype(dtype).reshape(shape) * x

    def add_slot(slot, acc):
      index = graph.neighbors[:, slot]
      weight = graph.weights[:, slot].astype(dtype).reshape(shape)
      return acc + weight * _gather_rows(x, index)

    if slots <= _UNROLL_SLOTS:
      for slot in range(slots):
        out = add_slot(slot, out)
    else:
      out = jax.lax.fori_loop(0, slots, add_slot, out)
    return out.astype(jnp.result_type(leaf))

  return jax.tree.map(mix_leaf, rows)


def _gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """``x[index]`` along the node axis, under any sharding of ``x``.

  With explicitly sharded axes (``jax.make_mesh`` defaults to them) the
  gather needs its output sharding: the rows keep ``x``'s (node-axis)
  sharding, and JAX inserts the collectives. Otherwise (no mesh, or
  ``AxisType.Auto`` meshes as `core.client_mesh` builds) XLA propagates it.
  """
  sharding = jax.typeof(x).sharding
  axis_types = getattr(getattr(sharding, 'mesh', None), 'axis_types', ())
  if any(t == jax.sharding.AxisType.Explicit for t in axis_types):
    return x.at[index].get(mode='clip', out_sharding=sharding)
  return jnp.take(x, index, axis=0, mode='clip')


@jax.jit
def mix_dense(matrix: jax.Array, rows: PyTree) -> PyTree:
  """``matrix @ rows`` leaf by leaf ([N, N] x [N, ...]), float32 or wider.

  For small N (or a W that is not a `Graph`); cost :math:`O(N^2 |x|)`.
  """
  matrix = jnp.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f'matrix must be square [N, N], got shape '
                     f'{matrix.shape}.')

  def mix_leaf(leaf):
    _check_rows(leaf, matrix.shape[0], 'mix_dense')
    dtype = _leaf_dtype(leaf, 'mix_dense')
    out = jnp.tensordot(matrix.astype(dtype), jnp.asarray(leaf).astype(dtype),
                        axes=1, precision=HIGHEST)
    return out.astype(jnp.result_type(leaf))

  return jax.tree.map(mix_leaf, rows)


@jax.jit
def dense_matrix(graph: _graphs.Graph) -> jax.Array:
  """The [N, N] float32 matrix W of a `Graph` (jittable; O(N^2) memory)."""
  num_nodes, slots = graph.neighbors.shape
  source = jnp.repeat(jnp.arange(num_nodes), slots)
  matrix = jnp.zeros((num_nodes, num_nodes), jnp.float32)
  matrix = matrix.at[source, graph.neighbors.reshape(-1)].add(
      graph.weights.reshape(-1).astype(jnp.float32))
  return matrix + jnp.diag(graph.self_weights.astype(jnp.float32))


def check_doubly_stochastic(matrix, atol: float = 1e-5) -> None:
  """Raises ValueError naming the defect unless ``matrix`` is doubly stochastic.

  Checks (on the host): square, finite, entries >= -atol, every row and
  every column summing to 1 within ``atol``.
  """
  w = np.asarray(matrix, np.float64)
  if w.ndim != 2 or w.shape[0] != w.shape[1]:
    raise ValueError(f'A mixing matrix must be square [N, N], got shape '
                     f'{w.shape}.')
  if not np.all(np.isfinite(w)):
    raise ValueError('The mixing matrix has non-finite entries at '
                     f'{np.argwhere(~np.isfinite(w))[:5].tolist()}.')
  if w.min(initial=0.0) < -atol:
    i, j = np.unravel_index(np.argmin(w), w.shape)
    raise ValueError(f'The mixing matrix has a negative entry W[{i}, {j}] = '
                     f'{w[i, j]:.6g}.')
  for axis, what in ((1, 'row'), (0, 'column')):
    error = np.abs(w.sum(axis=axis) - 1.0)
    if error.size and error.max() > atol:
      k = int(np.argmax(error))
      raise ValueError(f'The mixing matrix is not doubly stochastic: {what} '
                       f'{k} sums to {w.sum(axis=axis)[k]:.6g}, not 1 '
                       f'(atol={atol}).')


def _consensus_free(matrix: np.ndarray) -> np.ndarray:
  """``M - J`` for a matrix with M 1 = 1 and 1^T M = 1^T (J = 11^T / N)."""
  return matrix - 1.0 / matrix.shape[0]


def spectral_gap(matrix) -> float:
  r"""``1 - |lambda_2|`` of a symmetric doubly stochastic W (host, float64).

  :math:`|\lambda_2|` is the largest eigenvalue modulus on the subspace
  orthogonal to :math:`\mathbf{1}`, i.e. the spectral norm of :math:`W -
  J`; it is the per-step contraction of :math:`\|x - \bar x\|` under
  :math:`x \leftarrow W x`. Gap 0 means a disconnected (or periodic) graph;
  gap 1 means one step reaches the average (e.g. uniform weights on K_N).
  A single node has gap 1.

  Raises:
    ValueError: if ``matrix`` is not symmetric and doubly stochastic.
  """
  w = np.asarray(matrix, np.float64)
  check_doubly_stochastic(w)
  if not np.allclose(w, w.T, atol=1e-5):
    raise ValueError('spectral_gap needs a symmetric matrix (Metropolis-'
                     'Hastings or uniform-degree weights).')
  if w.shape[0] == 1:
    return 1.0
  eigenvalues = np.linalg.eigvalsh(_consensus_free((w + w.T) / 2))
  return float(np.clip(1.0 - np.max(np.abs(eigenvalues)), 0.0, 1.0))


def expected_gram(topology: _graphs.Topology, key: jax.Array,
                  num_samples: int = 64) -> np.ndarray:
  """Monte-Carlo E[W^T W] over ``num_samples`` draws [N, N] (float64).

  One draw (exact) when ``topology.deterministic``. Draws are
  ``topology.sample(k)`` for ``k in jax.random.split(key, num_samples)``.
  """
  _graphs.check_topology(topology)
  num_samples = _graphs.check_int('num_samples', num_samples, 1)
  if topology.deterministic:
    num_samples = 1
  return _draw_stats(topology, jax.random.split(key, num_samples))[0]


def _draw_stats(topology, keys):
  """Mean W^T W, mean W and mean degree over the draws of ``keys`` (numpy).

  One compiled draw called per key (vmap or scan over draws would double
  the compile time of the samplers' hashes; dispatch is cheap at small N).
  """
  gram = mean_w = 0.0
  degree = 0.0
  for key in keys:
    w, d = (np.asarray(a, np.float64) for a in _one_draw(topology, key))
    gram = gram + w.T @ w
    mean_w = mean_w + w
    degree += float(d)
  return gram / len(keys), mean_w / len(keys), degree / len(keys)


@jax.jit(static_argnums=0)
def _one_draw(topology, key):
  graph = topology.sample(key)
  n = graph.neighbors.shape[0]
  edges = graph.neighbors != jnp.arange(n)[:, None]
  return dense_matrix(graph), jnp.mean(jnp.sum(edges, axis=1))


def contraction(topology: _graphs.Topology, key: jax.Array,
                num_samples: int = 64) -> float:
  r""":math:`\rho = \lambda_2(\mathbb{E}[W^\top W])`, Monte Carlo.

  Per mixing step the expected consensus distance contracts by at most
  :math:`\rho`: :math:`\mathbb{E}\|W x - \bar x\|^2 \le \rho \|x - \bar
  x\|^2` (module docstring). Exact from one draw for a deterministic
  topology, where :math:`\rho = |\lambda_2(W)|^2 = (1 - \text{gap})^2`.
  :math:`\rho = 1` means the process never mixes some direction (e.g. a
  disconnected base graph or ``q = 1`` link failures). The Monte-Carlo
  estimate of a largest eigenvalue is biased upwards (conservative), most
  when eigenvalues are degenerate (e.g. random matchings, whose exact
  rho is 1/2 but 64 draws on 9 nodes give ~0.6); raise ``num_samples`` for
  a tighter value. Costs ``num_samples`` dense [N, N] matrices
  (sequentially): for small N.

  Args:
    topology: the graph process.
    key: PRNG key for the draws.
    num_samples: S >= 1 draws (ignored for deterministic topologies).

  Returns:
    rho in [0, 1] (a Python float).
  """
  return _second_eigenvalue(expected_gram(topology, key, num_samples))


def _second_eigenvalue(gram: np.ndarray) -> float:
  """lambda_2 of a symmetric doubly stochastic PSD matrix, in [0, 1]."""
  if gram.shape[0] == 1:
    return 0.0
  gram = _consensus_free((gram + gram.T) / 2)
  return float(np.clip(np.max(np.linalg.eigvalsh(gram)), 0.0, 1.0))


def tad_lora_interval(rho: float, c: float = 1.0) -> int:
  r"""TAD-LoRA switching interval :math:`T = \max(1, \mathrm{round}(c /
  \sqrt{1 - \rho}))`.

  The theory of TAD-LoRA (arXiv 2602.00451) balances the topology-induced
  cross-term error against the block-coordinate bias with :math:`T^\ast
  \asymp 1/\sqrt{1 - \rho}`: sparser graphs (rho -> 1) want longer phases.
  ``c`` is tuned once (the paper sweeps T in {1, 2, 3, 5, 10, 15}).

  Args:
    rho: the contraction factor in [0, 1) (`contraction`).
    c: the constant, > 0.
  """
  if (isinstance(rho, bool) or not isinstance(rho, numbers.Real) or
      not 0.0 <= float(rho) < 1.0):
    raise ValueError(f'rho must be in [0, 1) (rho = 1 never mixes), got '
                     f'{rho!r}.')
  if (isinstance(c, bool) or not isinstance(c, numbers.Real) or
      not math.isfinite(c) or c <= 0):
    raise ValueError(f'c must be a finite number > 0, got {c!r}.')
  return max(1, int(round(c / math.sqrt(1.0 - float(rho)))))


def summary(topology: _graphs.Topology, key: jax.Array,
            num_samples: int = 64, c: float = 1.0) -> dict:
  """What a run logs about its topology (host; small N).

  Returns:
    ``{'name', 'num_nodes', 'max_degree', 'mixing', 'mean_degree',
    'spectral_gap' (of E[W]), 'contraction' (rho), 'tad_lora_interval'
    (None when rho = 1)}``, from ``num_samples`` draws.
  """
  _graphs.check_topology(topology)
  num_samples = _graphs.check_int('num_samples', num_samples, 1)
  draws = 1 if topology.deterministic else num_samples
  gram, mean_w, mean_degree = _draw_stats(topology,
                                          jax.random.split(key, draws))
  rho = _second_eigenvalue(gram)  # = contraction(topology, key, num_samples)
  return {
      'name': topology.name,
      'num_nodes': topology.num_nodes,
      'max_degree': topology.max_degree,
      'mixing': topology.mixing,
      'mean_degree': mean_degree,
      'spectral_gap': spectral_gap(mean_w),
      'contraction': rho,
      'tad_lora_interval': (tad_lora_interval(rho, c) if rho < 1.0 else
                            None),
  }
