"""FedAvg-family reductions to centralized SGD and to each other."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import core
from fedjax_ext import server
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)
# FedAvgM's momentum 0.9 multiplies the step by ~10; the adaptive methods
# take steps of about their learning rate per coordinate.
SERVER_LR = {'fedavgm': 0.1, 'fedadam': 0.5, 'fedyogi': 0.5,
             'fedadagrad': 0.5}


def run_round(algorithm, params, cohort, num_clients=None):
  state = algorithm.init(params)
  n = num_clients or len(cohort.client_ids)
  store = core.tree_broadcast(algorithm.init_client_state(params), n)
  return jax.jit(algorithm.apply)(state, store, cohort, KEY)


class FedAvgTest(parameterized.TestCase):

  @parameterized.parameters('vmap', 'sequential')
  def test_one_client_equals_sgd(self, execution):
    cohort = _testing.random_cohort(1, 5, 4)
    params = _testing.linear_params()
    algorithm = algorithms.fed_avg(_testing.linear_loss, optax.sgd(0.05),
                                   optax.sgd(1.0), execution=execution)
    state, _, metrics = run_round(algorithm, params, cohort)
    expected = _testing.sgd_steps(
        params, jax.tree.map(lambda v: v[0], cohort.batches), 0.05)
    test_utils.assert_trees_all_close(state.params, expected, atol=1e-6)
    self.assertEqual(int(state.round), 1)
    self.assertEqual(float(metrics['local_steps']), 5.)

  def test_iid_one_step_equals_large_batch_sgd(self):
    cohort = _testing.random_cohort(4, 1, 8, seed=1)
    params = _testing.linear_params()
    algorithm = algorithms.fed_avg(_testing.linear_loss, optax.sgd(0.1),
                                   optax.sgd(1.0))
    state, _, _ = run_round(algorithm, params, cohort)
    pooled = jax.tree.map(lambda v: v.reshape((1, 32) + v.shape[3:]),
                          cohort.batches)
    expected = _testing.sgd_steps(params, pooled, 0.1)
    test_utils.assert_trees_all_close(state.params, expected, atol=1e-6)

  def test_padding_steps_change_nothing(self):
    masks = np.ones((2, 4, 3), np.float32)
    masks[1, 2:] = 0.  # Client 1 has two real batches, then padding.
    cohort = _testing.random_cohort(2, 4, 3, masks=masks)
    params = _testing.linear_params()
    algorithm = algorithms.fed_avg(_testing.linear_loss, optax.sgd(0.05),
                                   optax.sgd(1.0))
    state, _, metrics = run_round(algorithm, params, cohort)
    first = jax.tree.map(lambda v: v[0], cohort.batches)
    second = jax.tree.map(lambda v: v[1, :2], cohort.batches)
    y0 = _testing.sgd_steps(params, first, 0.05)
    y1 = _testing.sgd_steps(params, second, 0.05)
    # Weights are the examples processed: 12 and 6.
    expected = jax.tree.map(lambda a, b: (12 * a + 6 * b) / 18, y0, y1)
    test_utils.assert_trees_all_close(state.params, expected, atol=1e-6)
    self.assertAlmostEqual(float(metrics['cohort_weight']), 18.)

  def test_fedprox_zero_mu_is_fedavg_and_positive_mu_is_not(self):
    cohort = _testing.random_cohort(3, 4, 5, seed=2)
    params = _testing.linear_params()
    make = lambda mu: algorithms.fed_avg(
        _testing.linear_loss, optax.sgd(0.05), optax.sgd(1.0), prox_mu=mu)
    avg, _, _ = run_round(make(0.), params, cohort)
    prox0, _, _ = run_round(
        algorithms.create_algorithm(
            'fedprox', _testing.linear_loss, client_learning_rate=0.05,
            server_learning_rate=1.0, num_clients=3, prox_mu=0.),
        params, cohort)
    prox1, _, _ = run_round(make(1.0), params, cohort)
    test_utils.assert_trees_all_equal(avg.params, prox0.params)
    self.assertGreater(
        float(optax.tree.norm(jax.tree.map(jnp.subtract, avg.params,
                                           prox1.params))), 1e-3)

  def test_fedprox_pulls_toward_global_model(self):
    cohort = _testing.random_cohort(2, 6, 5, seed=3)
    params = _testing.linear_params()
    norms = []
    for mu in (0., 10.):
      algorithm = algorithms.fed_avg(_testing.linear_loss, optax.sgd(0.02),
                                     optax.sgd(1.0), prox_mu=mu)
      state, _, _ = run_round(algorithm, params, cohort)
      norms.append(float(optax.tree.norm(state.params)))
    self.assertLess(norms[1], norms[0])

  def test_server_learning_rate_scales_the_step(self):
    cohort = _testing.random_cohort(3, 2, 4, seed=4)
    params = _testing.linear_params()
    steps = []
    for lr in (1.0, 0.5):
      algorithm = algorithms.fed_avg(_testing.linear_loss, optax.sgd(0.05),
                                     optax.sgd(lr))
      state, _, _ = run_round(algorithm, params, cohort)
      steps.append(state.params)
    test_utils.assert_trees_all_close(
        jax.tree.map(lambda a: 0.5 * a, steps[0]), steps[1], atol=1e-6)

  @parameterized.parameters(*algorithms.ALGORITHMS)
  def test_every_named_algorithm_reduces_the_loss(self, name):
    cohort = _testing.random_cohort(4, 5, 8, seed=5)
    params = _testing.linear_params()
    algorithm = algorithms.create_algorithm(
        name, _testing.linear_loss, client_learning_rate=0.05,
        server_learning_rate=SERVER_LR.get(name, 1.0),
        num_clients=4)
    state = algorithm.init(params)
    store = core.tree_broadcast(algorithm.init_client_state(params), 4)
    apply = jax.jit(algorithm.apply)
    losses = []
    for _ in range(10):
      state, store, metrics = apply(state, store, cohort, KEY)
      losses.append(float(metrics['train_loss']))
    self.assertLess(losses[-1], 0.5 * losses[0])
    test_utils.assert_tree_all_finite(state)

  def test_unknown_algorithm_lists_choices(self):
    with self.assertRaisesRegex(ValueError, 'fedavg, fedavgm'):
      algorithms.create_algorithm('fedsgd', _testing.linear_loss,
                                  client_learning_rate=0.1,
                                  server_learning_rate=1.,
                                  num_clients=2)


class NoRetraceTest(absltest.TestCase):

  def test_rounds_with_different_client_sizes_trace_once(self):
    params = _testing.linear_params()
    traces = []

    def loss(p, b, k):
      traces.append(1)
      return _testing.linear_loss(p, b, k)

    algorithm = algorithms.fed_avg(loss, optax.sgd(0.05), optax.sgd(1.0))
    state = algorithm.init(params)
    apply = jax.jit(algorithm.apply)
    rng = np.random.default_rng(0)
    for r in range(6):
      masks = np.zeros((3, 4, 2), np.float32)
      for c in range(3):  # Each client holds a different amount of data.
        masks[c].flat[:rng.integers(1, 9)] = 1.
      cohort = _testing.random_cohort(3, 4, 2, seed=r, masks=masks)
      cohort = cohort._replace(client_ids=rng.choice(10, 3, replace=False)
                               .astype(np.int32))
      state, _, _ = apply(state, (), cohort, KEY)
    self.assertEqual(apply._cache_size(), 1)
    self.assertLen(set(map(id, traces)), 1)
    self.assertLessEqual(len(traces), 2)  # grad traces the loss once.
    self.assertEqual(int(state.round), 6)


if __name__ == '__main__':
  absltest.main()
