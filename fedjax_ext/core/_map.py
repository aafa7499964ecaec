"""`map_clients`: the one place where a one-client function meets the cohort.

Client code in fedjax_ext is written for ONE client. Every algorithm maps it
over the cohort through `map_clients`, so how clients run is a choice made
here and nowhere else, the way drjax's `map_fn` does it for placements.

Strategies:
  * ``'vmap'``: one `jax.vmap` over the client axis. Best on GPU/TPU and for
    small models everywhere (one fused program for the whole cohort).
  * ``'sequential'``: `jax.lax.map`, one client after another inside one
    compiled loop. Smallest program; memory of one client.
  * ``'unrolled'``: a Python loop over clients at trace time: C copies of the
    client program, each with its own buffers. On XLA:CPU a vmap over clients
    with distinct conv weights becomes grouped convolutions that run ~6x
    slower than a loop (../shared/DESIGN.md); unrolling keeps plain convs.
  * ``'chunked'``: `jax.lax.map` over chunks of `chunk_size` vmapped clients:
    bounded memory for cohorts of thousands.
  * ``'sharded'``: the client axis split over the devices of a mesh axis
    (``'clients'``) with `jax.shard_map`; each device runs its own block of
    clients with the ``inner`` strategy. Works across hosts: the mesh may
    span every process of a `jax.distributed` job.
  * ``'auto'``: see `resolve_strategy`.

The choice is made once per run as an `Execution` policy (strategy, chunk
size, unroll of the local-step loop, mesh) that builders, stages and
`map_clients` all take as one argument.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from fedjax_ext.core._types import PyTree

STRATEGIES = ('auto', 'vmap', 'sequential', 'unrolled', 'chunked', 'sharded')
CLIENT_AXIS = 'clients'
# Above this many broadcast parameters `auto` stops vmapping on CPU.
CPU_VMAP_MAX_PARAMS = 100_000


class Execution(NamedTuple):
  """How a run maps its clients and runs their local steps; set once.

  Every builder, stage and `map_clients` takes this one value instead of
  separate strategy / chunk-size / unroll arguments.
  """
  strategy: str = 'auto'  # One of `STRATEGIES`.
  chunk_size: int | None = None  # Clients per chunk for 'chunked'.
  # Unroll of a client's local-step `lax.scan`: an int, True (all steps) or
  # 'auto' (`local_steps_unroll`).
  unroll: int | bool | str = 'auto'
  mesh: jax.sharding.Mesh | None = None  # For 'sharded'; default all devices.
  inner: str = 'auto'  # How each device maps its own clients when sharded.


def as_execution(execution: 'Execution | str | None') -> Execution:
  """`execution` as a validated `Execution` (a string names the strategy).

  Raises:
    ValueError: naming the bad field and its allowed values.
  """
  if execution is None:
    execution = Execution()
  elif isinstance(execution, str):
    execution = Execution(strategy=execution)
  elif not isinstance(execution, Execution):
    raise TypeError('execution must be a core.Execution or a strategy name, '
                    f'got {type(execution).__name__}.')
  if execution.strategy not in STRATEGIES:
    raise ValueError(
        f'Unknown client execution strategy {execution.strategy!r}; valid '
        f'choices: {", ".join(STRATEGIES)}.')
  if execution.inner not in STRATEGIES or execution.inner == 'sharded':
    raise ValueError(f'Execution.inner must be one of '
                     f'{", ".join(s for s in STRATEGIES if s != "sharded")}, '
                     f'got {execution.inner!r}.')
  if execution.strategy == 'chunked' and (
      not isinstance(execution.chunk_size, int) or execution.chunk_size < 1):
    raise ValueError("strategy 'chunked' needs a positive integer "
                     f'Execution.chunk_size, got {execution.chunk_size!r}.')
  unroll = execution.unroll
  if not (unroll == 'auto' or isinstance(unroll, bool)
          or (isinstance(unroll, int) and unroll >= 1)):
    raise ValueError("Execution.unroll must be 'auto', a bool or an integer "
                     f'>= 1, got {unroll!r}.')
  return execution


def resolve_strategy(strategy: str, broadcast_args: Sequence[PyTree] = (),
                     *, backend: str | None = None,
                     num_devices: int | None = None) -> str:
  """The concrete strategy that `strategy` means for these arguments.

  ``'auto'`` shards over all devices when there is more than one; else it
  vmaps on accelerators, and on CPU vmaps models of at most
  `CPU_VMAP_MAX_PARAMS` parameters and unrolls larger ones (the vmap of
  distinct conv weights is the slow case on XLA:CPU).
  """
  if strategy not in STRATEGIES:
    raise ValueError(
        f'Unknown client execution strategy {strategy!r}; valid choices: '
        f'{", ".join(STRATEGIES)}.')
  if strategy != 'auto':
    return strategy
  num_devices = jax.device_count() if num_devices is None else num_devices
  if num_devices > 1:
    return 'sharded'
  return resolve_single_device(broadcast_args, backend=backend)


def resolve_single_device(broadcast_args: Sequence[PyTree] = (), *,
                          backend: str | None = None) -> str:
  """`auto`'s choice on one device (also the default inside a shard)."""
  backend = backend or jax.default_backend()
  if backend != 'cpu':
    return 'vmap'
  num_params = sum(int(np.prod(np.shape(leaf)))
                   for leaf in jax.tree.leaves(broadcast_args))
  return 'vmap' if num_params <= CPU_VMAP_MAX_PARAMS else 'unrolled'


def local_steps_unroll(params: PyTree, *,
                       backend: str | None = None) -> int | bool:
  """`auto`'s unroll of a client's local-step scan.

  XLA:CPU runs a `lax.scan` whose body holds conv gradients ~8x slower than
  the same steps unrolled (DESIGN.md; BENCHMARKS.md measured the W1 CNN
  round 13x above the per-step limit with a rolled scan, 1.5x unrolled), so
  on CPU models above `CPU_VMAP_MAX_PARAMS` parameters unroll every step.
  Elsewhere the rolled loop keeps compile times short.
  """
  backend = backend or jax.default_backend()
  num_params = sum(int(np.prod(np.shape(leaf)))
                   for leaf in jax.tree.leaves(params))
  if backend == 'cpu' and num_params > CPU_VMAP_MAX_PARAMS:
    return True
  return 1


def client_mesh(devices: Sequence[jax.Device] | None = None
               ) -> jax.sharding.Mesh:
  """A 1-D mesh with axis ``'clients'`` over `devices` (default: all)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (CLIENT_AXIS,))


def _stack(outputs: list[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *outputs)


def map_clients(fn: Callable[..., Any], *args: PyTree,
                in_axes: Sequence[int | None] | None = None,
                execution: Execution | str | None = None) -> Any:
  """Maps a one-client function over the leading client axis of its inputs.

  Args:
    fn: a pure function of ONE client's arguments.
    *args: pytrees; those mapped (``in_axes`` 0) have a leading [C] axis,
      those broadcast (``in_axes`` None) are shared by every client.
    in_axes: 0 or None per argument; default: all mapped.
    execution: the run's `Execution` policy, or a strategy name. For
      ``'sharded'`` the mesh needs a ``'clients'`` axis (default:
      `client_mesh()` over all devices) and C must be a multiple of its
      size; ``inner`` maps each device's own clients.

  Returns:
    `fn`'s output for every client, stacked along a leading [C] axis.
  """
  if in_axes is None:
    in_axes = (0,) * len(args)
  if len(in_axes) != len(args):
    raise ValueError(f'in_axes has {len(in_axes)} entries for {len(args)} '
                     'arguments.')
  if any(ax not in (0, None) for ax in in_axes):
    raise ValueError(f'in_axes entries must be 0 or None, got {in_axes}.')
  execution = as_execution(execution)
  _check_client_axis(args, in_axes)
  broadcast = [a for a, ax in zip(args, in_axes) if ax is None]
  strategy = resolve_strategy(execution.strategy, broadcast)
  if strategy == 'sharded':
    return _map_sharded(fn, args, in_axes, execution)
  if strategy == 'vmap':
    return jax.vmap(fn, in_axes=tuple(in_axes))(*args)

  mapped = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

  def one_client(client_args):
    it = iter(client_args)
    return fn(*[a if ax is None else next(it)
                for a, ax in zip(args, in_axes)])

  if strategy == 'unrolled':
    num_clients = jax.tree.leaves(mapped)[0].shape[0]
    return _stack([one_client(jax.tree.map(lambda v, i=i: v[i], mapped))
                   for i in range(num_clients)])
  if strategy == 'sequential':
    return jax.lax.map(one_client, mapped)
  return jax.lax.map(one_client, mapped, batch_size=execution.chunk_size)


def _check_client_axis(args, in_axes) -> None:
  """Every mapped leaf has the same leading [C] axis; else a named error."""
  sizes = {}
  for position, (arg, ax) in enumerate(zip(args, in_axes)):
    if ax is None:
      continue
    for leaf in jax.tree.leaves(arg):
      shape = np.shape(leaf)
      if not shape:
        raise ValueError(f'map_clients: argument {position} has a scalar '
                         'leaf; mapped arguments need a leading client '
                         'axis [C, ...] (use in_axes=None to broadcast).')
      sizes.setdefault(shape[0], position)
  if len(sizes) > 1:
    described = ', '.join(f'{size} (argument {position})'
                          for size, position in sizes.items())
    raise ValueError('map_clients: mapped arguments disagree on the number '
                     f'of clients: {described}.')


def _map_sharded(fn, args, in_axes, execution):
  """Each device of the mesh maps its block of clients with ``inner``."""
  mesh = execution.mesh or client_mesh()
  inner = execution.inner
  num_shards = mesh.shape[CLIENT_AXIS]
  num_clients = jax.tree.leaves(
      [a for a, ax in zip(args, in_axes) if ax == 0])[0].shape[0]
  if num_clients % num_shards:
    raise ValueError(
        f'{num_clients} clients per round cannot be split evenly over '
        f'{num_shards} devices; use a multiple of {num_shards}.')
  spec = jax.sharding.PartitionSpec
  in_specs = tuple(spec() if ax is None else spec(CLIENT_AXIS)
                   for ax in in_axes)
  if inner == 'auto':
    inner = resolve_single_device(
        [a for a, ax in zip(args, in_axes) if ax is None])

  def per_shard(*shard_args):
    return map_clients(fn, *shard_args, in_axes=in_axes,
                       execution=execution._replace(strategy=inner,
                                                    mesh=None))

  return jax.shard_map(per_shard, mesh=mesh, in_specs=in_specs,
                       out_specs=spec(CLIENT_AXIS), check_vma=False)(*args)
