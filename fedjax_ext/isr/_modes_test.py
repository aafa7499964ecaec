"""PureCL is pooled SGD; Hybrid CL-FL mixes the two updates by weight."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import data
from fedjax_ext import isr
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)
LR = 0.05


def noisy_loss(params, batch, key):
  """`linear_loss` plus a key-dependent term: pins which key is used."""
  loss, metrics = _testing.linear_loss(params, batch, key)
  noise = jax.random.normal(key, params['w'].shape)
  return loss + 0.1 * jnp.vdot(noise, params['w']), metrics


def run_rounds(algorithm, params, cohorts, num_clients=3):
  """A generic experiment loop: nothing in it knows the algorithm."""
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params),
                              num_clients)
  apply = jax.jit(algorithm.apply)
  for cohort in cohorts:
    state, store, metrics = apply(state, store, cohort, KEY)
  return algorithm.model_params(state, store), metrics


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
    # One client is never sharded; any execution policy gives the same step.
    for execution in ('sequential', core.Execution(strategy='sharded')):
      other = isr.centralized(_testing.linear_loss, LR, execution=execution)
      other_state, _, _ = jax.jit(other.apply)(other.init(self.params), (),
                                               cohort, KEY)
      test_utils.assert_trees_all_close(other_state.params, state.params,
                                        atol=1e-6)
    with self.assertRaisesRegex(ValueError,
                                'learning_rate must be a finite number > 0'):
      isr.centralized(_testing.linear_loss, 0.)

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
      self.assertIsInstance(hybrid, core.FederatedAlgorithm)
      state, _, metrics = jax.jit(hybrid.apply)(
          hybrid.init(self.params), (), isr.HybridCohort(cohort, cloud), KEY)
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
    for name in ('cloud_loss', 'cloud_update_norm', 'train_loss'):
      self.assertIn(name, metrics)
    self.assertAlmostEqual(float(metrics['cloud_update_norm']),
                           float(optax.tree.norm(dc)), places=5)
    with self.assertRaisesRegex(ValueError,
                                r'cloud_weight must be a finite number in \[0'):
      isr.hybrid(fl, _testing.linear_loss, learning_rate=LR, cloud_weight=2.)

  def test_cloud_draws_the_rounds_stage_key(self):
    # Today's key, fold_in(round_key(key, round), 1), is stage_key(.., 1).
    fl = algorithms.fed_avg(noisy_loss, optax.sgd(LR), optax.sgd(1.0))
    cohort = _testing.random_cohort(2, 3, 4, seed=1)
    cloud = jax.tree.map(lambda v: v[0],
                         _testing.random_cohort(1, 3, 8, seed=2).batches)
    hybrid = isr.hybrid(fl, noisy_loss, learning_rate=LR, cloud_weight=1.)
    state = hybrid.init(self.params)._replace(round=jnp.int32(3))
    state, _, _ = jax.jit(hybrid.apply)(state, (),
                                        isr.HybridCohort(cohort, cloud), KEY)
    old_key = jax.random.fold_in(core.round_key(KEY, 3), 1)
    expected, _ = clients.train_locally(self.params, cloud, old_key,
                                        loss_fn=noisy_loss,
                                        optimizer=optax.sgd(LR))
    test_utils.assert_trees_all_close(state.params, expected, atol=1e-6)
    self.assertEqual(int(state.round), 4)

  def test_hybrid_cohort_packs_clients_and_the_pooled_cloud(self):
    ids = np.array([2, 1], np.int32)
    hc = isr.hybrid_cohort(self.examples, self.parts, ids, [0],
                           batch_size=2, num_steps=3, seed=4, round_num=5)
    fed = data.pack_cohort(self.examples, self.parts, ids, batch_size=2,
                           num_steps=3, seed=4, round_num=5)
    cloud = isr.pooled_cohort(self.examples, self.parts, [0], batch_size=2,
                              num_steps=3, seed=4 + isr.CLOUD_SEED_OFFSET,
                              round_num=5)
    test_utils.assert_trees_all_equal(hc.federated, fed)
    test_utils.assert_trees_all_equal(
        hc.cloud, jax.tree.map(lambda v: v[0], cloud.batches))
    self.assertEqual(hc.cloud['x'].shape, (3, 2, 3))
    custom = isr.hybrid_cohort(self.examples, self.parts, ids, [0, 1],
                               batch_size=2, num_steps=3, seed=4,
                               round_num=5, cloud_batch_size=5, cloud_seed=0)
    self.assertEqual(custom.cloud['mask'].shape, (3, 5))

  def test_one_loop_runs_every_mode(self):
    fl = algorithms.fed_avg(_testing.linear_loss, optax.sgd(LR),
                            optax.sgd(1.0))
    modes = {
        'fl': (fl, lambda r: data.pack_cohort(
            self.examples, self.parts, np.array([1, 2], np.int32),
            batch_size=2, num_steps=2, seed=0, round_num=r)),
        'cl': (isr.centralized(_testing.linear_loss, LR),
               lambda r: isr.pooled_cohort(
                   self.examples, self.parts, [0, 1, 2], batch_size=4,
                   num_steps=2, seed=0, round_num=r)),
        'hybrid': (isr.hybrid(fl, _testing.linear_loss, learning_rate=LR,
                              cloud_weight=0.3),
                   lambda r: isr.hybrid_cohort(
                       self.examples, self.parts, np.array([1, 2], np.int32),
                       [0], batch_size=2, num_steps=2, seed=0, round_num=r)),
    }
    for name, (algorithm, make_cohort) in modes.items():
      params, metrics = run_rounds(algorithm, self.params,
                                   [make_cohort(r) for r in range(2)])
      self.assertTrue(np.isfinite(float(metrics['train_loss'])), name)
      self.assertGreater(float(optax.tree.norm(params)), 0., name)


if __name__ == '__main__':
  absltest.main()
