r"""LoRA as a parameter transform over any flax model's params.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022,
https://arxiv.org/abs/2106.09685. A kernel :math:`W_0` chosen by its
parameter path is adapted as

.. math:: W = W_0 + \frac{\alpha}{r} (B A)^\top,
   \qquad A \in \mathbb{R}^{r \times d_{in}},\ B \in \mathbb{R}^{d_{out}
   \times r},

the transpose because flax kernels are ``[in, out]`` (``y = x W``) while
LoRA writes :math:`\Delta W = B A` in ``[out, in]``. A kernel with more
than two axes (flax ``DenseGeneral``, e.g. attention's ``[in, heads,
head_dim]``) is read as ``[prod(leading axes), prod(the rest)]``: the
split is the first one whose leading product equals ``A``'s ``in``.

Nothing here knows the model: `init_adapters` selects leaves by regex over
their '/'-joined paths (``'params/layer_4/attention/query/kernel'``),
`merge` returns ordinary params for ``model.apply``, and `lora_loss` turns
a `clients.LossFn` over full params into one over the trainable part only,
so the frozen base gets no gradient.

The trainable part of a federated LoRA run is a `LoRAParams`: the adapters
``{path: {'A': [r, in], 'B': [out, r]}}`` and optionally ``dense``,
``{path: array}`` leaves trained in full (a classifier head), which every
method averages as FedAvg does.

Initialisation (``init``): B = 0, so the adapted model starts exactly at
the pretrained one, and A random:

* ``'kaiming_uniform'`` (default; PEFT's default and Hu et al.'s code):
  :math:`A_{ij} \sim U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})` (kaiming-uniform
  with :math:`a = \sqrt 5`).
* ``'gaussian'``: :math:`A_{ij} \sim N(0, 1/r^2)` (PEFT's ``'gaussian'``).
"""

import fnmatch
import math
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from fedjax_ext import clients
from fedjax_ext.core import Params, PRNGKey, PyTree

Adapters = dict[str, dict[str, jax.Array]]
Targets = str | Sequence[str] | Callable[[str, jax.Array], bool]
INITS = ('kaiming_uniform', 'gaussian')


class LoRAParams(NamedTuple):
  """The trainable part of a federated LoRA model."""
  adapters: Adapters  # {path: {'A': [r, in], 'B': [out, r]}}.
  dense: dict[str, jax.Array] = {}  # {path: leaf} trained in full (a head).


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_string(path) -> str:
  """A jax key path as '/'-joined names: ``'params/dense/kernel'``."""
  return '/'.join(_key_name(entry) for entry in path)


def flat_params(params: Params) -> dict[str, jax.Array]:
  """``{'/'-joined path: leaf}`` of a params pytree, in leaf order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {path_string(path): leaf for path, leaf in leaves}


def _matcher(targets: Targets) -> Callable[[str, Any], bool]:
  if callable(targets):
    return targets
  patterns = [targets] if isinstance(targets, str) else list(targets)

  def match(path, leaf):
    del leaf
    for pattern in patterns:
      if pattern.startswith('glob:'):
        if fnmatch.fnmatchcase(path, pattern[5:]):
          return True
      elif re.fullmatch(pattern, path):
        return True
    return False

  return match


def select_paths(params: Params, targets: Targets) -> list[str]:
  """Paths of the leaves matched by `targets`, in leaf order.

  Args:
    params: any params pytree.
    targets: a regex matched in full against each '/'-joined path
      (``r'.*layer_[45]/attention/(query|value)/kernel'``), ``'glob:'`` +
      a shell pattern (``'glob:*/query/kernel'``), a list of either, or
      ``fn(path, leaf) -> bool``.

  Returns:
    The matching paths; a ValueError lists the available paths if none.
  """
  match = _matcher(targets)
  flat = flat_params(params)
  paths = [p for p, leaf in flat.items() if match(p, leaf)]
  if not paths:
    raise ValueError(f'targets {targets!r} match no parameter; paths: '
                     f'{", ".join(flat)}.')
  return paths


def _in_out(shape: Sequence[int], num_in: int | None = None
           ) -> tuple[int, int, int]:
  """(in, out, split) of a kernel read as [prod(shape[:split]), rest]."""
  if len(shape) < 2:
    raise ValueError(f'LoRA adapts kernels of 2+ axes, got shape {shape}.')
  if num_in is None:
    return shape[0], math.prod(shape[1:]), 1
  for split in range(1, len(shape)):
    if math.prod(shape[:split]) == num_in:
      return num_in, math.prod(shape[split:]), split
  raise ValueError(f'No split of kernel shape {tuple(shape)} has '
                   f'{num_in} inputs.')


def init_adapters(base_params: Params, *, targets: Targets, rank: int,
                  key: PRNGKey, init: str = 'kaiming_uniform',
                  in_axes: int = 1) -> Adapters:
  """Rank-`rank` adapters on the kernels selected by `targets`.

  Args:
    base_params: the pretrained params (any flax model).
    targets: see `select_paths`.
    rank: r >= 1.
    key: PRNG key; each adapter's A uses ``fold_in(key, its index)``.
    init: A's distribution, one of `INITS` (B is always 0).
    in_axes: leading kernel axes that are inputs (1 for ``nn.Dense``; 2
      for an attention output kernel ``[heads, head_dim, out]``).

  Returns:
    ``{path: {'A': [r, in], 'B': [out, r]}}`` in the kernel's dtype.
  """
  if not (isinstance(rank, int) and rank >= 1):
    raise ValueError(f'rank must be an integer >= 1, got {rank!r}.')
  if init not in INITS:
    raise ValueError(f'Unknown init {init!r}; valid: {", ".join(INITS)}.')
  flat = flat_params(base_params)
  adapters = {}
  for i, path in enumerate(select_paths(base_params, targets)):
    kernel = flat[path]
    shape = jnp.shape(kernel)
    if len(shape) < 2:
      raise ValueError(f'{path} has shape {shape}; LoRA adapts kernels.')
    num_in = math.prod(shape[:in_axes])
    num_out = math.prod(shape[in_axes:])
    k = jax.random.fold_in(key, i)
    if init == 'kaiming_uniform':
      bound = 1. / math.sqrt(num_in)
      a = jax.random.uniform(k, (rank, num_in), kernel.dtype, -bound, bound)
    else:
      a = jax.random.normal(k, (rank, num_in), kernel.dtype) / rank
    adapters[path] = {'A': a, 'B': jnp.zeros((num_out, rank), kernel.dtype)}
  return adapters


def scaling(alpha: float, rank) -> jax.Array | float:
  """LoRA's scale :math:`\\alpha / r` (r may be a traced per-client rank)."""
  return alpha / rank


def delta_w(adapter: Mapping[str, jax.Array], scale=1.) -> jax.Array:
  """:math:`s\\,B A`, [out, in]."""
  return scale * (adapter['B'] @ adapter['A'])


def kernel_delta(delta: jax.Array, kernel_shape: Sequence[int]) -> jax.Array:
  """An [out, in] delta-W as an update of a flax kernel of `kernel_shape`."""
  _in_out(kernel_shape, delta.shape[1])  # Checks the split exists.
  return jnp.reshape(delta.T, kernel_shape)


def merge(base_params: Params, adapters: Adapters | LoRAParams, *,
          alpha: float, rank=None, deltas: Mapping[str, jax.Array] | None
          = None) -> Params:
  r"""Effective params :math:`W_0 + \frac{\alpha}{r}(BA)^\top` per adapter.

  Args:
    base_params: the frozen base.
    adapters: ``{path: {'A', 'B'}}``, or a `LoRAParams` whose ``dense``
      leaves replace the base's.
    alpha: LoRA's alpha.
    rank: r of the scale alpha / r; default each adapter's A.shape[0]
      (pass the client's own rank when factors are zero-padded).
    deltas: extra ``{path: [out, in]}`` added as they are (FLoRG's
      :math:`L A^\top A R`, a server-side full delta-W).

  Returns:
    Params shaped like `base_params`.
  """
  dense = {}
  if isinstance(adapters, LoRAParams):
    adapters, dense = adapters.adapters, adapters.dense
  deltas = dict(deltas or {})
  leaves, treedef = jax.tree_util.tree_flatten_with_path(base_params)
  known = set(adapters) | set(dense) | set(deltas)
  out = []
  for path, leaf in leaves:
    name = path_string(path)
    known.discard(name)
    if name in dense:
      leaf = dense[name]
    if name in adapters:
      a = adapters[name]
      r = a['A'].shape[0] if rank is None else rank
      leaf = leaf + kernel_delta(delta_w(a, scaling(alpha, r)),
                                 leaf.shape).astype(leaf.dtype)
    if name in deltas:
      leaf = leaf + kernel_delta(deltas[name], leaf.shape).astype(leaf.dtype)
    out.append(leaf)
  if known:
    raise ValueError(f'No base parameter at {sorted(known)}.')
  return jax.tree_util.tree_unflatten(treedef, out)


def rank_mask(max_rank: int, rank) -> jax.Array:
  """float32 [max_rank]: 1 for the first `rank` components, else 0."""
  return (jnp.arange(max_rank) < rank).astype(jnp.float32)


def truncate(adapters: Adapters, rank) -> Adapters:
  """Zero-padded adapters keeping their first `rank` components.

  Components j >= rank of A's rows and B's columns are set to 0; a client
  of rank r_k holding factors padded to r_max trains exactly a rank-r_k
  LoRA (the zero components get zero gradient).
  """

  def one(a):
    m = rank_mask(a['A'].shape[0], rank)
    return {'A': a['A'] * m[:, None].astype(a['A'].dtype),
            'B': a['B'] * m[None, :].astype(a['B'].dtype)}

  return {p: one(a) for p, a in adapters.items()}


def lora_loss(loss_fn: clients.LossFn, base_params: Params, *,
              alpha: float, rank=None, frozen: Adapters | None = None,
              transform: Callable[[Adapters], Adapters] | None = None
              ) -> clients.LossFn:
  """A `clients.LossFn` over the trainable part only.

  The base is closed over: differentiating the returned loss differentiates
  the adapters (and ``dense`` leaves) only, so the base gets no gradient
  and nothing of it is ever in an update. Inside a client update, pass the
  base from the server message (a traced argument that `core.map_clients`
  broadcasts with ``in_axes=None``, never copied per client); closing over
  a concrete base in a jitted function instead makes it a compile-time
  constant, fine for small models only.

  Args:
    loss_fn: masked mean loss over full params.
    base_params: the frozen base.
    alpha: LoRA's alpha.
    rank: r of alpha / r (default each adapter's A.shape[0]).
    frozen: factors joined to the trainable ones without a gradient, e.g.
      ``{path: {'A': A0}}`` for FFA-LoRA, where only B trains.
    transform: applied to the joined adapters before merging (a rank
      mask, `truncate`).

  Returns:
    ``fn(trainable, batch, key)`` where `trainable` is an adapters dict or
    a `LoRAParams`.
  """

  def fn(trainable, batch, key):
    dense = {}
    adapters = trainable
    if isinstance(trainable, LoRAParams):
      adapters, dense = trainable.adapters, trainable.dense
    adapters = join_factors(adapters, frozen or {})
    if transform is not None:
      adapters = transform(adapters)
    params = merge(base_params, LoRAParams(adapters, dense), alpha=alpha,
                   rank=rank)
    return loss_fn(params, batch, key)

  return fn


def split_factors(adapters: Adapters, names: Sequence[str]
                 ) -> tuple[Adapters, Adapters]:
  """(the factors in `names`, the others) of every adapter."""
  take = {p: {f: v for f, v in a.items() if f in names}
          for p, a in adapters.items()}
  rest = {p: {f: v for f, v in a.items() if f not in names}
          for p, a in adapters.items()}
  return take, rest


def join_factors(first: Adapters, second: Adapters) -> Adapters:
  """Adapters holding the factors of both."""
  out = {p: dict(a) for p, a in first.items()}
  for p, a in second.items():
    out.setdefault(p, {}).update(a)
  return out


def count_bytes(tree: PyTree) -> int:
  """Bytes of a pytree (static shapes; no device work)."""
  return int(sum(math.prod(jnp.shape(x)) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def full_update_bytes(base_params: Params) -> int:
  """Bytes a full fine-tuning client uploads per round (FedAvg)."""
  return count_bytes(base_params)

