"""Every model by name: shapes on each input kind, finite gradients, errors."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import models
from fedjax_ext._src import test_utils

# 'rbg' keys compile much faster than threefry on XLA:CPU; init is the same.
KEY = jax.random.key(0, impl='rbg')

# Small enough for CPU tests; the defaults are exercised by the count tests.
SMALL = {'mlp': {'hidden_sizes': (16,)},
         'resnet': {'stage_sizes': (1, 1), 'num_filters': 8}}

INPUTS = {'digits_8x8x1': (8, 8, 1), 'emnist_28x28x1': (28, 28, 1),
          'cifar_32x32x3': (32, 32, 3), 'vector_60': (60,)}


# Feature -> class models; the next-token ones are tested in _recurrent_test.
CLASSIFIERS = tuple(n for n in models.MODELS if n not in models.SEQUENCE_MODELS)


def _cases():
  for name in CLASSIFIERS:
    for input_name, shape in INPUTS.items():
      if name in ('cnn', 'resnet') and len(shape) == 1:
        continue  # Convolutional models take images only.
      yield {'testcase_name': f'{name}_{input_name}', 'name': name,
             'input_shape': shape}


class CreateModelTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('logistic', 'logistic', models.LogisticRegression),
      ('mlp', 'mlp', models.MLP),
      ('cnn', 'cnn', models.EmnistCNN),
      ('resnet', 'resnet', models.ResNetGN),
      ('char_lstm', 'char_lstm', models.CharLSTM),
      ('word_lstm', 'word_lstm', models.WordLSTM),
  )
  def test_names_resolve_to_classes(self, name, cls):
    model = models.create_model(name, num_classes=7, **SMALL.get(name, {}))
    self.assertIsInstance(model, cls)
    self.assertEqual(model.num_classes, 7)

  def test_models_tuple_matches_the_factory(self):
    self.assertEqual(models.MODELS, ('logistic', 'mlp', 'cnn', 'resnet',
                                     'char_lstm', 'word_lstm'))
    self.assertEqual(models.SEQUENCE_MODELS, ('char_lstm', 'word_lstm'))

  def test_kwargs_reach_the_model(self):
    model = models.create_model('resnet', num_classes=10, num_filters=16,
                                num_groups=4)
    self.assertEqual((model.num_filters, model.num_groups), (16, 4))

  def test_unknown_name_lists_valid_names(self):
    with self.assertRaisesRegex(
        ValueError, r"'vit'.*logistic, mlp, cnn, resnet, char_lstm, "
        'word_lstm'):
      models.create_model('vit', num_classes=10)

  @parameterized.named_parameters(*_cases())
  def test_output_shape(self, name, input_shape):
    model = models.create_model(name, num_classes=10, **SMALL.get(name, {}))
    x = jnp.ones((3, *input_shape), jnp.float32)
    variables = jax.eval_shape(model.init, KEY, x)
    for train in (False, True):
      logits = jax.eval_shape(
          lambda v, x, t=train: model.apply(v, x, train=t,
                                            rngs={'dropout': KEY}),
          variables, x)
      self.assertEqual(logits.shape, (3, 10))
      self.assertEqual(logits.dtype, jnp.float32)

  @parameterized.named_parameters(*((n, n) for n in CLASSIFIERS))
  def test_finite_gradients(self, name):
    model = models.create_model(name, num_classes=10, **SMALL.get(name, {}))
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 1), np.float32)
    y = jnp.array([0, 1, 2, 9])
    params = jax.jit(model.init)(KEY, x)['params']

    @jax.jit
    def loss_and_grads(params):
      def loss(params):
        logits = model.apply({'params': params}, x, train=True,
                             rngs={'dropout': KEY})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                             y[:, None], axis=1))
      return jax.value_and_grad(loss)(params)

    value, grads = loss_and_grads(params)
    self.assertTrue(np.isfinite(value))
    # Near-uniform logits at init: the loss is close to log(10).
    self.assertBetween(float(value), 0.5 * np.log(10), 2. * np.log(10))
    test_utils.assert_tree_all_finite(grads)
    test_utils.assert_trees_all_equal(jax.tree.map(jnp.shape, grads),
                                      jax.tree.map(jnp.shape, params))
    self.assertGreater(
        sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)), 0.)


if __name__ == '__main__':
  absltest.main()
