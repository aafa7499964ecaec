r"""Flax classifiers cut at a layer into a client part and a server part.

A model :math:`f = f_L \circ \dots \circ f_1` of L named layers cut at layer
``cut`` = k gives the client part :math:`f_c = f_k \circ \dots \circ f_1`
(kept on the device) and the server part :math:`f_s = f_L \circ \dots
\circ f_{k+1}`; the client sends the cut-layer activations
:math:`a = f_c(x)` up and receives :math:`\partial \ell / \partial a` back
(Vepakomma et al., "Split learning for health", arXiv 1812.00564; Gupta &
Raskar 2018). The U-shaped cut (``tail_cut`` = t) keeps the last layers
:math:`f_L \circ \dots \circ f_{t+1}` (the tail) on the client as well, so
labels and the loss never leave it; the server holds only the body
:math:`f_t \circ \dots \circ f_{k+1}`.

Each part runs the SAME flax submodules (`nn.Dense`, `nn.Conv`) with the
same parameter subtrees as the unsplit model, in order, so the split
forward equals the unsplit one exactly, and `SplitModel.split_params` /
`SplitModel.merge_params` map a centralized checkpoint to the parts and
back.

Supported models and their layers (the cut is an index into them):

* `models.MLP`: ``hidden_0 .. hidden_{H-1}, logits``; cut in [1, H].
* `models.EmnistCNN`: ``conv1, conv2 (+ 2x2 max-pool), dense, logits``;
  cut in [1, 3]. The max-pool is on the client side of a cut after
  ``conv2`` (it has no parameters and quarters the activation bytes); the
  flatten before ``dense`` is on the server side, so every activation keeps
  its channel axis last (the auxiliary head of local-loss SL pools it).
"""

from typing import Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_ext._src.checks import check_int
from fedjax_ext.core import Params
from fedjax_ext.models import EmnistCNN
from fedjax_ext.models import MLP

ApplyFn = Callable[[Params, jax.Array], jax.Array]


class Layer(NamedTuple):
  """One named layer of a splittable model."""
  name: str  # The key of its parameters in the unsplit model's params.
  apply: ApplyFn  # (this layer's params, x [B, ...]) -> [B, ...].
  features: int  # Size of the last axis of its output.


class SplitModel(NamedTuple):
  """A model cut into parts, as pure functions of each part's params.

  * ``client_apply(client_params, x [B, ...]) -> activations [B, ...]``.
  * ``server_apply(server_params, activations) -> logits [B, K]`` (or, for
    a U-shaped cut, the body's output, fed to ``tail_apply``).
  * ``tail_apply(tail_params, server_out) -> logits`` (U-shaped only,
    else None): the client's tail.
  * ``split_params(full) -> (client, server)`` or ``(client, server,
    tail)``; ``merge_params(client, server[, tail]) -> full``.
  """
  client_apply: ApplyFn
  server_apply: ApplyFn
  split_params: Callable[[Params], tuple[Params, ...]]
  merge_params: Callable[..., Params]
  tail_apply: ApplyFn | None = None
  num_classes: int = 0
  cut_features: int = 0  # Channels (last axis) of the cut activations.
  layer_names: tuple[str, ...] = ()
  cut: int = 0
  tail_cut: int | None = None


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0], -1))


def _dense(features: int, activation=None, flatten: bool = False) -> ApplyFn:
  module = nn.Dense(features)

  def apply(params, x):
    if flatten:
      x = _flatten(x)
    y = module.apply({'params': params}, x)
    return y if activation is None else activation(y)

  return apply


def _conv(features: int, pool: bool = False) -> ApplyFn:
  module = nn.Conv(features, (3, 3), padding='VALID')

  def apply(params, x):
    y = nn.relu(module.apply({'params': params}, x))
    return nn.max_pool(y, (2, 2), strides=(2, 2)) if pool else y

  return apply


def model_layers(model: nn.Module) -> list[Layer]:
  """The named layers of `model`, input to output.

  Raises:
    ValueError: for a model that cannot be split (naming the supported
      ones), or an `EmnistCNN` with dropout (the split parts are
      deterministic).
  """
  if isinstance(model, MLP):
    layers = [Layer(f'hidden_{i}', _dense(size, model.activation, True),
                    size) for i, size in enumerate(model.hidden_sizes)]
    return layers + [Layer('logits', _dense(model.num_classes),
                           model.num_classes)]
  if isinstance(model, EmnistCNN):
    if model.dropout_rate:
      raise ValueError('split_model: EmnistCNN with dropout_rate > 0 is not '
                       f'supported (got {model.dropout_rate}); use 0.')
    return [Layer('conv1', _conv(32), 32),
            Layer('conv2', _conv(64, pool=True), 64),
            Layer('dense', _dense(128, nn.relu, True), 128),
            Layer('logits', _dense(model.num_classes), model.num_classes)]
  raise ValueError(f'split_model supports models.MLP and models.EmnistCNN, '
                   f'got {type(model).__name__}.')


def _chain(layers: Sequence[Layer]) -> ApplyFn:
  def apply(params, x):
    for layer in layers:
      x = layer.apply(params[layer.name], x)
    return x
  return apply


def split_model(model: nn.Module, cut: int, *,
                tail_cut: int | None = None) -> SplitModel:
  """`model` cut after layer `cut` (and, U-shaped, after `tail_cut`).

  Args:
    model: a `models.MLP` or `models.EmnistCNN`.
    cut: the client keeps layers ``[0, cut)``: an int in [1, L - 1] (L the
      number of layers, `model_layers`).
    tail_cut: for a U-shaped split, the server keeps layers ``[cut,
      tail_cut)`` and the client the tail ``[tail_cut, L)``: an int in
      [cut + 1, L - 1]; None (default) for the ordinary two-part split.

  Returns:
    A `SplitModel`.

  Raises:
    ValueError: naming `cut` or `tail_cut` and its allowed range.
  """
  layers = model_layers(model)
  names = tuple(layer.name for layer in layers)
  num = len(layers)
  if num < 2 or (tail_cut is not None and num < 3):
    raise ValueError(f'split_model: {type(model).__name__} has only {num} '
                     f'layers ({", ".join(names)}); nothing to cut.')
  high = num - 1 if tail_cut is None else num - 2
  check_int(f'cut (layers {", ".join(names)})', cut, low=1, high=high)
  end = num
  if tail_cut is not None:
    end = check_int('tail_cut', tail_cut, low=cut + 1, high=num - 1)
  groups = [layers[:cut], layers[cut:end]] + (
      [layers[end:]] if tail_cut is not None else [])
  group_names = [tuple(layer.name for layer in g) for g in groups]
  part_names = ('client', 'server', 'tail')[:len(groups)]

  def split_params(full: Params) -> tuple[Params, ...]:
    if not isinstance(full, Mapping) or set(full) != set(names):
      got = sorted(full) if isinstance(full, Mapping) else type(full)
      raise ValueError(f'split_params: expected the params of layers '
                       f'{list(names)}, got {got}.')
    return tuple({n: full[n] for n in g} for g in group_names)

  def merge_params(*parts: Params) -> Params:
    if len(parts) != len(groups):
      raise ValueError(f'merge_params takes the {len(groups)} parts '
                       f'({", ".join(part_names)}), got {len(parts)}.')
    full = {}
    for part, expected, what in zip(parts, group_names, part_names):
      if set(part) != set(expected):
        raise ValueError(f'merge_params: the {what} part must hold layers '
                         f'{list(expected)}, got {sorted(part)}.')
      full.update(part)
    return {n: full[n] for n in names}

  return SplitModel(
      client_apply=_chain(groups[0]),
      server_apply=_chain(groups[1]),
      split_params=split_params,
      merge_params=merge_params,
      tail_apply=_chain(groups[2]) if tail_cut is not None else None,
      num_classes=layers[-1].features,
      cut_features=layers[cut - 1].features,
      layer_names=names,
      cut=cut,
      tail_cut=tail_cut)


class AuxHead(NamedTuple):
  """The client's auxiliary classifier of local-loss split learning.

  ``init() -> params``; ``apply(params, activations [B, ..., F]) -> logits
  [B, K]``: global average pooling over every axis between the batch and
  the channels (none for dense activations), then a Dense(K) (spec section
  2.2 [I], after DGL, Belilovsky et al. 2020: "pool + linear").
  """
  init: Callable[[], Params]
  apply: ApplyFn


def aux_head(model: SplitModel, seed: int = 0) -> AuxHead:
  """The `AuxHead` of `model`'s cut: pool + Dense(num_classes).

  Its parameters (a flax Dense with the default LeCun-normal kernel and
  zero bias) are drawn from `seed`, the same for every client.
  """
  module = nn.Dense(model.num_classes)
  features = model.cut_features

  def pool(a):
    return jnp.mean(a, axis=tuple(range(1, a.ndim - 1))) if a.ndim > 2 else a

  def init():
    return module.init(jax.random.key(seed),
                       jnp.zeros((1, features), jnp.float32))['params']

  def apply(params, activations):
    return module.apply({'params': params}, pool(activations))

  return AuxHead(init, apply)
