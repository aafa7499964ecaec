"""Orbax checkpoints of a run: `ServerState` plus the client-indexed store.

One checkpoint per saved round holds two items: ``server`` (the
`ServerState`, which includes the round) and ``clients`` (per-client state,
leaves [N, ...]; left out for stateless algorithms). Restoring goes
into abstract targets built with `jax.eval_shape`, so nothing is allocated
twice, following the CheckpointManager usage in flax's gemma example.
"""

import jax
import orbax.checkpoint as ocp

from fedjax_ext.core import PyTree, ServerState


class Checkpointer:
  """Saves and restores (server_state, client_store) by round."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def save(self, round_num: int, state: ServerState,
           client_store: PyTree) -> None:
    items = {'server': ocp.args.StandardSave(state)}
    if jax.tree.leaves(client_store):  # Orbax refuses empty trees.
      items['clients'] = ocp.args.StandardSave(client_store)
    self._manager.save(round_num, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()

  def restore(self, round_num: int, state_like: ServerState,
              client_store_like: PyTree) -> tuple[ServerState, PyTree]:
    """Restores into the structure (and dtypes) of the given examples."""
    abstract = lambda tree: jax.eval_shape(lambda: tree)
    items = {'server': ocp.args.StandardRestore(abstract(state_like))}
    if jax.tree.leaves(client_store_like):
      items['clients'] = ocp.args.StandardRestore(abstract(client_store_like))
    restored = self._manager.restore(round_num,
                                     args=ocp.args.Composite(**items))
    if 'clients' not in items:
      return restored['server'], client_store_like
    return restored['server'], restored['clients']

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
