"""classification_loss and the evaluator on per-example and per-token labels."""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import clients
from fedjax_ext.clients import _objectives
from fedjax_ext.training import _evaluation


class FixedLogits(nn.Module):
  """Returns ``x`` itself as logits (x: float [..., V])."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return x + 0. * self.param('unused', nn.initializers.zeros, ())


class TokenDense(nn.Module):
  """A per-token linear layer: float [B, T, D] -> logits [B, T, 3]."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return nn.Dense(3)(x)


def _ce(logits, label):
  return float(-jax.nn.log_softmax(jnp.asarray(logits))[label])


# Two examples, three tokens, vocabulary 3; PAD = 0.
LOGITS = np.array([[[0., 2., 1.], [1., 0., 3.], [5., 0., 0.]],
                   [[0., 0., 4.], [2., 1., 0.], [0., 1., 0.]]], np.float32)
LABELS = np.array([[1, 1, 0],   # The third token is padding.
                   [2, 0, 0]], np.int32)


class SequenceLossTest(absltest.TestCase):

  def loss(self, mask, pad_id=0):
    loss_fn = clients.classification_loss(FixedLogits(), pad_id=pad_id)
    batch = {'x': LOGITS, 'y': LABELS, 'mask': np.asarray(mask, np.float32)}
    loss, metrics = loss_fn({'unused': jnp.zeros(())}, batch,
                            jax.random.key(0))
    return float(loss), float(metrics['accuracy'])

  def test_hand_example(self):
    loss, accuracy = self.loss([1., 1.])
    scored = [(LOGITS[0, 0], 1), (LOGITS[0, 1], 1), (LOGITS[1, 0], 2)]
    expected = np.mean([_ce(l, y) for l, y in scored])
    self.assertAlmostEqual(loss, expected, places=5)
    # argmax: 1 (right), 2 (wrong), 2 (right).
    self.assertAlmostEqual(accuracy, 2 / 3, places=6)

  def test_batch_mask_drops_whole_examples(self):
    loss, accuracy = self.loss([0., 1.])
    self.assertAlmostEqual(loss, _ce(LOGITS[1, 0], 2), places=5)
    self.assertEqual(accuracy, 1.)
    self.assertEqual(self.loss([0., 0.]), (0., 0.))

  def test_pad_id_none_scores_every_token(self):
    loss, _ = self.loss([1., 1.], pad_id=None)
    expected = np.mean([_ce(LOGITS[b, t], LABELS[b, t])
                        for b in range(2) for t in range(3)])
    self.assertAlmostEqual(loss, expected, places=5)

  def test_per_example_labels_unchanged(self):
    logits = LOGITS[:, 0]
    y = np.array([1, 0], np.int32)
    mask = np.array([1., 0.], np.float32)
    loss_fn = clients.classification_loss(FixedLogits())
    loss, metrics = loss_fn({'unused': jnp.zeros(())},
                            {'x': logits, 'y': y, 'mask': mask},
                            jax.random.key(0))
    # Label 0 is an ordinary class here, not padding.
    self.assertAlmostEqual(float(loss), _ce(logits[0], 1), places=5)
    self.assertEqual(float(metrics['accuracy']), 1.)
    np.testing.assert_array_equal(
        _objectives.label_weights(jnp.asarray(y), jnp.asarray(mask)), mask)

  def test_gradients_ignore_padding(self):
    model = TokenDense()
    loss_fn = clients.classification_loss(model)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    params = model.init(jax.random.key(0), x)['params']

    def grads(x):
      batch = {'x': x, 'y': LABELS, 'mask': np.ones(2, np.float32)}
      return jax.grad(lambda p: loss_fn(p, batch, jax.random.key(0))[0])(
          params)

    changed = x.copy()
    changed[0, 2] += 10.  # The input at a padding target.
    changed[1, 1:] -= 3.
    np.testing.assert_allclose(grads(x)['Dense_0']['kernel'],
                               grads(changed)['Dense_0']['kernel'],
                               rtol=1e-6)


class SequenceEvaluationTest(absltest.TestCase):

  def test_token_metrics_and_per_client(self):
    examples = {'x': np.concatenate([LOGITS, LOGITS[:1]]),
                'y': np.concatenate([LABELS, [[0, 0, 0]]]).astype(np.int32)}
    predict = lambda params, x: x
    evaluate = _evaluation.make_evaluate_fn(predict)
    eval_set = _evaluation.make_eval_set(
        examples, batch_size=2, segment_ids=np.array([0, 1, 2]),
        num_segments=3)
    metrics = evaluate({}, eval_set)
    scored = [(LOGITS[0, 0], 1), (LOGITS[0, 1], 1), (LOGITS[1, 0], 2)]
    self.assertAlmostEqual(metrics['loss'],
                           np.mean([_ce(l, y) for l, y in scored]), places=5)
    self.assertAlmostEqual(metrics['accuracy'], 2 / 3, places=6)
    # Client 0: 1 of 2 tokens; client 1: 1 of 1; client 2 has none scored.
    self.assertAlmostEqual(metrics['client_accuracy_mean'], 0.75)

  def test_evaluator_matches_the_training_loss(self):
    evaluator = _evaluation.classification_evaluator(
        lambda params, x: x, {'x': LOGITS, 'y': LABELS}, batch_size=4)
    metrics = evaluator({})
    loss_fn = clients.classification_loss(FixedLogits())
    loss, aux = loss_fn({'unused': jnp.zeros(())},
                        {'x': LOGITS, 'y': LABELS,
                         'mask': np.ones(2, np.float32)}, jax.random.key(0))
    self.assertAlmostEqual(metrics['test_loss'], float(loss), places=5)
    self.assertAlmostEqual(metrics['test_accuracy'], float(aux['accuracy']))


if __name__ == '__main__':
  absltest.main()
