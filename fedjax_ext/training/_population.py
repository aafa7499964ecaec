r"""Client stores for populations of up to millions of clients, on the host.

`run_rounds` keeps the client store (one row per client, [N, ...] leaves)
on the device next to the state and passes it whole to
``algorithm.apply``. That does not scale to N = 1,000,000: SCAFFOLD's
control variates of a 7,850-parameter logistic model alone would be 31 GB.
Here the store lives on the host, off the compiled round, and only the
cohort's C rows travel::

    rows   = store.gather(cohort.client_ids)         # [C, ...] NumPy
    state, rows, metrics = apply(state, rows, cohort_view(cohort), key)
    store.scatter(cohort.client_ids, rows)

(`run_round_with_host_store`). The compiled round is the same program as
with an in-device store of C clients, so its time does not depend on N.

Two backends, both O(C) work per round:

* ``'sparse'``: only visited clients have a row (an id -> slot dict and
  row arrays in fixed chunks of ~16 MB, added as clients arrive, so a
  growing store never copies its rows); unvisited clients read as
  ``init_row``. Memory O(visited), not O(N).
* ``'memmap'``: one `np.memmap` file per leaf of N rows, created as a
  sparse file (nothing written up front; unwritten pages cost no disk) and
  a one-byte-per-client ``visited`` map; unvisited clients read as
  ``init_row``. Host memory is the page cache the OS may evict; resident
  set grows with the rows touched, not with N.

Checkpoints: `HostClientStore.state_dict` (visited ids and their rows, the
same for both backends) for orbax next to the algorithm state, or
`HostClientStore.save` / `HostClientStore.restore` (one ``.npz``).

Per-client keys: `cohort_view` keeps ``client_ids`` (the clients' global
ids, from which `core.client_keys` derives their keys) and sets
``Cohort.store_rows = arange(C)``, the rows of the gathered [C, ...] store
the round reads and writes; so a round with the host store equals the same
round with an in-device store of all N clients, randomness included.

Population sampling: `sample_population` draws C distinct ids of N by
Floyd's algorithm in O(C) time and memory, per (seed, round).
"""

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from fedjax_ext import core

BACKENDS = ('sparse', 'memmap')
_CHUNK_BYTES = 16 * 2**20  # Rows per sparse chunk: about this many bytes.
_VISITED_FILE = 'visited.bin'
_STORE_FILE = 'client_store.npz'


def _leaf_file(i: int) -> str:
  return f'leaf_{i}.bin'


class HostClientStore:
  """A client store of ``num_clients`` rows shaped like ``init_row``.

  Args:
    init_row: one client's initial state (a pytree of arrays), what every
      client not yet written reads as.
    num_clients: N >= 1.
    backend: ``'sparse'`` (rows of visited clients only, in memory) or
      ``'memmap'`` (one memory-mapped file per leaf under ``path``).
    path: the directory of the ``'memmap'`` files (created; existing files
      there are overwritten); must be None for ``'sparse'``.

  Raises:
    ValueError: naming the argument, for a bad ``num_clients``,
      ``backend`` or ``path``.
  """

  def __init__(self, init_row: core.PyTree, num_clients: int,
               backend: str = 'sparse', path: str | os.PathLike | None = None):
    if (isinstance(num_clients, bool) or not isinstance(
        num_clients, (int, np.integer)) or num_clients < 1):
      raise ValueError(f'num_clients must be an int >= 1, got '
                       f'{num_clients!r}.')
    if backend not in BACKENDS:
      raise ValueError(f'Unknown backend {backend!r}; valid choices: '
                       f'{", ".join(BACKENDS)}.')
    if backend == 'memmap' and path is None:
      raise ValueError("backend='memmap' needs a path (a directory).")
    if backend == 'sparse' and path is not None:
      raise ValueError("path is only for backend='memmap'; got "
                       f'path={path!r} with backend={backend!r}.')
    leaves, self._treedef = jax.tree.flatten(init_row)
    if not leaves:
      raise ValueError('init_row must have at least one array leaf.')
    self._init = [np.asarray(leaf) for leaf in leaves]
    self.num_clients = int(num_clients)
    self.backend = backend
    self.path = None if path is None else os.fspath(path)
    if backend == 'sparse':
      self._chunk = max(1, _CHUNK_BYTES // max(self.row_nbytes, 1))
      self._slots: dict[int, int] = {}
      self._chunks: list[list[np.ndarray]] = []  # [chunk][leaf] [rows, ...]
    else:
      os.makedirs(self.path, exist_ok=True)
      # mode='w+' truncates and extends the file: a sparse file of zeros,
      # no N rows written.
      self._rows = [np.memmap(os.path.join(self.path, _leaf_file(i)),
                              dtype=x.dtype, mode='w+',
                              shape=(self.num_clients,) + x.shape)
                    for i, x in enumerate(self._init)]
      self._visited = np.memmap(os.path.join(self.path, _VISITED_FILE),
                                dtype=np.uint8, mode='w+',
                                shape=(self.num_clients,))

  # -- Reading and writing rows -------------------------------------------

  def _check_ids(self, ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f'ids must be a 1-D integer array, got dtype '
                       f'{ids.dtype} and shape {ids.shape}.')
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_clients):
      raise ValueError(f'ids must be in [0, {self.num_clients}), got values '
                       f'in [{ids.min()}, {ids.max()}].')
    return ids.astype(np.int64)

  def gather(self, ids) -> core.PyTree:
    """Rows of ``ids`` [C] (NumPy leaves [C, ...]); unvisited: ``init_row``."""
    ids = self._check_ids(ids)
    if self.backend == 'sparse':
      slots = np.fromiter((self._slots.get(i, -1) for i in ids.tolist()),
                          np.int64, len(ids))
      known = slots >= 0
    else:
      slots = ids
      known = self._visited[ids].astype(bool)
    if self.backend == 'sparse' or not known.any():
      out = [np.repeat(x[None], len(ids), axis=0) for x in self._init]
      if self.backend == 'sparse' and known.any():
        chunk, offset = np.divmod(slots, self._chunk)
        for c in np.unique(chunk[known]).tolist():
          where = known & (chunk == c)
          for o, rows in zip(out, self._chunks[c]):
            o[where] = rows[offset[where]]
    else:
      # One read of the rows (unknown ones point at a known row), then the
      # unvisited ones overwritten with init_row: the output is written
      # about once, which is what a round pays for on the host.
      index = np.where(known, slots, slots[np.argmax(known)])
      out = [np.asarray(np.take(rows, index, axis=0))
             for rows in self._rows]
      if not known.all():
        for o, x in zip(out, self._init):
          o[~known] = x
    return jax.tree.unflatten(self._treedef, out)

  def scatter(self, ids, rows: core.PyTree) -> None:
    """Writes ``rows`` (leaves [C, ...]) to the clients ``ids`` [C]."""
    ids = self._check_ids(ids)
    leaves, treedef = jax.tree.flatten(rows)
    if treedef != self._treedef:
      raise ValueError(f'rows must have the structure of init_row, '
                       f'{self._treedef}; got {treedef}.')
    leaves = [np.asarray(leaf) for leaf in leaves]
    for leaf, x in zip(leaves, self._init):
      if leaf.shape != (len(ids),) + x.shape:
        raise ValueError(f'rows leaves must be [{len(ids)}, *{x.shape}] '
                         f'for {len(ids)} ids, got {leaf.shape}.')
    if self.backend == 'memmap':
      for store, leaf in zip(self._rows, leaves):
        store[ids] = leaf
      self._visited[ids] = 1
      return
    slots = np.empty(len(ids), np.int64)
    for n, i in enumerate(ids.tolist()):
      slot = self._slots.get(i)
      if slot is None:
        slot = self._slots[i] = len(self._slots)
      slots[n] = slot
    while len(self._chunks) * self._chunk < len(self._slots):
      self._chunks.append([np.empty((self._chunk,) + x.shape, x.dtype)
                           for x in self._init])
    chunk, offset = np.divmod(slots, self._chunk)
    for c in np.unique(chunk).tolist():
      where = chunk == c
      for store, leaf in zip(self._chunks[c], leaves):
        store[offset[where]] = leaf[where]  # Repeated ids: the last wins.

  # -- Size ---------------------------------------------------------------

  @property
  def num_visited(self) -> int:
    """Clients written at least once."""
    if self.backend == 'sparse':
      return len(self._slots)
    return int(np.count_nonzero(self._visited))

  @property
  def row_nbytes(self) -> int:
    """Bytes of one client's row."""
    return sum(x.nbytes for x in self._init)

  def visited_ids(self) -> np.ndarray:
    """Sorted ids of the visited clients (int64 [V])."""
    if self.backend == 'sparse':
      return np.sort(np.fromiter(self._slots, np.int64, len(self._slots)))
    return np.flatnonzero(self._visited).astype(np.int64)

  @property
  def init_row(self) -> core.PyTree:
    """What a client never written reads as (NumPy leaves)."""
    return jax.tree.unflatten(self._treedef, self._init)

  # -- Checkpoints --------------------------------------------------------

  def state_dict(self) -> dict[str, Any]:
    """What a checkpoint holds: ``num_clients``, the visited ``ids`` [V]
    (sorted) and their ``rows`` (a pytree like ``init_row`` of [V, ...]),
    the same for both backends; O(visited) memory."""
    ids = self.visited_ids()
    if self.backend == 'sparse':
      leaves = jax.tree.leaves(self.gather(ids))
    else:
      leaves = [np.asarray(rows[ids]) for rows in self._rows]
    return {'num_clients': np.int64(self.num_clients), 'ids': ids,
            'rows': jax.tree.unflatten(self._treedef, leaves)}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Replaces every row by a `state_dict`'s (same N and row shapes)."""
    if int(state['num_clients']) != self.num_clients:
      raise ValueError(f"state_dict has num_clients={state['num_clients']},"
                       f' this store {self.num_clients}.')
    if self.backend == 'sparse':
      self._slots, self._chunks = {}, []
    else:
      self._visited[:] = 0
    self.scatter(np.asarray(state['ids'], np.int64), state['rows'])

  @classmethod
  def from_state_dict(cls, state: dict[str, Any], init_row: core.PyTree,
                      backend: str = 'sparse',
                      path: str | os.PathLike | None = None
                     ) -> 'HostClientStore':
    """A new store holding a `state_dict` (either backend's)."""
    store = cls(init_row, int(state['num_clients']), backend, path)
    store.load_state_dict(state)
    return store

  def save(self, directory: str | os.PathLike) -> str:
    """Writes `state_dict` to ``<directory>/client_store.npz``; its path."""
    os.makedirs(directory, exist_ok=True)
    state = self.state_dict()
    leaves = jax.tree.leaves(state['rows'])
    path = os.path.join(os.fspath(directory), _STORE_FILE)
    tmp = path + '.tmp.npz'
    np.savez(tmp, num_clients=state['num_clients'], ids=state['ids'],
             **{f'leaf_{i}': leaf for i, leaf in enumerate(leaves)})
    os.replace(tmp, path)  # A crash mid-save keeps the old checkpoint.
    return path

  @classmethod
  def restore(cls, directory: str | os.PathLike, init_row: core.PyTree,
              backend: str = 'sparse',
              path: str | os.PathLike | None = None) -> 'HostClientStore':
    """The store `save` wrote to ``directory``."""
    with np.load(os.path.join(os.fspath(directory), _STORE_FILE)) as f:
      num_leaves = len(jax.tree.leaves(init_row))
      leaves = [f[f'leaf_{i}'] for i in range(num_leaves)]
      state = {'num_clients': f['num_clients'], 'ids': f['ids'],
               'rows': jax.tree.unflatten(jax.tree.structure(init_row),
                                          leaves)}
    return cls.from_state_dict(state, init_row, backend, path)

  def flush(self) -> None:
    """Writes a memmap store's dirty pages to its files (no-op: sparse)."""
    if self.backend == 'memmap':
      for rows in self._rows:
        rows.flush()
      self._visited.flush()


def cohort_view(cohort: core.Cohort) -> core.Cohort:
  """The cohort reading rows 0..C-1 of a gathered [C, ...] store.

  Pure: only ``store_rows`` changes (``arange(C)``); the ids, and so the
  clients' keys, stay those of the population.
  """
  count = np.shape(cohort.client_ids)[0]
  return cohort._replace(store_rows=np.arange(count, dtype=np.int32))


def run_round_with_host_store(
    apply: Callable[..., tuple[Any, core.PyTree, core.Metrics]],
    state: Any, host_store: HostClientStore, cohort: core.Cohort,
    key: core.PRNGKey) -> tuple[Any, core.Metrics]:
  """One round on the cohort's rows of a `HostClientStore`.

  Gathers the rows of ``cohort.client_ids``, runs
  ``apply(state, rows, cohort_view(cohort), key)`` (``algorithm.apply``,
  ideally jitted once: its shapes depend on C only) and scatters the
  returned rows back.

  Returns:
    ``(state, metrics)``; the store is updated in place.
  """
  ids = np.asarray(cohort.client_ids)
  rows = host_store.gather(ids)
  state, rows, metrics = apply(state, rows, cohort_view(cohort), key)
  host_store.scatter(ids, jax.device_get(rows))
  return state, metrics


def sample_population(num_clients: int, cohort_size: int, seed: int,
                      round_num: int) -> np.ndarray:
  """``cohort_size`` distinct client ids of ``num_clients``, per round.

  Floyd's algorithm (Bentley & Floyd, "Programming Pearls: A Sample of
  Brilliance", CACM 1987): O(cohort_size) time and memory whatever N
  (``Generator.choice(N, C, replace=False)`` may permute all N), then a
  random order. Deterministic in (seed, round_num); uniform over subsets.

  Returns:
    int64 [cohort_size], in random order.
  """
  for name, value, low in (('num_clients', num_clients, 1),
                           ('cohort_size', cohort_size, 0)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < low):
      raise ValueError(f'{name} must be an int >= {low}, got {value!r}.')
  if cohort_size > num_clients:
    raise ValueError(f'cohort_size={cohort_size} exceeds num_clients='
                     f'{num_clients}.')
  rng = np.random.default_rng([int(seed), int(round_num)])
  n, c = int(num_clients), int(cohort_size)
  # For j = n - c .. n - 1: t uniform in [0, j]; take t, or j if t taken.
  draws = rng.integers(0, np.arange(n - c, n) + 1).tolist()
  chosen: set[int] = set()
  out = []
  for j, t in zip(range(n - c, n), draws):
    pick = j if t in chosen else t
    chosen.add(pick)
    out.append(pick)
  return rng.permutation(np.asarray(out, np.int64))


def population_sizes(store: HostClientStore) -> dict[str, int]:
  """Host bytes a store holds now (rows only), for logging."""
  return {'num_clients': store.num_clients, 'visited': store.num_visited,
          'row_bytes': store.row_nbytes,
          'visited_bytes': store.num_visited * store.row_nbytes}


__all__: Sequence[str] = (
    'BACKENDS', 'HostClientStore', 'cohort_view', 'population_sizes',
    'run_round_with_host_store', 'sample_population')
