r"""SplitLoRA: split MiniLM with LoRA adapters on both sides (spec 5b).

Lin et al., "SplitLoRA: A Split Parameter-Efficient Fine-Tuning Framework
for Large Language Models", arXiv 2407.00952 (code FDU-INC/Split_LoRA).
MiniLM's top layers (`pretrained.MiniLM`, on cached frozen-prefix features
as ``experiments/lora.py``'s ``CachedTop``) are cut at layer ``cut``:

* the client runs layers ``[first, cut)`` on its cached features
  :math:`h^{(first)}` (layers below ``first`` are frozen and cached once);
* the server runs layers ``[cut, L)``, the masked mean pool and the linear
  head, and computes the loss on the labels.

Each adapted kernel (``config.targets``, e.g. q and v) is
:math:`W = W_0 + \frac{\alpha}{r} (BA)^\top` (`lora.merge`, inside each
side's forward). The trainable client part is the client side's adapters
(a `lora.LoRAParams`), the trainable server part the server side's
adapters plus the head (its ``dense`` leaves). The frozen bases
:math:`W_0` of both sides live in the state (``algorithm_state['base']``,
broadcast once, as in the `lora` methods): they are passed to each side's
forward as traced operands, never differentiated, never optimized, never
in the client store and never in a byte count.

The round is `split_algorithm`'s, unchanged (client forward mapped over the
cohort, one server program, client backward mapped; a `lax.scan` over the
S local steps), with SplitLoRA's choices (spec 5b, from the code's
``gpt2_ft_sfl.py``):

* server: ONE server LoRA updated after each client's batch in turn
  (`sequential_server`, SFL-V2);
* client LoRA FedAvg'd at the round's end (``aggregate_clients=True``).
  "Averaged every N steps" is the round: **N = the local steps per round**
  (the cohort's S axis; the code's ``aggregate_step = 100`` is S = 100).
  ``average_every`` (optional) checks that the cohorts have S = N.

Activations: each client uploads :math:`[h^{(cut)}, m]` [B, T, H + 1],
the cut-layer hidden states with the attention mask as a last channel
(the server needs it for attention and pooling; it gets no gradient, so
the downloaded gradient's mask channel is 0). Per step a client uploads
B (T (H + 1) + 1) numbers (activations and labels) and downloads
B T (H + 1); per round it downloads and uploads its client adapters
(`split.round_bytes`).

Documented choices [I]: the clients' optimizer restarts every round (as
every `split_algorithm` variant); the code keeps one AdamW per client
across aggregations. No LoRA dropout (the code's 0.1).
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from fedjax_ext import core
from fedjax_ext import lora
from fedjax_ext._src.checks import check_int
from fedjax_ext.core import Params, PRNGKey, PyTree
from fedjax_ext.pretrained import _minilm
from fedjax_ext.split import _models
from fedjax_ext.split import _round

HEAD = 'head'


def _layer(i: int) -> str:
  return f'layer_{i}'


def _check_cut(encoder: _minilm.MiniLM, first: int, cut: int) -> None:
  if not isinstance(encoder, _minilm.MiniLM):
    raise TypeError(f'encoder must be a pretrained.MiniLM, got '
                    f'{type(encoder).__name__}.')
  num = encoder.num_layers
  check_int('first', first, low=0, high=num - 1)
  check_int(f'cut (first = {first}, num_layers = {num})', cut,
            low=first + 1, high=num)


def top_params(params: Params, *, first: int, num_layers: int) -> Params:
  """The trained model's params: layers ``[first, L)`` and ``'head'``.

  Args:
    params: a MiniLM ``'params'`` tree plus ``'head': {'kernel' [H, K],
      'bias' [K]}``; the embeddings and layers below ``first`` (the frozen
      cached prefix) are dropped if present.
    first: the first layer on top of the cached features.
    num_layers: L.

  Raises:
    ValueError: naming the missing or unknown keys.
  """
  if not isinstance(params, Mapping):
    raise TypeError(f'params must be a mapping of layer params, got '
                    f'{type(params).__name__}.')
  need = [_layer(i) for i in range(first, num_layers)] + [HEAD]
  prefix = {'embeddings'} | {_layer(i) for i in range(first)}
  missing = [k for k in need if k not in params]
  unknown = sorted(set(params) - set(need) - prefix)
  if missing or unknown:
    raise ValueError(f'params must hold {need} (and optionally the cached '
                     f'prefix {sorted(prefix)}); missing {missing}, unknown '
                     f'{unknown}.')
  return {k: params[k] for k in need}


def split_minilm_params(params: Params, *, first: int, cut: int,
                        num_layers: int) -> tuple[Params, Params]:
  """(client side, server side) of MiniLM top params (frozen or merged).

  The client side holds layers ``[first, cut)``, the server side layers
  ``[cut, L)`` and ``'head'``.
  """
  top = top_params(params, first=first, num_layers=num_layers)
  client = {_layer(i): top[_layer(i)] for i in range(first, cut)}
  return client, {k: v for k, v in top.items() if k not in client}


def _split_trainable(full: lora.LoRAParams, client_layers: frozenset
                    ) -> tuple[lora.LoRAParams, lora.LoRAParams]:
  """A `LoRAParams` over the whole top split by each path's top key."""
  if not isinstance(full, lora.LoRAParams):
    raise TypeError(f'split_params takes the trainable lora.LoRAParams, got '
                    f'{type(full).__name__}.')
  side = lambda path: path.split('/')[0] in client_layers
  parts = []
  for on_client in (True, False):
    parts.append(lora.LoRAParams(
        {p: a for p, a in full.adapters.items() if side(p) == on_client},
        {p: v for p, v in full.dense.items() if side(p) == on_client}))
  return parts[0], parts[1]


def _merge_trainable(client: lora.LoRAParams, server: lora.LoRAParams
                    ) -> lora.LoRAParams:
  return lora.LoRAParams({**client.adapters, **server.adapters},
                         {**client.dense, **server.dense})


def _split_model(encoder: _minilm.MiniLM, client_base: Params,
                 server_base: Params, *, first: int, cut: int,
                 alpha: float) -> _models.SplitModel:
  """The SplitModel on given (concrete or traced) frozen bases."""
  client_encoder = encoder.clone(num_layers=cut)
  client_layers = frozenset(_layer(i) for i in range(first, cut))
  hidden = client_base[_layer(first)]['attention_norm']['scale'].shape[0]

  def client_apply(part: lora.LoRAParams, x: jax.Array) -> jax.Array:
    h, mask = x[..., :-1], x[..., -1]
    params = lora.merge(client_base, part, alpha=alpha)
    h = client_encoder.apply({'params': params}, first, h, mask,
                             method=_minilm.MiniLM.forward_from)
    return jnp.concatenate([h, mask[..., None].astype(h.dtype)], axis=-1)

  def server_apply(part: lora.LoRAParams, acts: jax.Array) -> jax.Array:
    h, mask = acts[..., :-1], jax.lax.stop_gradient(acts[..., -1])
    params = dict(lora.merge(server_base, part, alpha=alpha))
    head = params.pop(HEAD)
    h = encoder.apply({'params': params}, cut, h, mask,
                      method=_minilm.MiniLM.forward_from)
    return _minilm.mean_pool(h, mask) @ head['kernel'] + head['bias']

  def merge_params(*parts):
    if len(parts) != 2:
      raise ValueError(f'merge_params takes the 2 parts (client, server), '
                       f'got {len(parts)}.')
    return _merge_trainable(*parts)

  names = tuple(_layer(i) for i in range(first, encoder.num_layers))
  return _models.SplitModel(
      client_apply=client_apply,
      server_apply=server_apply,
      split_params=lambda full: _split_trainable(full, client_layers),
      merge_params=merge_params,
      num_classes=int(server_base[HEAD]['kernel'].shape[-1]),
      cut_features=hidden + 1,
      layer_names=names + (HEAD,),
      cut=cut - first)


def split_lora_model(encoder: _minilm.MiniLM, params: Params, *, first: int,
                     cut: int, alpha: float) -> _models.SplitModel:
  r"""MiniLM's top cut at ``cut``, LoRA on both sides, base frozen.

  The parts are `lora.LoRAParams`: ``split_params(full)`` takes the
  trainable `LoRAParams` of the whole top (`lora.init_lora_params` on
  `top_params`) and splits adapters and ``dense`` leaves by layer;
  ``merge_params`` joins them back. ``client_apply(part, x [B, T, H + 1])``
  (cached hidden states of layer ``first`` with the mask last) returns
  :math:`[h^{(cut)}, m]` [B, T, H + 1]; ``server_apply(part, acts)`` the
  logits [B, K]. The frozen base is `params`, closed over (a compile-time
  constant under ``jit``: fine for `split.step_costs` and small models;
  `split_lora` passes it as a traced operand instead).

  Args:
    encoder: the `pretrained.MiniLM` module (any size).
    params: the frozen params (`top_params`' input).
    first: the first layer on top of the cached features, in [0, L - 1].
    cut: the client runs layers ``[first, cut)``: in [first + 1, L] (L:
      the server runs the pool and head only).
    alpha: LoRA's alpha (scale alpha / r).
  """
  _check_cut(encoder, first, cut)
  client, server = split_minilm_params(params, first=first, cut=cut,
                                       num_layers=encoder.num_layers)
  return _split_model(encoder, client, server, first=first, cut=cut,
                      alpha=alpha)


def split_lora(encoder: _minilm.MiniLM,
               client_optimizer: optax.GradientTransformation,
               server_optimizer: optax.GradientTransformation,
               config: lora.LoRAConfig, *, cut: int, first: int = 0,
               server_rule: _round.ServerRule | None = None,
               average_every: int | None = None,
               weighting: str = 'num_examples',
               failures: _round.Failures | None = None,
               execution: core.Execution | str | None = None
              ) -> core.FederatedAlgorithm:
  r"""SplitLoRA on `split_algorithm` (module docstring).

  Args:
    encoder: the `pretrained.MiniLM` module.
    client_optimizer: optimizer of the client LoRA (fresh each round).
    server_optimizer: optimizer of the server LoRA and head (persists).
    config: `lora.LoRAConfig`: ``targets`` over the top's paths
      (``r'layer_[4-5]/attention/(query|value)/kernel'``), ``rank``,
      ``alpha``, ``key``; ``dense_targets`` the head (``'head/.*'``).
    cut: the client runs layers ``[first, cut)``, in [first + 1, L].
    first: the first layer on the cached features, in [0, L - 1].
    server_rule: default `sequential_server(server_optimizer)` (SFL-V2,
      spec 5b); `joint_server` gives a PSL-style server.
    average_every: N, the client LoRA's averaging period in local steps;
      it IS the round (S steps, then FedAvg), so it must equal the
      cohorts' S (checked at trace time); None: any S.
    weighting: ``core.WEIGHTINGS`` (server step and FedAvg weights).
    failures: unstable participation (`split.Failures`), None for none.
    execution: the run's `core.Execution`.

  Returns:
    A `core.FederatedAlgorithm` with state `SplitState`:
    ``client_params`` / ``server_params`` the two sides' trainable
    `lora.LoRAParams`, ``algorithm_state = {'base': {'client', 'server'},
    'rule': the server rule's state}``. ``init`` takes the frozen MiniLM
    params plus ``'head'`` (`top_params`); ``model_params`` is the merged
    top (:math:`W_0 + \frac{\alpha}{r}(BA)^\top`, head), the params of
    ``CachedTop(encoder, first)``. Metrics are `split_algorithm`'s.
  """
  _check_cut(encoder, first, cut)
  if not isinstance(config, lora.LoRAConfig):
    raise TypeError(f'config must be a lora.LoRAConfig, got '
                    f'{type(config).__name__}.')
  if average_every is not None:
    check_int('average_every', average_every, low=1)
  if server_rule is not None and not isinstance(server_rule,
                                                _round.ServerRule):
    raise TypeError(f'server_rule must be a split.ServerRule, got '
                    f'{type(server_rule).__name__}.')
  rule = server_rule or _round.sequential_server(server_optimizer)
  num_layers = encoder.num_layers

  def inner(base) -> core.FederatedAlgorithm:
    model = _split_model(encoder, base['client'], base['server'],
                         first=first, cut=cut, alpha=config.alpha)
    return _round.split_algorithm(
        model, client_optimizer, server_optimizer, rule,
        aggregate_clients=True, weighting=weighting, failures=failures,
        execution=execution)

  def unwrap(state: _round.SplitState) -> _round.SplitState:
    return state._replace(algorithm_state=state.algorithm_state['rule'])

  def init(params: Params) -> _round.SplitState:
    top = top_params(params, first=first, num_layers=num_layers)
    client, server = split_minilm_params(top, first=first, cut=cut,
                                         num_layers=num_layers)
    base = {'client': client, 'server': server}
    trainable = lora.init_lora_params(top, config)
    state = inner(base).init(trainable)
    return state._replace(algorithm_state={'base': base,
                                           'rule': state.algorithm_state})

  def init_client_state(params: Params) -> PyTree:
    del params
    return ()

  def apply(state: _round.SplitState, client_store: PyTree,
            cohort: core.Cohort, key: PRNGKey):
    steps = cohort.batches['mask'].shape[1]
    if average_every is not None and steps != average_every:
      raise ValueError(f'average_every={average_every} local steps, but the '
                       f'cohort has {steps} steps per round (the client '
                       'LoRA is averaged once per round).')
    base = state.algorithm_state['base']
    new, client_store, metrics = inner(base).apply(
        unwrap(state), client_store, cohort, key)
    return (new._replace(algorithm_state={'base': base,
                                          'rule': new.algorithm_state}),
            client_store, metrics)

  def model_params(state: _round.SplitState, client_store: PyTree) -> Params:
    base = state.algorithm_state['base']
    trainable = inner(base).model_params(unwrap(state), client_store)
    return lora.merge({**base['client'], **base['server']}, trainable,
                      alpha=config.alpha)

  return core.FederatedAlgorithm(init, init_client_state, apply,
                                 model_params)
