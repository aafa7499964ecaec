"""Multi-process (multi-host) plumbing for the experiment loop.

A `jax.distributed` job runs the same program in every process. The round
is one jitted function over global arrays; this module turns the host-side
pieces into them:

* sampling is stratified by process (`data.sample_clients(num_groups=P)`),
  so the cohort's block p holds clients ``id % P == p`` only; process p packs
  only that block, from only its own clients' training examples
  (`keep_own_clients`), and `to_global` stitches the blocks into one array
  sharded over the ``'clients'`` mesh axis
  (`jax.make_array_from_process_local_data`);
* server state and client store are replicated global arrays;
* evaluation runs on a process-local copy of the replicated parameters.

With one process every function here is the identity.
"""

import jax
import numpy as np

from fedjax_ext import core
from fedjax_ext.core import PyTree


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def local_block(cohort_ids: np.ndarray) -> np.ndarray:
  """This process's contiguous block of the cohort (all of it if alone)."""
  if not is_multiprocess():
    return cohort_ids
  size = len(cohort_ids) // jax.process_count()
  start = jax.process_index() * size
  return cohort_ids[start:start + size]


def keep_own_clients(client_indices: list[np.ndarray]) -> list[np.ndarray]:
  """Drops other processes' clients: theirs become empty index arrays."""
  if not is_multiprocess():
    return client_indices
  count, index = jax.process_count(), jax.process_index()
  empty = np.zeros((0,), np.int64)
  return [rows if c % count == index else empty
          for c, rows in enumerate(client_indices)]


def to_global(tree: PyTree, *, sharded: bool) -> PyTree:
  """Process-local data -> global arrays over all devices.

  Args:
    tree: NumPy or JAX arrays. With ``sharded`` their leading axis is this
      process's block of the client axis; otherwise they are replicated
      (every process passes the same full value).
    sharded: split the leading axis over the ``'clients'`` mesh axis.
  """
  if not is_multiprocess():
    return tree
  spec = jax.sharding.PartitionSpec
  sharding = jax.sharding.NamedSharding(
      core.client_mesh(), spec(core.CLIENT_AXIS) if sharded else spec())
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      tree)


def local_copy(tree: PyTree) -> PyTree:
  """A process-local copy of replicated global arrays (for evaluation)."""
  if not is_multiprocess():
    return tree
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
