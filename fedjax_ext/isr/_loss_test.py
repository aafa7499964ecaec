"""ISR loss terms against hand computations; lambda = mu = 0 is plain."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import isr
from fedjax_ext import models
from fedjax_ext._src import test_utils
from fedjax_ext.training import make_eval_set, make_evaluate_fn

KEY = jax.random.key(0)


class TinyConv(nn.Module):
  """A conv feature map [B, 2, 2, 3] then logits: a spatial ISR point."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    z = nn.Conv(3, (1, 1), name='conv')(x)
    return nn.Dense(2, name='logits')(nn.relu(z).reshape(x.shape[0], -1))


def log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def batch_of(x, y, mask):
  return {'x': np.asarray(x, np.float32), 'y': np.asarray(y, np.int32),
          'mask': np.asarray(mask, np.float32)}


class IsrLossTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model = models.create_model('mlp', num_classes=3, hidden_sizes=(4,))
    rng = np.random.default_rng(0)
    self.batch = batch_of(rng.normal(size=(5, 6)), [0, 1, 2, 1, 0],
                          [1, 1, 1, 1, 0])
    self.points = isr.isr_points(['hidden_0'], mi_weight=0.3, ne_weight=0.1)
    self.params = isr.init_isr(self.model, KEY, self.batch['x'], self.points,
                               num_classes=3)

  def test_terms_match_numpy(self):
    p = jax.tree.map(np.asarray, self.params)
    x, y, mask = self.batch['x'], self.batch['y'], self.batch['mask']
    hidden = x @ p['model']['hidden_0']['kernel'] + p['model']['hidden_0'][
        'bias']
    logits = (np.maximum(hidden, 0) @ p['model']['logits']['kernel']
              + p['model']['logits']['bias'])
    aux = hidden @ p['aux']['hidden_0']['kernel'] + p['aux']['hidden_0'][
        'bias']
    ce = lambda lg: -log_softmax(lg)[np.arange(5), y]
    task = (ce(logits) * mask).sum() / 4
    mi = (ce(aux) * mask).sum() / 4
    ls = log_softmax(hidden)
    ne = ((np.exp(ls) * ls).sum(-1) * mask).sum() / 4
    terms = jax.jit(lambda p, b: isr.isr_terms(self.model, self.points, p, b,
                                               KEY))(self.params, self.batch)
    self.assertAlmostEqual(float(terms['task']), task, places=5)
    self.assertAlmostEqual(float(terms['mi/hidden_0']), mi, places=5)
    self.assertAlmostEqual(float(terms['ne/hidden_0']), ne, places=5)
    # Negative entropy of a 4-way softmax lies in [-log 4, 0].
    self.assertBetween(ne, -np.log(4), 0.)
    loss, metrics = jax.jit(isr.isr_loss(self.model, self.points))(
        self.params, self.batch, KEY)
    self.assertAlmostEqual(float(loss), task + 0.3 * mi + 0.1 * ne, places=5)
    self.assertAlmostEqual(float(metrics['mi_loss']), 0.3 * mi, places=5)
    self.assertAlmostEqual(float(metrics['ne_loss']), 0.1 * ne, places=5)

  @parameterized.parameters('location', 'pooled')
  def test_spatial_point_pools_and_takes_entropy(self, ne_over):
    model = TinyConv()
    x = np.random.default_rng(1).normal(size=(2, 2, 2, 1)).astype(np.float32)
    batch = batch_of(x, [0, 1], [1, 1])
    points = isr.isr_points(['conv'])
    params = isr.init_isr(model, KEY, x, points, num_classes=2)
    p = jax.tree.map(np.asarray, params)
    z = x @ p['model']['conv']['kernel'][0, 0] + p['model']['conv']['bias']
    if ne_over == 'pooled':
      ls = log_softmax(z.mean(axis=(1, 2)))
      ne = (np.exp(ls) * ls).sum(-1).mean()
    else:
      ls = log_softmax(z)
      ne = (np.exp(ls) * ls).sum(-1).mean()
    aux = z.mean(axis=(1, 2)) @ p['aux']['conv']['kernel']
    mi = -log_softmax(aux)[np.arange(2), [0, 1]].mean()
    terms = isr.isr_terms(model, points, params, batch, KEY, ne_over=ne_over)
    self.assertEqual(p['aux']['conv']['kernel'].shape, (3, 2))
    self.assertAlmostEqual(float(terms['ne/conv']), ne, places=5)
    self.assertAlmostEqual(float(terms['mi/conv']), mi, places=5)

  def test_unknown_point_and_bad_options_are_named(self):
    with self.assertRaisesRegex(ValueError, "'dense_9'.*hidden_0"):
      isr.capture_features(self.model, self.params['model'], self.batch['x'],
                           ['dense_9'], train=False)
    with self.assertRaisesRegex(ValueError, 'location, pooled'):
      isr.isr_loss(self.model, self.points, ne_over='pixel')
    with self.assertRaisesRegex(
        ValueError, 'mi_weight must be a finite number >= 0, got -1'):
      isr.isr_points(['hidden_0'], mi_weight=-1.)

  @parameterized.parameters('scaffold', 'fedadam')
  def test_zero_weights_equal_the_plain_run_exactly(self, name):
    rng = np.random.default_rng(2)
    shape = (3, 4, 5)
    cohort = core.Cohort(
        np.arange(3, dtype=np.int32),
        {'x': rng.normal(size=shape + (6,)).astype(np.float32),
         'y': rng.integers(0, 3, size=shape).astype(np.int32),
         'mask': np.ones(shape, np.float32)}, np.full(3, 20., np.float32))
    zero = isr.isr_points(['hidden_0'], mi_weight=0., ne_weight=0.)
    finals = []
    for loss_fn, params in (
        (clients.classification_loss(self.model), self.params['model']),
        (isr.isr_loss(self.model, zero), self.params)):
      algorithm = algorithms.create_algorithm(
          name, loss_fn, client_learning_rate=0.1, server_learning_rate=0.5,
          num_clients=3)
      state = algorithm.init(params)
      store = core.tree_broadcast(algorithm.init_client_state(params), 3)
      apply = jax.jit(algorithm.apply)
      for _ in range(3):
        state, store, _ = apply(state, store, cohort, KEY)
      finals.append(state.params)
    test_utils.assert_trees_all_equal(finals[0], finals[1]['model'])
    test_utils.assert_trees_all_equal(finals[1]['aux'], self.params['aux'])
    self.assertGreater(float(optax.tree.norm(jax.tree.map(
        jnp.subtract, finals[0], self.params['model']))), 0.)

  def test_aux_heads_are_absent_from_evaluation(self):
    predict = isr.predict_fn(self.model)
    garbage = jax.tree.map(lambda a: a + 1e3, self.params['aux'])
    changed = {'model': self.params['model'], 'aux': garbage}
    np.testing.assert_array_equal(
        predict(self.params, self.batch['x']),
        clients.predict_fn(self.model)(self.params['model'], self.batch['x']))
    eval_set = make_eval_set({'x': self.batch['x'], 'y': self.batch['y']},
                             batch_size=2)
    evaluate = make_evaluate_fn(predict)
    self.assertEqual(evaluate(self.params, eval_set),
                     evaluate(changed, eval_set))
    # The deployed tree is the plain model's: no head in it.
    self.assertEqual(jax.tree.structure(isr.backbone(self.params)),
                     jax.tree.structure(self.model.init(
                         KEY, self.batch['x'])['params']))
    # ...while the ISR loss does read the heads.
    loss_fn = isr.isr_loss(self.model, self.points)
    self.assertNotAlmostEqual(float(loss_fn(self.params, self.batch, KEY)[0]),
                              float(loss_fn(changed, self.batch, KEY)[0]))


if __name__ == '__main__':
  absltest.main()
