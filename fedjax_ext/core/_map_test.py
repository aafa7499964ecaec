"""`map_clients`: every strategy computes the same thing."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import core
from fedjax_ext._src import test_utils


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
    self.assertEqual(auto([big], 'cpu'), 'unrolled')
    self.assertEqual(auto([big], 'gpu'), 'vmap')
    self.assertEqual(auto([small], 'cpu', devices=8), 'sharded')

  def test_local_steps_unroll_rule(self):
    small = {'w': jnp.zeros((10,))}
    big = {'w': jnp.zeros((core.CPU_VMAP_MAX_PARAMS + 1,))}
    self.assertEqual(core.local_steps_unroll(small, backend='cpu'), 1)
    self.assertIs(core.local_steps_unroll(big, backend='cpu'), True)
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
