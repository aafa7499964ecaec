r"""Intermediate supervision and regularization (ISR) as a change of loss.

OmniISR (Kou, Zhu, Tang, Zhang, Wu, Zhou, Yang, "OmniISR", arXiv 2605.20276,
2026) attaches to M chosen hidden points :math:`G_m` of a network, with
features :math:`z^m`, an auxiliary head :math:`q^m` (pooling + linear to the
K classes) and trains on

.. math::
  L = \mathrm{CE}(f(x), y) + \sum_{m=1}^{M} \Big(\lambda_m\,
  \mathrm{CE}(q^m(z^m), y) + \mu_m \frac{1}{|\Omega|}\sum_{p \in \Omega}
  \sum_{k=1}^{C_m} \pi_{p,k}^m \log \pi_{p,k}^m\Big),
  \qquad \pi_p^m = \mathrm{softmax}_{\text{channels}}(z_p^m),

averaged over the batch's real examples. The CE through the auxiliary head
is the "mutual information" (MI) term: minimizing it maximizes the
Barber-Agakov bound :math:`I(Z^m; Y) \ge H(Y) - \mathrm{CE}`; the second is
the negative-entropy (NE) regularizer on the hidden activations. The paper's
body was not readable; the formulas follow the same authors' iMacSR /
FedDSR papers (spec `omniisr_curvzo_florg_tadlora.md` §1.3, tags [S-h]/[I]),
so the weights, the points, the pooling and where NE is taken are arguments:

* `IsrPoint.name`: a submodule path of the flax model ('hidden_0' of the
  MLP, 'conv1' of the CNN); its ``__call__`` output is captured with
  ``capture_intermediates`` (the models need no change); for Dense and Conv
  modules that output is the pre-activation feature.
* ``ne_over``: ``'location'`` (softmax over channels at every spatial
  location, then averaged: the iMacSR per-pixel formula, default) or
  ``'pooled'`` (over the globally average-pooled channels). Vector features
  [B, C] have one location, so both agree.
* the head: global average pooling over all spatial axes, then linear.

The parameters become ``{'model': backbone, 'aux': {point: {'kernel',
'bias'}}}``; every algorithm trains the pair as it trains any params, so
ISR composes with FedAvg, FedProx, SCAFFOLD, FedAdam, ... unchanged. The
heads serve training only: `predict_fn` and `backbone` use
``params['model']`` alone. Terms whose weight is exactly 0 are not computed
(and with all weights 0 no feature is captured), so
:math:`\lambda = \mu = 0` trains the backbone exactly as
`clients.classification_loss` does.
"""

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_ext import clients
from fedjax_ext._src.checks import check_int
from fedjax_ext._src.checks import check_number
from fedjax_ext.core import Params, PRNGKey

NE_OVER = ('location', 'pooled')


class IsrPoint(NamedTuple):
  """One intermediate point, its head and its weights."""
  name: str  # Submodule path, e.g. 'hidden_0' or 'conv1' ('a/b' if nested).
  mi_weight: float = 0.3  # lambda_m ([I] default of the spec, §1.3).
  ne_weight: float = 0.05  # mu_m ([I] default of the spec, §1.3).


def isr_points(names: Sequence[str], *, mi_weight: float = 0.3,
               ne_weight: float = 0.05) -> tuple[IsrPoint, ...]:
  """The same weights at every named point."""
  if isinstance(names, str) or not all(
      isinstance(n, str) and n for n in names):
    raise ValueError(f'names must be a sequence of submodule names (e.g. '
                     f"['hidden_0']), got {names!r}.")
  if len(set(names)) != len(names):
    raise ValueError(f'names must not repeat a point, got {list(names)}.')
  check_number('mi_weight', mi_weight, low=0)
  check_number('ne_weight', ne_weight, low=0)
  return tuple(IsrPoint(n, mi_weight, ne_weight) for n in names)


def _check(points: Sequence[IsrPoint], ne_over: str) -> None:
  if ne_over not in NE_OVER:
    raise ValueError(f'Unknown ne_over {ne_over!r}; valid choices: '
                     f'{", ".join(NE_OVER)}.')
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f'ISR points repeat a name: {names}.')


def capture_features(model: nn.Module, params: Params, x: jax.Array,
                     names: Sequence[str], *, train: bool,
                     key: PRNGKey | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Logits and the outputs of the submodules `names` (flax capture).

  Raises:
    ValueError: a name is not a submodule path of `model`.
  """
  wanted = set(names)

  def capture(module, method_name):
    return (method_name == '__call__'
            and '/'.join(module.scope.path) in wanted)

  rngs = {'dropout': key} if key is not None else {}
  logits, state = model.apply({'params': params}, x, train=train, rngs=rngs,
                              capture_intermediates=capture,
                              mutable=['intermediates'])
  captured = state.get('intermediates', {})
  features = {}
  for name in names:
    node = captured
    for part in name.split('/'):
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if '__call__' not in node:
      _, everything = model.apply({'params': params}, x, train=train,
                                  rngs=rngs, capture_intermediates=True,
                                  mutable=['intermediates'])
      raise ValueError(f'ISR point {name!r} is not a submodule of '
                       f'{type(model).__name__}; valid choices: '
                       f'{", ".join(_paths(everything["intermediates"]))}.')
    features[name] = node['__call__'][0]
  return logits, features


def _paths(tree: dict, prefix: str = '') -> list[str]:
  """Submodule paths of a captured-intermediates tree."""
  paths = []
  for name, node in tree.items():
    if name == '__call__' or not isinstance(node, dict):
      continue
    path = f'{prefix}{name}'
    if '__call__' in node:
      paths.append(path)
    paths.extend(_paths(node, path + '/'))
  return paths


def pool(features: jax.Array) -> jax.Array:
  """Global average pooling: [B, ..., C] -> [B, C]."""
  if features.ndim == 2:
    return features
  return jnp.mean(features, axis=tuple(range(1, features.ndim - 1)))


def init_isr(model: nn.Module, key: PRNGKey, x: jax.Array,
             points: Sequence[IsrPoint], *, num_classes: int) -> Params:
  """``{'model': backbone params, 'aux': {point: head}}``.

  The backbone is ``model.init(key, x)`` exactly as without ISR (the same
  key gives the same backbone); each head is a LeCun-normal kernel
  [C_m, num_classes] drawn from ``fold_in(key, m + 1)`` and a zero bias.
  """
  check_int('num_classes', num_classes, low=1)
  backbone_params = model.init(key, x)['params']
  _, features = capture_features(model, backbone_params, x,
                                 [p.name for p in points], train=False)
  aux = {}
  for m, point in enumerate(points):
    channels = features[point.name].shape[-1]
    kernel = nn.initializers.lecun_normal()(
        jax.random.fold_in(key, m + 1), (channels, num_classes), jnp.float32)
    aux[point.name] = {'kernel': kernel,
                       'bias': jnp.zeros((num_classes,), jnp.float32)}
  return {'model': backbone_params, 'aux': aux}


def backbone(params: Params) -> Params:
  """The model's own parameters: what evaluation and deployment use."""
  return params['model']


def aux_logits(head: Params, features: jax.Array) -> jax.Array:
  """An auxiliary head: global average pooling, then linear."""
  return pool(features).astype(jnp.float32) @ head['kernel'] + head['bias']


def negative_entropy(features: jax.Array, *, ne_over: str) -> jax.Array:
  r""":math:`\sum_k \pi_k \log \pi_k` per example, [B] (module doc)."""
  if ne_over == 'pooled':
    features = pool(features)
  z = features.astype(jnp.float32)
  log_p = jax.nn.log_softmax(z, axis=-1)
  ne = jnp.sum(jnp.exp(log_p) * log_p, axis=-1)  # [B, ...locations]
  return jnp.mean(ne.reshape(ne.shape[0], -1), axis=1)


def isr_terms(model: nn.Module, points: Sequence[IsrPoint], params: Params,
              batch: dict[str, jax.Array], key: PRNGKey | None, *,
              ne_over: str = 'location',
              train: bool = True) -> dict[str, jax.Array]:
  """Every term of the ISR loss, unweighted, as masked batch means.

  Returns:
    'task' (the output CE), 'logits', and per point m 'mi/<name>' and
    'ne/<name>'.
  """
  _check(points, ne_over)
  logits, features = capture_features(
      model, params['model'], batch['x'], [p.name for p in points],
      train=train, key=key)
  mask = batch['mask']
  terms = {'logits': logits, 'task': clients.masked_mean(
      clients.per_example_cross_entropy(logits, batch['y']), mask)}
  for point in points:
    z = features[point.name]
    terms[f'mi/{point.name}'] = clients.masked_mean(
        clients.per_example_cross_entropy(
            aux_logits(params['aux'][point.name], z), batch['y']), mask)
    terms[f'ne/{point.name}'] = clients.masked_mean(
        negative_entropy(z, ne_over=ne_over), mask)
  return terms


def isr_loss(model: nn.Module, points: Sequence[IsrPoint], *,
             ne_over: str = 'location') -> clients.LossFn:
  r"""The ISR `clients.LossFn` on ``{'model', 'aux'}`` params.

  Args:
    model: a flax classifier ``__call__(x, *, train)``.
    points: the intermediate points and their weights.
    ne_over: ``'location'`` or ``'pooled'`` (module doc).

  Returns:
    ``loss_fn(params, batch, key) -> (loss, metrics)`` with metrics
    'accuracy' (of the model's own output), 'task_loss', 'mi_loss' and
    'ne_loss' (the weighted sums over points).
  """
  _check(points, ne_over)
  active = [p for p in points if p.mi_weight != 0 or p.ne_weight != 0]
  names = [p.name for p in active]

  def loss_fn(params, batch, key):
    mask = batch['mask']
    if active:
      logits, features = capture_features(
          model, params['model'], batch['x'], names, train=True, key=key)
    else:
      logits = model.apply({'params': params['model']}, batch['x'],
                           train=True, rngs={'dropout': key})
      features = {}
    loss = clients.masked_mean(
        clients.per_example_cross_entropy(logits, batch['y']), mask)
    task = loss
    mi_total = ne_total = jnp.zeros((), jnp.float32)
    for point in active:
      z = features[point.name]
      if point.mi_weight != 0:
        mi = clients.masked_mean(clients.per_example_cross_entropy(
            aux_logits(params['aux'][point.name], z), batch['y']), mask)
        mi_total = mi_total + point.mi_weight * mi
      if point.ne_weight != 0:
        ne = clients.masked_mean(negative_entropy(z, ne_over=ne_over), mask)
        ne_total = ne_total + point.ne_weight * ne
    if active:
      loss = loss + mi_total + ne_total
    correct = (jnp.argmax(logits, -1) == batch['y']).astype(jnp.float32)
    return loss, {'accuracy': clients.masked_mean(correct, mask),
                  'task_loss': task, 'mi_loss': mi_total,
                  'ne_loss': ne_total}

  return loss_fn


def predict_fn(model: nn.Module) -> Callable[[Params, jax.Array], jax.Array]:
  """``fn(isr_params, x) -> logits``: the backbone alone, no aux head."""
  plain = clients.predict_fn(model)
  return lambda params, x: plain(backbone(params), x)
