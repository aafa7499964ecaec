"""`map_clients`: the one place where a one-client function meets the cohort.

Client code in fedjax_ext is written for ONE client. Every algorithm maps it
over the cohort through `map_clients`, so how clients run is a choice made
here and nowhere else, the way drjax's `map_fn` does it for placements.

Strategies:
  * ``'vmap'``: one `jax.vmap` over the client axis. Best on GPU/TPU and for
    small models everywhere (one fused program for the whole cohort).
  * ``'sequential'``: `jax.lax.map`, one client after another inside one
    compiled loop. Smallest program; memory of one client. `auto`'s choice
    for large models on CPU.
  * ``'unrolled'``: a Python loop over clients at trace time: C copies of the
    client program, each with its own buffers. On XLA:CPU a vmap over clients
    with distinct conv weights becomes grouped convolutions that run ~6x
    slower than a loop (../shared/DESIGN.md); unrolling keeps plain convs.
    Largest program and compile time; 'sequential' is as fast on CPU.
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

Convolutions in loops on XLA:CPU (`canonicalize_convs`). XLA:CPU runs a
convolution on its fast multithreaded Eigen kernel only when its dimension
numbers are NHWC x HWIO -> NHWC; its `ConvCanonicalization` pass rewrites
every other convolution into that form with transposes, but it visits the
entry computation only (xla/service/cpu/conv_canonicalization.cc). The
gradient of a convolution is two convolutions in other layouts (the kernel
gradient is ``f01b_i01o->01bf``, the input gradient ``b01f_01oi``); inside
the body of a `lax.scan` / `lax.map` (an HLO while loop) they stay as they
are and fall back to XLA's naive emitted loop nest. That, not the loop, is
why a rolled scan of conv SGD steps ran 8-23x slower than the same steps
unrolled (DESIGN.md, BENCHMARKS.md). On CPU `map_clients` (and
`clients.run_local_steps` for its step) therefore rewrite every
convolution of the traced function into the canonical form themselves, the
rewrite XLA applies to the entry computation, so loops keep the fast
kernel. Results are the same arithmetic; only layouts change.

`auto` on one CPU device, measured on the W1 round (EMNIST CNN, 1.2M
parameters, 10 clients x 10 local steps of batch 20;
`benchmarks/probes/w1_strategies.py`, ratios to the per-step machine limit
within one run, see that file's docstring for the table): with canonical
convolutions, clients in `lax.map` ('sequential') with rolled local steps
(unroll 1) ran 0.8-1.0x the limit (rounds alternated in one process),
compiled in ~3 s on a quiet machine (12 s at load 10) and peaked at
0.51 GB, where the former choice ('unrolled' clients x every step
unrolled, a 100-step program) ran 1.1-1.3x the limit, compiled in 27-38 s
(129 s at load 10) and peaked at 2.6-2.75 GB. The rule for `auto` is therefore: a choice
is only taken if its extra compile time is repaid within a default run by
the time per round it saves. 'sequential' + rolled has both the smallest
compile time and a steady round no slower than any other CPU choice for
models above `CPU_VMAP_MAX_PARAMS`, so there is nothing to trade off and
`auto` picks it. Below that size one fused vmapped program over the
cohort wins by orders of magnitude (W2/W3) and compiles in ~1 s, so `auto`
vmaps. Host dispatch of per-step programs (the limit itself) was measured
too; it does not beat the compiled rolled round and would make the round
impure to jit, so it is not a strategy.
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
from jax import lax
from jax.extend import core as jax_core
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
  `CPU_VMAP_MAX_PARAMS` parameters and maps larger ones with `lax.map`
  (`resolve_single_device`).
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
  """`auto`'s choice on one device (also the default inside a shard).

  Accelerators vmap. On CPU models of at most `CPU_VMAP_MAX_PARAMS`
  broadcast parameters vmap; larger ones run ``'sequential'`` (`lax.map`):
  the vmap of distinct conv weights becomes grouped convolutions ~6x
  slower, and with `canonicalize_convs` a rolled loop over clients is as
  fast as unrolling them at a fraction of the compile time and memory
  (module docstring).
  """
  backend = backend or jax.default_backend()
  if backend != 'cpu':
    return 'vmap'
  num_params = sum(int(np.prod(np.shape(leaf)))
                   for leaf in jax.tree.leaves(broadcast_args))
  return 'vmap' if num_params <= CPU_VMAP_MAX_PARAMS else 'sequential'


def local_steps_unroll(params: PyTree, *,
                       backend: str | None = None) -> int | bool:
  """`auto`'s unroll of a client's local-step scan: 1 (rolled) everywhere.

  A rolled scan compiles one step whatever the number of steps. It used to
  be ~8x slower than unrolled steps for conv models on CPU; the cause was
  XLA:CPU leaving conv gradients in a loop body off its Eigen kernel, which
  `canonicalize_convs` fixes, after which rolled steps measured within
  noise of the per-step limit (module docstring). `params` and `backend`
  stay arguments so the rule can depend on them again if measurements say
  so.
  """
  del params, backend
  return 1


def _is_canonical_conv(dimension_numbers) -> bool:
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  n = len(lhs_spec)
  nhwc = (0, n - 1, *range(1, n - 1))
  hwio = (n - 1, n - 2, *range(n - 2))
  return (tuple(lhs_spec) == nhwc and tuple(rhs_spec) == hwio
          and tuple(out_spec) == nhwc)


def _canonical_conv(lhs, rhs, *, dimension_numbers, **params):
  """`conv_general_dilated` as transposes around an NHWC x HWIO conv."""
  if _is_canonical_conv(dimension_numbers):
    return lax.conv_general_dilated_p.bind(
        lhs, rhs, dimension_numbers=dimension_numbers, **params)
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  n = len(lhs_spec)
  nhwc = (0, n - 1, *range(1, n - 1))
  canonical = lax.ConvDimensionNumbers(nhwc, (n - 1, n - 2, *range(n - 2)),
                                       nhwc)
  # Spatial dimensions keep their order, so window, padding, strides and
  # dilations (given per spatial dimension) are unchanged.
  out = lax.conv_general_dilated_p.bind(
      lax.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])),
      lax.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])),
      dimension_numbers=canonical, **params)
  out_perm = (out_spec[0], *out_spec[2:], out_spec[1])
  return lax.transpose(out, tuple(int(i) for i in np.argsort(out_perm)))


# Higher-order primitives whose bodies are rewritten: inlined calls, and
# loops / branches whose ClosedJaxpr parameters are rewritten in place.
_INLINED = ('jit', 'pjit', 'closed_call', 'core_call')
_BODY_PARAMS = {'scan': ('jaxpr',), 'while': ('cond_jaxpr', 'body_jaxpr'),
                'cond': ('branches',)}


def _needs_rewrite(jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if eqn.primitive is lax.conv_general_dilated_p:
      if not _is_canonical_conv(eqn.params['dimension_numbers']):
        return True
    elif eqn.primitive.name in _INLINED or eqn.primitive.name in _BODY_PARAMS:
      subs = jax_core.jaxprs_in_params(eqn.params)
      if any(_needs_rewrite(sub) for sub in subs):
        return True
  return False


def _rewrite_closed(closed):
  """A ClosedJaxpr computing the same with canonical convolutions."""
  if not _needs_rewrite(closed.jaxpr):
    return closed
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type)
           for a in closed.in_avals]
  return jax.make_jaxpr(
      lambda *args: _eval_canonical(closed.jaxpr, closed.consts, args))(
          *avals)


def _eval_canonical(jaxpr, consts, args) -> list[Any]:
  """Evaluates `jaxpr` (under the current trace) with canonical convs."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jax_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    inputs = [read(var) for var in eqn.invars]
    name = eqn.primitive.name
    params = eqn.params
    if eqn.primitive is lax.conv_general_dilated_p:
      with eqn.ctx.manager:
        outputs = [_canonical_conv(*inputs, **params)]
    elif (name in _INLINED and isinstance(params.get('jaxpr'),
                                          jax_core.ClosedJaxpr)
          and _needs_rewrite(params['jaxpr'].jaxpr)):
      outputs = _eval_canonical(params['jaxpr'].jaxpr, params['jaxpr'].consts,
                                inputs)
    else:
      if name in _BODY_PARAMS:
        params = dict(params)
        for key in _BODY_PARAMS[name]:
          value = params[key]
          params[key] = (tuple(_rewrite_closed(c) for c in value)
                         if isinstance(value, tuple)
                         else _rewrite_closed(value))
      with eqn.ctx.manager:
        outputs = eqn.primitive.bind(
            *inputs, **eqn.primitive.get_bind_params(params))
      if not eqn.primitive.multiple_results:
        outputs = [outputs]
    for var, value in zip(eqn.outvars, outputs):
      if not isinstance(var, jax_core.DropVar):
        env[var] = value
  return [read(var) for var in jaxpr.outvars]


def canonicalize_convs(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` with every convolution in XLA:CPU's fast NHWC x HWIO form.

  Traces `fn` once to a jaxpr and evaluates it with each
  `lax.conv_general_dilated` in other dimension numbers (a conv's
  gradients) replaced by transposes around the canonical convolution,
  also inside `jit` calls and `scan` / `while` / `cond` bodies; every other
  operation is bound unchanged, so the result is the same arithmetic and
  stays differentiable. XLA:CPU does this rewrite itself for convolutions
  of the entry computation only; inside loop bodies it leaves them on a
  naive kernel ~10x slower (module docstring). Custom-derivative functions
  (`jax.custom_jvp` / `custom_vjp`) are called unchanged.

  Array leaves of the arguments (and tracers) become the jaxpr's inputs;
  other leaves (Python numbers, strings) stay static, as they were. `fn`
  is traced once; a program without such convolutions is evaluated as
  traced. `map_clients` applies it on CPU to the loop strategies
  ('sequential', 'chunked'), `clients.run_local_steps` to its step.
  """

  @functools.wraps(fn)
  def wrapped(*args):
    leaves, treedef = jax.tree.flatten(args)
    dynamic = [i for i, leaf in enumerate(leaves)
               if isinstance(leaf, (jax.Array, np.ndarray))]

    def flat_fn(*values):
      full = list(leaves)
      for i, value in zip(dynamic, values):
        full[i] = value
      return fn(*jax.tree.unflatten(treedef, full))

    values = [leaves[i] for i in dynamic]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*values)
    if _needs_rewrite(closed.jaxpr):
      outputs = _eval_canonical(closed.jaxpr, closed.consts, values)
    else:  # The traced program as is (no second trace of `fn`).
      outputs = jax_core.jaxpr_as_fun(closed)(*values)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

  return wrapped


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
  if strategy in ('sequential', 'chunked') and jax.default_backend() == 'cpu':
    fn = canonicalize_convs(fn)  # Client loops: keep convs on the fast path.
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
