"""Evaluation: centralized test metrics and per-client held-out accuracy.

The examples go to the device once, as [num_batches, B, ...] padded
batches; one jitted `lax.map` over them returns per-example loss and
correctness, reduced on the host. Per-client accuracy groups the held-out
examples by client (mean and 10th percentile over clients, the tail metric
of fairness-minded FL papers such as Li et al., q-FFL, ICLR 2020).

Sequence labels ('y' [N, T], next-token prediction) are scored per token:
loss and accuracy are means over the tokens that are not the padding id
(``pad_id``, 0 for the text datasets), pooled over all tokens of the set
(or of a client), as `clients.classification_loss` trains them.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import clients
from fedjax_ext.clients import _objectives
from fedjax_ext.core import Examples, Params


class EvalSet(NamedTuple):
  """Examples padded into fixed batches, ready on the device."""
  x: jax.Array  # [num_batches, B, ...]
  y: jax.Array  # int32 [num_batches, B] or [num_batches, B, T] (tokens).
  num_examples: int  # real examples; the rest is padding at the end.
  segment_ids: np.ndarray | None  # int [num_examples] client of each row.
  num_segments: int


def make_eval_set(examples: Examples, *, batch_size: int,
                  segment_ids: np.ndarray | None = None,
                  num_segments: int = 0) -> EvalSet:
  """Pads `examples` to whole batches and puts them on the device."""
  n = len(examples['y'])
  if n == 0:
    raise ValueError('Cannot evaluate on an empty set of examples.')
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n

  def batched(column):
    column = np.concatenate([column, np.repeat(column[:1], pad, axis=0)])
    return jnp.asarray(column.reshape((num_batches, batch_size)
                                      + column.shape[1:]))

  return EvalSet(batched(examples['x']), batched(examples['y']), n,
                 segment_ids, num_segments)


def make_evaluate_fn(predict: Callable[[Params, jax.Array], jax.Array], *,
                     pad_id: int | None = 0):
  """``evaluate(params, eval_set) -> dict`` of loss, accuracy, per client.

  Returns 'loss' and 'accuracy' over all examples (over all non-padding
  tokens for sequence labels) and, when the set has segment ids,
  'client_accuracy_mean' and 'client_accuracy_p10' over the segments that
  hold at least one example (one scored token for sequence labels).

  Args:
    predict: ``fn(params, x) -> logits``.
    pad_id: the padding id of sequence labels, not scored; None scores
      every token. Unused for one label per example.
  """

  @jax.jit
  def per_example(params, x, y):

    def one_batch(batch):
      logits = predict(params, batch[0])
      loss = clients.per_example_cross_entropy(logits, batch[1])
      correct = jnp.argmax(logits, -1) == batch[1]
      if batch[1].ndim == 1:
        return loss, correct, jnp.ones_like(loss)
      # Per token: sums over each example's scored tokens, and their count.
      weights = _objectives.label_weights(
          batch[1], jnp.ones(batch[1].shape[:1], jnp.float32), pad_id)
      return (jnp.sum(loss * weights, axis=-1),
              jnp.sum(correct * weights, axis=-1), jnp.sum(weights, axis=-1))

    loss, correct, weight = jax.lax.map(one_batch, (x, y))
    return loss.reshape(-1), correct.reshape(-1), weight.reshape(-1)

  def evaluate(params: Params, eval_set: EvalSet) -> dict[str, float]:
    loss, correct, weight = jax.device_get(
        per_example(params, eval_set.x, eval_set.y))
    n = eval_set.num_examples
    loss, correct = loss[:n], correct[:n].astype(np.float64)
    if eval_set.y.ndim == 2:  # One label per example.
      weight = np.ones(n)
      metrics = {'loss': float(np.mean(loss)),
                 'accuracy': float(np.mean(correct))}
    else:
      weight = weight[:n].astype(np.float64)
      total = max(float(np.sum(weight)), 1.)
      metrics = {'loss': float(np.sum(loss.astype(np.float64)) / total),
                 'accuracy': float(np.sum(correct) / total)}
    if eval_set.segment_ids is not None:
      counts = np.bincount(eval_set.segment_ids, weights=weight,
                           minlength=eval_set.num_segments)
      hits = np.bincount(eval_set.segment_ids, weights=correct,
                         minlength=eval_set.num_segments)
      per_client = hits[counts > 0] / counts[counts > 0]
      metrics['client_accuracy_mean'] = float(np.mean(per_client))
      metrics['client_accuracy_p10'] = float(np.percentile(per_client, 10))
    return metrics

  return evaluate


def classification_evaluator(predict: Callable[[Params, jax.Array], jax.Array],
                             examples: Examples, *, batch_size: int,
                             name: str = 'test',
                             client_of_example: np.ndarray | None = None,
                             num_clients: int = 0, pad_id: int | None = 0):
  """An evaluator for `training.run_rounds` of a classifier's model.

  Args:
    predict: ``fn(params, x) -> logits`` (`clients.predict_fn`).
    examples: columns 'x' and 'y', put on the device once.
    batch_size: evaluation batch size.
    name: prefix of the metrics: ``{name}_accuracy``, ``{name}_loss``.
    client_of_example: optional client of each example (clients'
      held-out data); then the metrics are ``client_accuracy_mean`` and
      ``client_accuracy_p10`` over clients instead.
    num_clients: number of clients for `client_of_example`.
    pad_id: padding id of sequence labels ('y' [N, T]), not scored.

  Returns:
    ``fn(params, state, client_store) -> metrics``.
  """
  evaluate = make_evaluate_fn(predict, pad_id=pad_id)
  eval_set = make_eval_set(examples, batch_size=batch_size,
                           segment_ids=client_of_example,
                           num_segments=num_clients)

  def evaluator(params, state=None, client_store=None):
    del state, client_store
    metrics = evaluate(params, eval_set)
    if client_of_example is not None:
      return {'client_accuracy_mean': metrics['client_accuracy_mean'],
              'client_accuracy_p10': metrics['client_accuracy_p10']}
    return {f'{name}_accuracy': metrics['accuracy'],
            f'{name}_loss': metrics['loss']}

  return evaluator
