"""First-order methods: FedAvg equivalence, DFedAvgM, D-PSGD, tracking."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import decentralized
from fedjax_ext import topology
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)


def run(algorithm, params, cohort, rounds, num_nodes):
  """`rounds` jitted rounds from every node at `params`."""
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params), num_nodes)
  apply = jax.jit(algorithm.apply)
  metrics = None
  for _ in range(rounds):
    state, store, metrics = apply(state, store, cohort, KEY)
  return state, store, metrics


def heterogeneous_cohort(num_nodes, seed=0):
  """Full-batch least squares whose per-node minimisers differ."""
  cohort = _testing.random_cohort(num_nodes, 1, 8, seed=seed)
  rng = np.random.default_rng(seed + 1)
  x = cohort.batches['x'] * rng.uniform(0.5, 1.5, (num_nodes, 1, 1, 3))
  y = (np.einsum('nsbd,nd->nsb', x, rng.normal(size=(num_nodes, 3)) * 2)
       + rng.normal(size=(num_nodes, 1, 1)) * 2).astype(np.float32)
  return cohort._replace(batches={**cohort.batches,
                                  'x': x.astype(np.float32), 'y': y})


def global_minimiser(cohort):
  """argmin of sum_i mean_i (x w + b - y)^2 (equal node sizes)."""
  x = np.asarray(cohort.batches['x'], np.float64).reshape(-1, 3)
  feats = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  y = np.asarray(cohort.batches['y'], np.float64).reshape(-1)
  theta = np.linalg.lstsq(feats, y, rcond=None)[0]
  return {'w': theta[:3], 'b': theta[3]}


class FirstOrderTest(parameterized.TestCase):

  def test_complete_uniform_dfedavg_equals_fedavg(self, mixing='sparse'):
    n = 4
    cohort = _testing.random_cohort(n, 3, 5, seed=2)
    params = _testing.linear_params()
    gossip = decentralized.dfedavg(
        _testing.linear_loss, optax.sgd(0.05),
        topology.complete(n, mixing='uniform_degree'), mixing=mixing)
    fedavg = core.federated_algorithm(
        clients.local_sgd(_testing.linear_loss, optax.sgd(0.05)),
        aggregators.weighted_mean(), optax.sgd(1.0), weighting='uniform')
    g_state, g_store, metrics = run(gossip, params, cohort, 3, n)
    f_state = fedavg.init(params)
    for _ in range(3):
      f_state, _, f_metrics = jax.jit(fedavg.apply)(f_state, (), cohort, KEY)
    for node in range(n):
      test_utils.assert_trees_all_close(
          jax.tree.map(lambda v, i=node: v[i], g_store), f_state.params,
          atol=1e-6)
    test_utils.assert_trees_all_close(gossip.model_params(g_state, g_store),
                                      f_state.params, atol=1e-6)
    self.assertLess(float(metrics['consensus_after_mix']), 1e-10)
    np.testing.assert_allclose(metrics['train_loss'],
                               f_metrics['train_loss'], rtol=1e-5)

  def test_dfedavgm_with_zero_beta_is_dfedavg(self):
    n = 4
    cohort = _testing.random_cohort(n, 3, 4, seed=5)
    params = _testing.linear_params()
    ring = topology.ring(n)
    _, plain, _ = run(decentralized.dfedavg(_testing.linear_loss,
                                            optax.sgd(0.05), ring),
                      params, cohort, 2, n)
    _, momentum0, _ = run(decentralized.dfedavgm(_testing.linear_loss, 0.05,
                                                 ring, beta=0.),
                          params, cohort, 2, n)
    test_utils.assert_trees_all_close(momentum0, plain, atol=1e-7)

  def test_d_psgd_is_one_step_on_the_round_mean_gradient(self):
    n = 3
    cohort = _testing.random_cohort(n, 2, 4, seed=6)
    params = _testing.linear_params()
    ring = topology.ring(n)
    _, store, metrics = run(decentralized.d_psgd(_testing.linear_loss, 0.1,
                                                 ring), params, cohort, 1, n)
    # All S * B examples of node i as one batch, one step, then W.
    flat = jax.tree.map(lambda v: v.reshape((n, 1, -1) + v.shape[3:]),
                        cohort.batches)
    local = [_testing.sgd_steps(params, jax.tree.map(lambda v, i=i: v[i],
                                                     flat), 0.1)
             for i in range(n)]
    expected = topology.mix(ring.sample(KEY), jax.tree.map(
        lambda *v: jnp.stack(v), *local))
    test_utils.assert_trees_all_close(store, expected, atol=1e-6)
    self.assertEqual(float(metrics['local_steps']), 1.)

  def test_gradient_tracking_is_exact_where_d_psgd_is_biased(self):
    n, lr, rounds = 6, 0.05, 300
    cohort = heterogeneous_cohort(n)
    params = _testing.linear_params()
    ring = topology.ring(n)
    optimum = global_minimiser(cohort)

    def error(store, key):
      return max(float(np.max(np.abs(np.asarray(v) - optimum[k])))
                 for k, v in (store[key] if key else store).items())

    _, tracked, gt_metrics = run(
        decentralized.gradient_tracking(_testing.linear_loss, lr, ring),
        params, cohort, rounds, n)
    _, plain, _ = run(decentralized.d_psgd(_testing.linear_loss, lr, ring),
                      params, cohort, rounds, n)
    self.assertLess(error(tracked, 'x'), 1e-3)
    self.assertGreater(error(plain, None), 0.5)
    # The tracker's invariant: mean_i y_i = mean_i g_i (doubly stochastic W).
    test_utils.assert_trees_all_close(
        jax.tree.map(lambda v: v.mean(0), tracked['y']),
        jax.tree.map(lambda v: v.mean(0), tracked['g']), atol=1e-5)
    # x and y travel: twice the model's bytes.
    self.assertEqual(float(gt_metrics['gossip_bytes_per_node']), 32.)


BAD_CALLS = (
    ('d_psgd_lr', lambda: decentralized.d_psgd(
        _testing.linear_loss, -1., topology.ring(3)), 'lr'),
    ('gt_loss', lambda: decentralized.gradient_tracking(
        None, 0.1, topology.ring(3)), 'loss_fn'),
    ('beta', lambda: decentralized.dfedavgm(
        _testing.linear_loss, 0.1, topology.ring(3), beta=1.), 'beta'),
    ('optimizer', lambda: decentralized.dfedavg(
        _testing.linear_loss, 0.1, topology.ring(3)), 'optimizer'),
)

BadCallsTest = test_utils.bad_calls_test_case(BAD_CALLS)

if __name__ == '__main__':
  absltest.main()
