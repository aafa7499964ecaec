"""LoRA as a parameter transform: selection, init, merge, the loss."""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import lora
from fedjax_ext._src import test_utils
from fedjax_ext.lora import _testing

KEY = jax.random.key(0)


class SelectTest(absltest.TestCase):

  def test_regex_glob_and_callable(self):
    base = _testing.base_params()
    self.assertEqual(lora.select_paths(base, r'params/layer_[01]/kernel'),
                     ['params/layer_0/kernel', 'params/layer_1/kernel'])
    self.assertEqual(lora.select_paths(base, 'glob:*/head/*'),
                     ['params/head/bias', 'params/head/kernel'])
    self.assertEqual(
        lora.select_paths(base, lambda p, leaf: leaf.shape == (5, 4)),
        ['params/layer_1/kernel'])

  def test_no_match_lists_the_paths(self):
    with self.assertRaisesRegex(ValueError, 'params/layer_0/kernel'):
      lora.select_paths(_testing.base_params(), 'query')


class InitMergeTest(absltest.TestCase):

  def test_init_b_zero_and_merge_is_the_base(self):
    base = _testing.base_params()
    adapters = lora.init_adapters(base, targets='.*layer_1/kernel', rank=2,
                                  key=KEY)
    a = adapters['params/layer_1/kernel']
    self.assertEqual(a['A'].shape, (2, 5))
    self.assertEqual(a['B'].shape, (4, 2))
    np.testing.assert_array_equal(a['B'], 0.)
    self.assertLessEqual(float(jnp.max(jnp.abs(a['A']))), 1 / np.sqrt(5))
    test_utils.assert_trees_all_equal(
        lora.merge(base, adapters, alpha=4.), base)

  def test_merge_by_hand(self):
    base = _testing.base_params()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 5)).astype(np.float32)
    b = rng.normal(size=(4, 2)).astype(np.float32)
    merged = lora.merge(base, {'params/layer_1/kernel': {'A': a, 'B': b}},
                        alpha=3.)
    expected = base['params']['layer_1']['kernel'] + 1.5 * (b @ a).T
    np.testing.assert_allclose(merged['params']['layer_1']['kernel'],
                               expected, rtol=1e-6)
    # Everything else is untouched.
    np.testing.assert_array_equal(merged['params']['layer_0']['kernel'],
                                  base['params']['layer_0']['kernel'])

  def test_dense_general_kernel_and_output_equals_low_rank_path(self):

    class Attn(nn.Module):

      @nn.compact
      def __call__(self, x):
        q = nn.DenseGeneral((2, 3), name='query')(x)  # [in, heads, dim].
        return nn.DenseGeneral(4, axis=(-2, -1), name='out')(q)

    model = Attn()
    x = jax.random.normal(KEY, (5, 4))
    base = model.init(KEY, x)
    adapters = lora.init_adapters(base, targets='.*/kernel', rank=2,
                                  key=KEY, init='gaussian')
    adapters = {p: {'A': a['A'], 'B': a['B'] + 0.3}
                for p, a in adapters.items()}
    self.assertEqual(adapters['params/query/kernel']['A'].shape, (2, 4))
    self.assertEqual(adapters['params/query/kernel']['B'].shape, (6, 2))
    # 'out' is [heads, dim, out]: in_axes is read from A's width.
    adapters['params/out/kernel'] = {
        'A': jax.random.normal(KEY, (2, 6)), 'B': jnp.ones((4, 2))}
    merged = lora.merge(base, adapters, alpha=2.)
    qa = adapters['params/query/kernel']
    q = x @ jnp.reshape(base['params']['query']['kernel'], (4, 6))
    q = q + (x @ qa['A'].T) @ qa['B'].T + base['params']['query']['bias'
                                                                 ].ravel()
    oa = adapters['params/out/kernel']
    y = q @ jnp.reshape(base['params']['out']['kernel'], (6, 4))
    y = y + (q @ oa['A'].T) @ oa['B'].T + base['params']['out']['bias']
    np.testing.assert_allclose(model.apply(merged, x), y, rtol=1e-5,
                               atol=1e-5)

  def test_truncate_zeroes_the_tail(self):
    adapters = {'w': {'A': jnp.ones((4, 3)), 'B': jnp.ones((2, 4))}}
    cut = lora.truncate(adapters, 2)['w']
    np.testing.assert_array_equal(cut['A'][:2], 1.)
    np.testing.assert_array_equal(cut['A'][2:], 0.)
    np.testing.assert_array_equal(cut['B'][:, 2:], 0.)


class LossTest(absltest.TestCase):

  def test_gradient_reaches_adapters_only(self):
    base = _testing.base_params()
    trainable = lora.LoRAParams(
        lora.init_adapters(base, targets='.*layer_0/kernel', rank=2,
                           key=KEY),
        {'params/head/bias': base['params']['head']['bias']})
    batch = jax.tree.map(lambda v: v[0, 0], _testing.cohort().batches)
    objective = lora.lora_loss(_testing.loss_fn, base, alpha=2.)
    grads = jax.grad(lambda t: objective(t, batch, None)[0])(trainable)
    self.assertEqual(jax.tree.structure(grads),
                     jax.tree.structure(trainable))
    # B = 0 at init, so A's gradient is 0 and B's is not.
    a_grad = grads.adapters['params/layer_0/kernel']
    np.testing.assert_array_equal(a_grad['A'], 0.)
    self.assertGreater(float(jnp.linalg.norm(a_grad['B'])), 0.)
    # Same loss as the merged model's.
    merged = lora.merge(base, trainable, alpha=2.)
    self.assertAlmostEqual(float(objective(trainable, batch, None)[0]),
                           float(_testing.loss_fn(merged, batch, None)[0]),
                           places=6)


if __name__ == '__main__':
  absltest.main()
