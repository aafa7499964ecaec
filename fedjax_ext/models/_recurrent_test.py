"""The next-token LSTMs: shapes, Reddi et al.'s sizes, causality, gradients."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import models
from fedjax_ext._src import test_utils

KEY = jax.random.key(0, impl='rbg')


class RecurrentTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('char_lstm', 'char_lstm', 90, 80),
      ('word_lstm', 'word_lstm', 10004, 20),
  )
  def test_default_sizes_and_output_shape(self, name, vocab, length):
    model = models.create_model(name, num_classes=vocab)
    x = jnp.zeros((3, length), jnp.int32)
    variables = jax.eval_shape(model.init, KEY, x)
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=True),
                            variables)
    self.assertEqual(logits.shape, (3, length, vocab))
    self.assertEqual(logits.dtype, jnp.float32)
    params = variables['params']
    shapes = jax.tree.map(lambda a: a.shape, params)
    if name == 'char_lstm':
      # Reddi et al. (2021), Shakespeare: embedding 8, 2 LSTMs of 256.
      self.assertEqual(shapes['embed']['embedding'], (90, 8))
      self.assertEqual(shapes['lstm_1']['hi']['kernel'], (256, 256))
      self.assertEqual(shapes['logits']['kernel'], (256, 90))
    else:
      # Stack Overflow: embedding 96, LSTM 670, projection 96.
      self.assertEqual(shapes['embed']['embedding'], (10004, 96))
      self.assertEqual(shapes['lstm_0']['hi']['kernel'], (670, 670))
      self.assertEqual(shapes['projection']['kernel'], (670, 96))
      self.assertEqual(shapes['logits']['kernel'], (96, 10004))

  @parameterized.parameters('char_lstm', 'word_lstm')
  def test_causal_and_finite_gradients(self, name):
    model = models.create_model(name, num_classes=11, embed_size=4,
                                lstm_sizes=(8,))
    x = jnp.asarray(np.random.default_rng(0).integers(1, 11, (2, 6)))
    params = model.init(KEY, x)['params']
    logits = model.apply({'params': params}, x)
    # Changing (or padding) later tokens leaves earlier logits unchanged.
    later = x.at[:, 3:].set(0)
    np.testing.assert_allclose(
        model.apply({'params': params}, later)[:, :3], logits[:, :3],
        rtol=1e-6)
    self.assertFalse(np.allclose(
        model.apply({'params': params}, later)[:, 3:], logits[:, 3:]))

    def loss(params):
      out = model.apply({'params': params}, x)
      return -jnp.mean(jax.nn.log_softmax(out)[..., 1])

    value, grads = jax.value_and_grad(loss)(params)
    self.assertBetween(float(value), 0.5 * np.log(11), 2. * np.log(11))
    test_utils.assert_tree_all_finite(grads)


if __name__ == '__main__':
  absltest.main()
