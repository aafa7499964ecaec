"""`map_clients`: every strategy computes the same thing."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import core
from fedjax_ext._src import test_utils
from fedjax_ext.core import _map


def one_client(shared, x, key):
  return {'y': jnp.tanh(x @ shared['w']) + jax.random.normal(key, ()),
          'n': jnp.sum(x)}


class MapClientsTest(parameterized.TestCase):

  @parameterized.parameters('vmap', 'sequential', 'unrolled', 'chunked',
                            'sharded', 'auto')
  def test_strategies_agree_with_a_python_loop(self, strategy):
    shared = {'w': jnp.arange(12.).reshape(4, 3) / 10}
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2, 4)),
                     jnp.float32)
    keys = jax.random.split(jax.random.key(1), 5)
    out = jax.jit(lambda s, x, k: core.map_clients(
        one_client, s, x, k, in_axes=(None, 0, 0),
        execution=core.Execution(strategy, chunk_size=2)))(shared, xs, keys)
    expected = [one_client(shared, xs[i], keys[i]) for i in range(5)]
    expected = jax.tree.map(lambda *v: jnp.stack(v), *expected)
    test_utils.assert_trees_all_close(out, expected, atol=1e-5)
    test_utils.assert_shape(out['y'], (5, 2, 3))

  def test_auto_rule(self):
    small = {'w': jnp.zeros((10,))}
    big = {'w': jnp.zeros((core.CPU_VMAP_MAX_PARAMS + 1,))}
    auto = lambda args, backend, devices=1: core.resolve_strategy(
        'auto', args, backend=backend, num_devices=devices)
    self.assertEqual(auto([small], 'cpu'), 'vmap')
    self.assertEqual(auto([big], 'cpu'), 'sequential')
    self.assertEqual(auto([big], 'gpu'), 'vmap')
    self.assertEqual(auto([small], 'cpu', devices=8), 'sharded')

  def test_local_steps_unroll_rule(self):
    small = {'w': jnp.zeros((10,))}
    big = {'w': jnp.zeros((core.CPU_VMAP_MAX_PARAMS + 1,))}
    self.assertEqual(core.local_steps_unroll(small, backend='cpu'), 1)
    self.assertEqual(core.local_steps_unroll(big, backend='cpu'), 1)
    self.assertEqual(core.local_steps_unroll(big, backend='gpu'), 1)

  def test_sharded_needs_a_multiple_of_the_devices(self):
    mesh = core.client_mesh(jax.devices()[:1] * 1)
    self.assertEqual(mesh.shape[core.CLIENT_AXIS], 1)
    out = core.map_clients(lambda x: 2 * x, jnp.arange(3.),
                           execution=core.Execution(
                               'sharded', mesh=mesh, inner='sequential'))
    np.testing.assert_array_equal(out, [0., 2., 4.])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'auto, vmap, sequential'):
      core.resolve_strategy('pmap')
    with self.assertRaisesRegex(ValueError, 'chunk_size'):
      core.map_clients(lambda x: x, jnp.zeros((2,)), execution='chunked')
    with self.assertRaisesRegex(ValueError, 'unroll'):
      core.as_execution(core.Execution(unroll=0))


def conv(x, w, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), **kwargs):
  return jax.lax.conv_general_dilated(
      x, w, window_strides=kwargs.pop('strides', (1, 1)),
      padding=kwargs.pop('padding', 'VALID'),
      dimension_numbers=dimension_numbers, **kwargs)


def conv_loss(w, x):
  return jnp.sum(jnp.tanh(conv(x, w)) ** 2)


def conv_sgd_steps(w, xs):
  """Rolled SGD steps whose body holds a conv's gradients."""
  step = lambda w, x: (w - 0.1 * jax.grad(conv_loss)(w, x), None)
  return jax.lax.scan(step, w, xs)[0]


def conv_dim_labels(compiled_text):
  return [line.split('dim_labels=')[1].split(',')[0]
          for line in compiled_text.splitlines()
          if ' convolution(' in line]


class CanonicalizeConvsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('nhwc', ('NHWC', 'HWIO', 'NHWC'), {}),
      ('nchw_strided_padded', ('NCHW', 'OIHW', 'NCHW'),
       dict(strides=(2, 1), padding=((1, 0), (2, 1)))),
      ('dilated_grouped', ('NHWC', 'HWIO', 'NCHW'),
       dict(padding=((1, 1), (0, 2)), lhs_dilation=(2, 1),
            rhs_dilation=(1, 2), feature_group_count=2)),
  )
  def test_same_values_and_gradients(self, dimension_numbers, kwargs):
    rng = np.random.default_rng(0)
    lhs_shape = {'NHWC': (2, 7, 6, 4), 'NCHW': (2, 4, 7, 6)}
    rhs_shape = {'HWIO': (3, 2, 4 // kwargs.get('feature_group_count', 1), 6),
                 'OIHW': (6, 4, 3, 2)}
    x = jnp.asarray(rng.normal(size=lhs_shape[dimension_numbers[0]]),
                    jnp.float32)
    w = jnp.asarray(rng.normal(size=rhs_shape[dimension_numbers[1]]),
                    jnp.float32)
    f = lambda w, x: jnp.sum(jnp.sin(conv(x, w, dimension_numbers,
                                          **dict(kwargs))))
    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    canonical = jax.jit(_map.canonicalize_convs(grad))
    test_utils.assert_trees_all_close(canonical(w, x), grad(w, x),
                                      atol=1e-5, rtol=1e-5)
    # Differentiating the rewritten function gives the same gradients too.
    test_utils.assert_trees_all_close(
        jax.jit(jax.grad(_map.canonicalize_convs(f)))(w, x),
        grad(w, x)[1][0], atol=1e-5, rtol=1e-5)

  def test_rolled_scan_keeps_canonical_convs(self):
    w = jnp.full((3, 3, 2, 4), 0.1)
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 6, 6, 2)),
                     jnp.float32)
    canonical = jax.jit(_map.canonicalize_convs(conv_sgd_steps))
    test_utils.assert_trees_all_close(
        canonical(w, xs), jax.jit(conv_sgd_steps)(w, xs), atol=1e-5)
    if jax.default_backend() == 'cpu':
      # The forward and the kernel-gradient convs, both in the one layout
      # XLA:CPU runs on its Eigen kernel, inside the while body.
      labels = conv_dim_labels(canonical.lower(w, xs).compile().as_text())
      self.assertLen(labels, 2)
      self.assertEqual(set(labels), {'b01f_01io->b01f'})

  def test_static_args_outer_tracers_jit_and_cond(self):
    w = jnp.full((3, 3, 2, 4), 0.1)
    xs = jnp.ones((2, 2, 6, 6, 2))

    def fn(w, xs, scale, name):
      self.assertIsInstance(scale, float)  # Python leaves stay static.
      self.assertEqual(name, 'a')
      w = jax.jit(conv_sgd_steps)(w, xs)
      return jax.lax.cond(jnp.sum(w) > 0, lambda v: v * scale,
                          lambda v: jax.grad(conv_loss)(v, xs[0]), w)

    @jax.jit
    def outer(w, xs, offset):
      closure = lambda w, xs, s, n: fn(w, xs, s, n) + offset  # Outer tracer.
      return _map.canonicalize_convs(closure)(w, xs, 2., 'a')

    expected = jax.jit(lambda w, xs: fn(w, xs, 2., 'a') + 1.)(w, xs)
    test_utils.assert_trees_all_close(outer(w, xs, 1.), expected, atol=1e-5)

  @parameterized.parameters('sequential', 'vmap')
  def test_map_clients_rewrites_on_cpu(self, strategy):
    w = jnp.full((3, 3, 2, 4), 0.1)
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 2, 6, 6, 2)),
                     jnp.float32)
    run = jax.jit(lambda w, xs: core.map_clients(
        conv_sgd_steps, w, xs, in_axes=(None, 0),
        execution=core.Execution(strategy, chunk_size=2)))
    expected = jax.jit(lambda w, xs: jnp.stack(
        [conv_sgd_steps(w, x) for x in xs]))(w, xs)
    test_utils.assert_trees_all_close(run(w, xs), expected, atol=1e-5)
    if jax.default_backend() == 'cpu' and strategy == 'sequential':
      labels = conv_dim_labels(run.lower(w, xs).compile().as_text())
      self.assertEqual(set(labels), {'b01f_01io->b01f'})


class TreeTest(absltest.TestCase):

  def test_weighted_mean_by_hand_and_zero_weights(self):
    stacked = {'a': jnp.array([[1., 2.], [3., 6.]])}
    mean = core.tree_weighted_mean(stacked, jnp.array([1., 3.]))
    np.testing.assert_allclose(mean['a'], [2.5, 5.])
    zero = core.tree_weighted_mean(stacked, jnp.zeros(2))
    np.testing.assert_array_equal(zero['a'], [0., 0.])

  def test_gather_scatter_round_trip(self):
    store = {'c': jnp.arange(10.).reshape(5, 2)}
    rows = core.tree_gather(store, jnp.array([3, 1]))
    np.testing.assert_array_equal(rows['c'], [[6., 7.], [2., 3.]])
    store = core.tree_scatter(store, jnp.array([3, 1]),
                              {'c': -jnp.ones((2, 2))})
    np.testing.assert_array_equal(store['c'][jnp.array([1, 3])], -np.ones((2, 2)))
    np.testing.assert_array_equal(store['c'][0], [0., 1.])

  def test_all_finite(self):
    self.assertTrue(core.tree_all_finite({'a': jnp.ones(2)}))
    self.assertFalse(core.tree_all_finite({'a': jnp.array([1., jnp.nan])}))
    self.assertFalse(core.tree_all_finite([jnp.ones(1), jnp.array(jnp.inf)]))


if __name__ == '__main__':
  absltest.main()
