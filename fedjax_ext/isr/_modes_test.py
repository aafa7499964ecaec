"""PureCL is pooled SGD; Hybrid CL-FL mixes the two updates by weight."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import isr
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)
LR = 0.05


class ModesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.params = _testing.linear_params()
    rng = np.random.default_rng(0)
    self.examples = {'x': rng.normal(size=(30, 3)).astype(np.float32),
                     'y': rng.normal(size=30).astype(np.float32)}
    self.parts = [np.arange(0, 10), np.arange(10, 18), np.arange(18, 30)]

  def test_centralized_is_sgd_on_the_pooled_data(self):
    cohort = isr.pooled_cohort(self.examples, self.parts, [0, 2],
                               batch_size=4, num_steps=3, seed=0, round_num=0)
    self.assertEqual(cohort.batches['x'].shape, (1, 3, 4, 3))
    pooled_rows = set(np.concatenate([self.parts[0], self.parts[2]]))
    self.assertTrue({tuple(r) for r in cohort.batches['x'][0].reshape(-1, 3)}
                    <= {tuple(self.examples['x'][i]) for i in pooled_rows})
    algorithm = isr.centralized(_testing.linear_loss, LR)
    state, _, _ = jax.jit(algorithm.apply)(algorithm.init(self.params), (),
                                           cohort, KEY)
    expected = _testing.sgd_steps(
        self.params, jax.tree.map(lambda v: v[0], cohort.batches), LR)
    test_utils.assert_trees_all_close(state.params, expected, atol=1e-6)

  def test_hybrid_mixes_cloud_and_federated_updates(self):
    fl = algorithms.fed_avg(_testing.linear_loss, optax.sgd(LR),
                            optax.sgd(1.0))
    cohort = _testing.random_cohort(2, 3, 4, seed=1)
    cloud = _testing.random_cohort(1, 3, 8, seed=2).batches
    cloud = jax.tree.map(lambda v: v[0], cloud)
    fl_state, _, _ = jax.jit(fl.apply)(fl.init(self.params), (), cohort, KEY)
    cloud_params = _testing.sgd_steps(self.params, cloud, LR)
    for w in (0., 0.25, 1.):
      hybrid = isr.hybrid(fl, _testing.linear_loss, learning_rate=LR,
                          cloud_weight=w)
      state, _, metrics = jax.jit(hybrid.apply)(
          hybrid.init(self.params), (), cohort, cloud, KEY)
      expected = jax.tree.map(lambda c, f: w * c + (1 - w) * f,
                              cloud_params, fl_state.params)
      test_utils.assert_trees_all_close(state.params, expected, atol=1e-6)
      self.assertEqual(int(state.round), 1)
    dc = jax.tree.map(jnp.subtract, self.params, cloud_params)
    df = jax.tree.map(jnp.subtract, self.params, fl_state.params)
    cos = (optax.tree.vdot(dc, df)
           / (optax.tree.norm(dc) * optax.tree.norm(df)))
    self.assertAlmostEqual(float(metrics['cl_fl_cosine']), float(cos),
                           places=5)
    with self.assertRaisesRegex(ValueError, r'cloud_weight must be in \[0'):
      isr.hybrid(fl, _testing.linear_loss, learning_rate=LR, cloud_weight=2.)


if __name__ == '__main__':
  absltest.main()
