r"""What a decentralized round measures: consensus, LoRA cross terms, nodes.

* `consensus_distance`: :math:`\frac1N \sum_i \|x_i - \bar x\|^2` over every
  leaf of the node rows, the quantity gossip contracts (Koloskova et al.,
  "A Unified Theory of Decentralized SGD with Changing Topology and Local
  Updates", ICML 2020, https://arxiv.org/abs/2003.10422).
* `lora_cross_term_error`: :math:`\sum_{\text{targets}} \|\frac1N\sum_i
  B_i A_i - \bar B \bar A\|_F`, the product-of-means error that separate
  gossip of the two LoRA factors leaves (TAD-LoRA, Wang et al., arXiv
  2602.00451).
* `node_accuracies` / `node_accuracy_metrics`: every node's own model on a
  test set, mapped over the nodes, for an evaluator (the averaged model's
  accuracy is the usual evaluator on ``algorithm.model_params``).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_ext import core
from fedjax_ext.core import PyTree


def _flat_rows(rows: PyTree) -> list[jax.Array]:
  leaves = jax.tree.leaves(rows)
  if not leaves:
    return []
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError('rows must be stacked over nodes: every leaf [N, ...] '
                     f'with one N, got leading axes {sorted(map(str, sizes))}.')
  return [jnp.reshape(leaf, (leaf.shape[0], -1)).astype(jnp.float32)
          for leaf in leaves]


def consensus_distance(rows: PyTree) -> jax.Array:
  r"""Mean squared distance of the nodes to their average.

  .. math:: \Xi = \frac1N \sum_{i=1}^N \|x_i - \bar x\|^2,
     \qquad \bar x = \frac1N \sum_i x_i,

  summed over every leaf of `rows` (leaves [N, ...]). 0 at consensus; a
  doubly stochastic gossip step W contracts it by at most
  :math:`\sigma_2(W)^2` (:math:`\lambda_2(\mathbb E[W^\top W])` in
  expectation over a random graph).

  Args:
    rows: a pytree whose leaves are stacked over the N nodes.

  Returns:
    A float32 scalar (0 for an empty tree).
  """
  total = jnp.zeros((), jnp.float32)
  for flat in _flat_rows(rows):
    centred = flat - jnp.mean(flat, axis=0, keepdims=True)
    total = total + jnp.sum(jnp.square(centred)) / flat.shape[0]
  return total


def lora_cross_term_error(adapters: dict, scale: float = 1.) -> jax.Array:
  r"""The cross-term error of separately averaged LoRA factors.

  .. math:: E = \sum_{\text{targets}} \Big\| \frac1N \sum_i B_i A_i -
     \bar B \bar A \Big\|_F,

  where :math:`\bar A, \bar B` are the node means: the gap between the
  mean of the nodes' :math:`\Delta W_i` and the :math:`\Delta W` of the
  mean factors (0 when all A_i, or all B_i, agree).

  Args:
    adapters: ``{path: {'A': [N, r, in], 'B': [N, out, r]}}`` stacked over
      the N nodes (`LoRAParams.adapters` of the store).
    scale: multiplies each product (pass alpha / r for the error in
      :math:`\Delta W` units; 1 gives the formula above).

  Returns:
    A float32 scalar.
  """
  total = jnp.zeros((), jnp.float32)
  for path, adapter in adapters.items():
    if 'A' not in adapter or 'B' not in adapter:
      raise ValueError(f"adapters[{path!r}] needs both 'A' and 'B', got "
                       f'{sorted(adapter)}.')
    a = adapter['A'].astype(jnp.float32)
    b = adapter['B'].astype(jnp.float32)
    if a.ndim != 3 or b.ndim != 3:
      raise ValueError(f'adapters[{path!r}] must be stacked over nodes: A '
                       f'[N, r, in] and B [N, out, r], got {a.shape} and '
                       f'{b.shape}.')
    hp = jax.lax.Precision.HIGHEST
    mean_of_products = jnp.mean(jnp.matmul(b, a, precision=hp), axis=0)
    product_of_means = jnp.matmul(jnp.mean(b, axis=0), jnp.mean(a, axis=0),
                                  precision=hp)
    total = total + scale * jnp.linalg.norm(mean_of_products
                                            - product_of_means)
  return total


def node_accuracies(predict_fn: Callable[[PyTree, jax.Array], jax.Array],
                    store: PyTree, examples: dict[str, jax.Array], *,
                    per_node: bool = False,
                    execution: core.Execution | str | None = 'vmap'
                    ) -> jax.Array:
  """Every node's accuracy on a test set, mapped over the nodes.

  Args:
    predict_fn: ``fn(row, x) -> logits [M, classes]`` for ONE node's row of
      the store (for LoRA rows, merge first: `lora_node_params`).
    store: the algorithm's client store, leaves [N, ...].
    examples: ``{'x': [M, ...], 'y': int [M]}`` and optionally ``'mask'``
      [M] (1 for a real example); with ``per_node`` each column has a
      leading [N] axis (each node's own test set).
    per_node: whether `examples` are per node.
    execution: how the nodes are mapped (`core.map_clients`).

  Returns:
    float32 [N]: the fraction of (real) examples each node classifies
    correctly.
  """
  if 'x' not in examples or 'y' not in examples:
    raise ValueError("examples must have 'x' and 'y' columns, got "
                     f'{sorted(examples)}.')

  def one(row, ex):
    logits = predict_fn(row, ex['x'])
    correct = (jnp.argmax(logits, axis=-1) == ex['y']).astype(jnp.float32)
    mask = ex.get('mask', jnp.ones_like(correct)).astype(jnp.float32)
    return jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.)

  return core.map_clients(one, store, examples,
                          in_axes=(0, 0 if per_node else None),
                          execution=execution)


def node_accuracy_metrics(predict_fn, store, examples, *,
                          per_node: bool = False, prefix: str = 'node_',
                          execution='vmap') -> dict[str, jax.Array]:
  """Mean, standard deviation, min and max of `node_accuracies`.

  Returns:
    ``{prefix + 'accuracy_mean', ..._std, ..._min, ..._max}`` scalars, what
    TAD-LoRA reports (mean +- std over clients).
  """
  accs = node_accuracies(predict_fn, store, examples, per_node=per_node,
                         execution=execution)
  return {f'{prefix}accuracy_mean': jnp.mean(accs),
          f'{prefix}accuracy_std': jnp.std(accs),
          f'{prefix}accuracy_min': jnp.min(accs),
          f'{prefix}accuracy_max': jnp.max(accs)}
