"""Orbax checkpoints of a run, verified: state, client store, loop state.

One checkpoint per saved round holds up to four orbax items:

* ``server``: the algorithm's state (any pytree with a ``round``);
* ``clients``: the client-indexed store (leaves [N, ...]; left out when
  empty: orbax refuses empty trees);
* ``loop``: JSON of the experiment loop's own state (the per-round metrics
  since the last evaluation), so a resumed run's next metrics line averages
  the same rounds an uninterrupted run's does;
* ``checksums``: the SHA-256 of every saved array (by its path in the
  tree), computed before writing and verified after reading. One flipped
  bit in a saved array is a `CheckpointError` naming the round, never a
  silent restore of other numbers.

Restoring goes into abstract targets built with `jax.eval_shape`, so nothing
is allocated twice, following the CheckpointManager usage in flax's gemma
example.
"""

import hashlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fedjax_ext.core import PyTree


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable or fails its checksums."""


def _host_bytes(leaf: Any) -> bytes:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    leaf = leaf.addressable_data(0)  # Replicated across processes.
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
      leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  array = np.ascontiguousarray(np.asarray(leaf))
  return str(array.dtype).encode() + str(array.shape).encode() + (
      array.tobytes())


def tree_checksums(tree: PyTree) -> dict[str, str]:
  """``{path: sha256 hex}`` of every leaf of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): hashlib.sha256(
      _host_bytes(leaf)).hexdigest() for path, leaf in leaves}


class Checkpointer:
  """Saves and restores (state, client_store, loop_state) by round."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self.directory = directory
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def all_rounds(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, round_num: int, state: PyTree, client_store: PyTree,
           loop_state: dict | None = None) -> None:
    """Writes round `round_num`; a round already saved is an error."""
    if round_num in self._manager.all_steps():
      raise CheckpointError(f'round {round_num} is already saved in '
                            f'{self.directory}; refusing to overwrite it.')
    items = {'server': ocp.args.StandardSave(state)}
    sums = {'server': tree_checksums(state)}
    if jax.tree.leaves(client_store):
      items['clients'] = ocp.args.StandardSave(client_store)
      sums['clients'] = tree_checksums(client_store)
    items['checksums'] = ocp.args.JsonSave(sums)
    items['loop'] = ocp.args.JsonSave(loop_state or {})
    self._manager.save(round_num, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()

  def loop_state(self, round_num: int) -> dict:
    """Only the loop state of round `round_num` (e.g. to size a store)."""
    try:
      restored = self._manager.restore(
          round_num, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'the checkpoint of round {round_num} in '
                            f'{self.directory} cannot be read ({type(e).__name__}).'
                            ) from None
    return dict(restored['loop'] or {})

  def restore(self, round_num: int, state_like: PyTree,
              client_store_like: PyTree) -> tuple[PyTree, PyTree, dict]:
    """Restores and verifies round `round_num` into the given structures.

    Returns:
      ``(state, client_store, loop_state)``.

    Raises:
      CheckpointError: naming the round when it cannot be read or a
        checksum differs.
    """
    where = f'checkpoint of round {round_num} in {self.directory}'
    if round_num not in self._manager.all_steps():
      raise CheckpointError(f'no {where}; saved rounds: '
                            f'{self.all_rounds() or "none"}.')
    abstract = lambda tree: jax.eval_shape(lambda: tree)
    has_clients = bool(jax.tree.leaves(client_store_like))
    items = {'server': ocp.args.StandardRestore(abstract(state_like)),
             'checksums': ocp.args.JsonRestore(),
             'loop': ocp.args.JsonRestore()}
    if has_clients:
      items['clients'] = ocp.args.StandardRestore(
          abstract(client_store_like))
    try:
      restored = self._manager.restore(round_num,
                                       args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      raise CheckpointError(f'the {where} cannot be read ({message}).') \
          from None
    state = restored['server']
    store = restored['clients'] if has_clients else client_store_like
    expected = restored['checksums'] or {}
    actual = {'server': tree_checksums(state)}
    if has_clients:
      actual['clients'] = tree_checksums(store)
    for item, sums in actual.items():
      bad = [path for path, digest in sums.items()
             if expected.get(item, {}).get(path) != digest]
      if bad:
        raise CheckpointError(
            f'the {where} fails its checksum ({item}{bad[0]}'
            f'{f" and {len(bad) - 1} more" if len(bad) > 1 else ""}): it '
            'is corrupted.')
    return state, store, dict(restored['loop'] or {})

  def delete(self, round_num: int) -> None:
    """Deletes the checkpoint of `round_num` (e.g. rounds after a rewind)."""
    self._manager.delete(round_num)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
