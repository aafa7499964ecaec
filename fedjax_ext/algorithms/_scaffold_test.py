"""SCAFFOLD against a hand-written reference of Karimireddy et al., Alg. 1."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import core
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)
LR = 0.05


def reference_round(x, c, controls, cohort, num_clients):
  """SCAFFOLD option II written out with Python loops."""
  grad = jax.grad(lambda p, b: _testing.linear_loss(p, b, None)[0])
  ys, new_controls = [], []
  for i, client in enumerate(cohort.client_ids):
    y, ci = x, controls[client]
    steps = cohort.batches['x'].shape[1]
    for s in range(steps):
      batch = jax.tree.map(lambda v: v[i, s], cohort.batches)
      y = jax.tree.map(lambda p, g, a, b: p - LR * (g - a + b), y,
                       grad(y, batch), ci, c)
    ys.append(y)
    new_controls.append(jax.tree.map(
        lambda a, b, xx, yy: a - b + (xx - yy) / (steps * LR), ci, c, x, y))
  x_new = jax.tree.map(lambda *leaves: sum(leaves) / len(leaves), *ys)
  c_new = jax.tree.map(
      lambda cc, *d: cc + sum(d) / num_clients, c,
      *[jax.tree.map(jnp.subtract, new_controls[k],
                     controls[cohort.client_ids[k]])
        for k in range(len(ys))])
  return x_new, c_new, new_controls


class ScaffoldTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.params = _testing.linear_params()
    self.algorithm = algorithms.scaffold(
        _testing.linear_loss, LR, optax.sgd(1.0), num_clients=5)
    self.apply = jax.jit(self.algorithm.apply)

  def test_first_round_equals_fedavg(self):
    cohort = _testing.random_cohort(3, 4, 5)
    state = self.algorithm.init(self.params)
    store = core.tree_broadcast(self.algorithm.init_client_state(self.params),
                                5)
    state, _, _ = self.apply(state, store, cohort, KEY)
    fedavg = algorithms.fed_avg(_testing.linear_loss, optax.sgd(LR),
                                optax.sgd(1.0))
    avg_state, _, _ = jax.jit(fedavg.apply)(fedavg.init(self.params), (),
                                            cohort, KEY)
    test_utils.assert_trees_all_close(state.params, avg_state.params,
                                      atol=1e-6)

  def test_two_rounds_match_reference(self):
    store = core.tree_broadcast(self.algorithm.init_client_state(self.params),
                                5)
    state = self.algorithm.init(self.params)
    x, c = self.params, optax.tree.zeros_like(self.params)
    controls = [optax.tree.zeros_like(self.params) for _ in range(5)]
    for r, ids in enumerate(([0, 2, 4], [1, 2, 3])):
      cohort = _testing.random_cohort(3, 3, 4, seed=r)._replace(
          client_ids=np.array(ids, np.int32))
      state, store, _ = self.apply(state, store, cohort, KEY)
      x, c, new = reference_round(x, c, controls, cohort, 5)
      for k, client in enumerate(ids):
        controls[client] = new[k]
      test_utils.assert_trees_all_close(state.params, x, atol=1e-5)
      test_utils.assert_trees_all_close(state.algorithm_state, c, atol=1e-5)
      stacked = jax.tree.map(lambda *v: jnp.stack(v), *controls)
      test_utils.assert_trees_all_close(store, stacked, atol=1e-5)
    # Client 2 took part in both rounds: its control moved.
    self.assertGreater(float(optax.tree.norm(
        jax.tree.map(lambda v: v[2], store))), 0.)

  def test_unsampled_clients_keep_their_control(self):
    store = core.tree_broadcast(self.algorithm.init_client_state(self.params),
                                5)
    cohort = _testing.random_cohort(2, 2, 3)._replace(
        client_ids=np.array([1, 3], np.int32))
    _, store, _ = self.apply(self.algorithm.init(self.params), store, cohort,
                             KEY)
    for client in (0, 2, 4):
      self.assertEqual(float(optax.tree.norm(
          jax.tree.map(lambda v: v[client], store))), 0.)


if __name__ == '__main__':
  absltest.main()
