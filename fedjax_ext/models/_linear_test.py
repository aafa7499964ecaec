"""Logistic regression is x @ W + b by hand; the MLP has the layers asked."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext._src import test_utils
from fedjax_ext.models import _linear

# 'rbg' keys compile much faster than threefry on XLA:CPU; init is the same.
KEY = jax.random.key(0, impl='rbg')


class LogisticRegressionTest(parameterized.TestCase):

  def test_logits_equal_xw_plus_b(self):
    model = _linear.LogisticRegression(num_classes=3)
    x = jnp.arange(2 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 2, 1)
    w = np.array([[1., 0., -1.], [0., 2., 0.], [1., 1., 1.], [0., 0., 3.]],
                 np.float32)
    b = np.array([0.5, -0.5, 0.], np.float32)
    params = {'logits': {'kernel': jnp.asarray(w), 'bias': jnp.asarray(b)}}
    # The hand-made params have the structure and shapes that init makes.
    test_utils.assert_trees_all_equal(
        jax.tree.map(jnp.shape, jax.eval_shape(model.init, KEY, x)['params']),
        jax.tree.map(jnp.shape, params))
    logits = jax.jit(model.apply)({'params': params}, x)
    # Rows of x flattened: [0, 1, 2, 3] and [4, 5, 6, 7].
    expected = np.array([[0 + 0 + 2 + 0 + .5, 0 + 2 + 2 + 0 - .5,
                          0 + 0 + 2 + 9],
                         [4 + 0 + 6 + 0 + .5, 0 + 10 + 6 + 0 - .5,
                          -4 + 0 + 6 + 21]], np.float32)
    np.testing.assert_allclose(logits, expected, rtol=1e-6)
    np.testing.assert_allclose(logits, x.reshape(2, -1) @ w + b, rtol=1e-6)

  def test_train_flag_changes_nothing(self):
    model = _linear.LogisticRegression(num_classes=4)
    x = np.random.default_rng(1).standard_normal((5, 60), np.float32)
    variables = jax.jit(model.init)(KEY, x)
    test_utils.assert_trees_all_equal(model.apply(variables, x, train=True),
                                      model.apply(variables, x))


class MLPTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('default', (200,), [(64, 200), (200, 10)]),
      ('2nn', (200, 200), [(64, 200), (200, 200), (200, 10)]),
      ('no_hidden', (), [(64, 10)]),
  )
  def test_kernel_shapes(self, hidden_sizes, expected_kernels):
    model = _linear.MLP(num_classes=10, hidden_sizes=hidden_sizes)
    x = jnp.ones((3, 8, 8, 1))
    params = jax.eval_shape(model.init, KEY, x)['params']
    names = [f'hidden_{i}' for i in range(len(hidden_sizes))] + ['logits']
    self.assertEqual([params[n]['kernel'].shape for n in names],
                     expected_kernels)
    self.assertEqual(jax.eval_shape(model.apply, {'params': params}, x).shape,
                     (3, 10))

  def test_activation_is_applied(self):
    x = np.random.default_rng(1).standard_normal((4, 6), np.float32)
    relu = _linear.MLP(num_classes=2, hidden_sizes=(5,))
    identity = _linear.MLP(num_classes=2, hidden_sizes=(5,),
                           activation=lambda h: h)
    variables = jax.jit(relu.init)(KEY, x)
    p = variables['params']
    hidden = x @ p['hidden_0']['kernel'] + p['hidden_0']['bias']
    head = p['logits']
    np.testing.assert_allclose(
        relu.apply(variables, x),
        np.maximum(hidden, 0) @ head['kernel'] + head['bias'], rtol=1e-5,
        atol=1e-6)
    np.testing.assert_allclose(
        identity.apply(variables, x),
        hidden @ head['kernel'] + head['bias'], rtol=1e-5, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
