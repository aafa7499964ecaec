"""`map_clients`: the one place where a one-client function meets the cohort.

Client code in fedjax_ext is written for ONE client. Every algorithm maps it
over the cohort through `map_clients`, so how clients run (vectorized,
sequentially, in chunks) is a choice made here and nowhere else, the way
drjax's `map_fn` does it for placements.

Strategies:
  * ``'vmap'``: one `jax.vmap` over the client axis. Best on GPU/TPU and for
    small models everywhere (one fused program for the whole cohort).
  * ``'sequential'``: `jax.lax.map`, one client after the other inside the
    compiled program. On XLA:CPU a vmap over clients with distinct conv
    weights becomes grouped convolutions that run ~6x slower than a loop
    (../shared/DESIGN.md), so large models on CPU want this.
  * ``'chunked'``: `jax.lax.map` over chunks of `chunk_size` vmapped clients:
    bounded memory for cohorts of thousands.
  * ``'auto'``: ``'vmap'`` on accelerators; on CPU ``'vmap'`` for models with
    at most `CPU_VMAP_MAX_PARAMS` parameters, else ``'sequential'``. This rule
    is provisional: the threshold comes from the DESIGN measurements (MLPs
    fuse well, the 1.2M-parameter CNN does not), not from a sweep.
"""

from typing import Any, Callable, Sequence

import jax
import numpy as np

from fedjax_ext.core._types import PyTree

STRATEGIES = ('auto', 'vmap', 'sequential', 'chunked')
# Above this many broadcast parameters `auto` stops vmapping on CPU.
CPU_VMAP_MAX_PARAMS = 100_000


def resolve_strategy(strategy: str, broadcast_args: Sequence[PyTree] = (),
                     *, backend: str | None = None) -> str:
  """The concrete strategy that `strategy` means for these arguments."""
  if strategy not in STRATEGIES:
    raise ValueError(
        f'Unknown client execution strategy {strategy!r}; valid choices: '
        f'{", ".join(STRATEGIES)}.')
  if strategy != 'auto':
    return strategy
  backend = backend or jax.default_backend()
  if backend != 'cpu':
    return 'vmap'
  num_params = sum(int(np.prod(np.shape(leaf)))
                   for leaf in jax.tree.leaves(broadcast_args))
  return 'vmap' if num_params <= CPU_VMAP_MAX_PARAMS else 'sequential'


def map_clients(fn: Callable[..., Any], *args: PyTree,
                in_axes: Sequence[int | None] | None = None,
                strategy: str = 'auto',
                chunk_size: int | None = None) -> Any:
  """Maps a one-client function over the leading client axis of its inputs.

  Args:
    fn: a pure function of ONE client's arguments.
    *args: pytrees; those mapped (``in_axes`` 0) have a leading [C] axis,
      those broadcast (``in_axes`` None) are shared by every client.
    in_axes: 0 or None per argument; default: all mapped.
    strategy: one of `STRATEGIES`.
    chunk_size: clients per vectorized chunk for ``'chunked'``.

  Returns:
    `fn`'s output for every client, stacked along a leading [C] axis.
  """
  if in_axes is None:
    in_axes = (0,) * len(args)
  if len(in_axes) != len(args):
    raise ValueError(f'in_axes has {len(in_axes)} entries for {len(args)} '
                     'arguments.')
  broadcast = [a for a, ax in zip(args, in_axes) if ax is None]
  strategy = resolve_strategy(strategy, broadcast)
  if strategy == 'vmap':
    return jax.vmap(fn, in_axes=tuple(in_axes))(*args)

  # lax.map maps over one pytree: close over the broadcast arguments.
  mapped = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

  def one_client(client_args):
    it = iter(client_args)
    full = [a if ax is None else next(it) for a, ax in zip(args, in_axes)]
    return fn(*full)

  if strategy == 'sequential':
    return jax.lax.map(one_client, mapped)
  if chunk_size is None or chunk_size < 1:
    raise ValueError("strategy 'chunked' needs a positive chunk_size, got "
                     f'{chunk_size!r}.')
  return jax.lax.map(one_client, mapped, batch_size=chunk_size)
