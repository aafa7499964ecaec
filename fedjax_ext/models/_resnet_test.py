"""ResNet-GN: the ResNet-18 count by hand, shapes, purity, GroupNorm."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext._src import test_utils
from fedjax_ext.models import _resnet

# 'rbg' keys compile much faster than threefry on XLA:CPU; init is the same.
KEY = jax.random.key(0, impl='rbg')


def num_params(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def expected_num_params(stage_sizes, width, in_channels, num_classes):
  """Counts the parameters of the architecture as documented, by hand."""
  conv = lambda k, cin, cout: k * k * cin * cout  # No bias.
  norm = lambda c: 2 * c  # GroupNorm scale and bias.
  total = conv(3, in_channels, width) + norm(width)  # Stem.
  channels = width
  for i, num_blocks in enumerate(stage_sizes):
    filters = width * 2**i
    for _ in range(num_blocks):
      total += conv(3, channels, filters) + norm(filters)
      total += conv(3, filters, filters) + norm(filters)
      if channels != filters:  # Only the first block of stages 2, 3, ...
        total += conv(1, channels, filters) + norm(filters)
      channels = filters
  return total + channels * num_classes + num_classes  # Dense head.


class ResNetGNTest(parameterized.TestCase):

  def test_resnet18_parameter_count(self):
    model = _resnet.ResNetGN(num_classes=10)
    params = jax.eval_shape(model.init, KEY,
                            jnp.ones((1, 32, 32, 3)))['params']
    expected = expected_num_params((2, 2, 2, 2), 64, 3, 10)
    # The CIFAR ResNet-18 (e.g. kuangliu/pytorch-cifar) has 11,173,962
    # parameters; GroupNorm has as many as BatchNorm's scale and bias.
    self.assertEqual(expected, 11_173_962)
    self.assertEqual(num_params(params), expected)

  @parameterized.named_parameters(
      ('cifar_32x32', (32, 32, 3), (2, 2, 2, 2), 10),
      ('emnist_28x28', (28, 28, 1), (1, 1), 62),
      ('digits_8x8', (8, 8, 1), (1, 1, 1), 10),
  )
  def test_small_width_shapes_and_count(self, image_shape, stage_sizes,
                                        num_classes):
    model = _resnet.ResNetGN(num_classes=num_classes, stage_sizes=stage_sizes,
                             num_filters=16)
    x = jnp.ones((2, *image_shape))
    variables = jax.eval_shape(model.init, KEY, x)
    self.assertEqual(num_params(variables),
                     expected_num_params(stage_sizes, 16, image_shape[-1],
                                         num_classes))
    logits = jax.eval_shape(model.apply, variables, x)
    self.assertEqual(logits.shape, (2, num_classes))
    self.assertEqual(logits.dtype, jnp.float32)

  def test_apply_is_pure(self):
    model = _resnet.ResNetGN(num_classes=10, stage_sizes=(1, 1),
                             num_filters=4)
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 3), np.float32)
    variables = jax.jit(model.init)(KEY, x)
    with self.subTest('params_are_the_only_collection'):
      self.assertEqual(list(variables), ['params'])
    with self.subTest('train_and_eval_agree'):
      apply = jax.jit(model.apply, static_argnames='train')
      test_utils.assert_trees_all_equal(apply(variables, x),
                                        apply(variables, x, train=True))
    with self.subTest('groupnorm_normalizes_per_example'):
      # Without batch statistics, one example's logits do not depend on the
      # rest of the batch.
      others_changed = np.concatenate([x[:1], np.zeros_like(x[1:])])
      test_utils.assert_trees_all_close(apply(variables, x)[0],
                                        apply(variables, others_changed)[0],
                                        atol=1e-6)

  def test_rejects_groups_that_do_not_divide_channels(self):
    model = _resnet.ResNetGN(num_classes=10, stage_sizes=(1,), num_filters=6,
                             num_groups=4)
    with self.assertRaises(ValueError):
      jax.eval_shape(model.init, KEY, jnp.ones((1, 8, 8, 3)))


if __name__ == '__main__':
  absltest.main()
