"""The EMNIST CNN: its exact parameter count, shapes, and dropout handling."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext._src import test_utils
from fedjax_ext.models import _cnn

# 'rbg' keys compile much faster than threefry on XLA:CPU; init is the same.
KEY = jax.random.key(0, impl='rbg')


def num_params(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


class EmnistCNNTest(parameterized.TestCase):

  def test_emnist_parameter_count(self):
    params = jax.eval_shape(_cnn.EmnistCNN().init, KEY,
                            jnp.ones((1, 28, 28, 1)))['params']
    # conv1 3*3*1*32+32, conv2 3*3*32*64+64, dense (12*12*64)*128+128,
    # logits 128*62+62 (Reddi et al. 2021, Table 3; FedJAX create_conv_model).
    expected = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (
        12 * 12 * 64 * 128 + 128) + (128 * 62 + 62)
    self.assertEqual(expected, 1_206_590)
    self.assertEqual(num_params(params), expected)
    self.assertEqual(params['dense']['kernel'].shape, (9216, 128))

  @parameterized.named_parameters(
      # VALID 3x3 twice then a 2x2 pool: side (H - 4) // 2.
      ('digits_8x8', (8, 8, 1), 10, 2 * 2 * 64),
      ('emnist_28x28', (28, 28, 1), 62, 12 * 12 * 64),
      ('cifar_32x32', (32, 32, 3), 10, 14 * 14 * 64),
  )
  def test_output_shape(self, image_shape, num_classes, flat_size):
    model = _cnn.EmnistCNN(num_classes=num_classes)
    x = jnp.ones((2, *image_shape))
    variables = jax.eval_shape(model.init, KEY, x)
    self.assertEqual(variables['params']['dense']['kernel'].shape,
                     (flat_size, 128))
    self.assertEqual(jax.eval_shape(model.apply, variables, x).shape,
                     (2, num_classes))

  def test_dropout_only_when_training_with_positive_rate(self):
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 1), np.float32)
    model = _cnn.EmnistCNN(num_classes=10, dropout_rate=0.5)
    variables = jax.jit(model.init)(KEY, x)
    apply = jax.jit(model.apply, static_argnames='train')
    with self.subTest('eval_is_deterministic_and_needs_no_rng'):
      test_utils.assert_trees_all_equal(apply(variables, x),
                                        apply(variables, x, train=False))
    with self.subTest('train_uses_the_dropout_rng'):
      key_a, key_b = jax.random.split(KEY)
      a = apply(variables, x, train=True, rngs={'dropout': key_a})
      b = apply(variables, x, train=True, rngs={'dropout': key_b})
      self.assertFalse(np.allclose(a, b))
      self.assertFalse(np.allclose(a, apply(variables, x)))
    with self.subTest('rate_zero_ignores_train'):
      no_dropout = _cnn.EmnistCNN(num_classes=10)
      test_utils.assert_trees_all_close(
          no_dropout.apply(variables, x, train=True),
          apply(variables, x))

  def test_rejects_vectors(self):
    with self.assertRaisesRegex(ValueError, r'\[B, H, W, C\]'):
      jax.eval_shape(_cnn.EmnistCNN().init, KEY, jnp.ones((2, 784)))


if __name__ == '__main__':
  absltest.main()
