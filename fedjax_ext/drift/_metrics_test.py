"""Drift metrics against NumPy references on hand-made client updates."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import drift

# Three clients' updates of a two-leaf model, and a fourth that saw no data.
UPDATES = {'a': np.array([[1., 0.], [0., 1.], [2., 2.], [9., 9.]],
                         np.float32),
           'b': np.array([[1.], [-1.], [0.], [9.]], np.float32)}
WEIGHTS = np.array([1., 1., 2., 0.], np.float32)


def numpy_reference(updates, weights):
  d = np.concatenate([updates['a'], updates['b']], axis=1).astype(np.float64)
  active = weights > 0
  p = weights / weights.sum()
  mean = p @ d
  dev = ((d - mean) ** 2).sum(1)
  cos = d @ mean / (np.linalg.norm(d, axis=1) * np.linalg.norm(mean))
  return {
      'drift_sq_dist': p @ (d ** 2).sum(1),
      'client_drift': dev[active].mean(),
      'update_variance': p @ dev,
      'relative_update_variance': (p @ dev) / (mean ** 2).sum(),
      'update_cosine_mean': cos[active].mean(),
      'update_cosine_min': cos[active].min(),
      'mean_update_sq_norm': (mean ** 2).sum(),
  }


class UpdateMetricsTest(parameterized.TestCase):

  def test_hand_made_values(self):
    # By hand: p = (1/4, 1/4, 1/2) and |d_i|^2 = 2, 2, 8, so
    # D = 2/4 + 2/4 + 8/2 = 5; the mean update is (1.25, 1.25, 0).
    got = jax.jit(drift.update_metrics)(UPDATES, WEIGHTS)
    self.assertAlmostEqual(float(got['drift_sq_dist']), 5., places=5)
    expected = numpy_reference(UPDATES, WEIGHTS)
    self.assertEqual(set(got), set(drift.UPDATE_METRICS))
    for name, value in expected.items():
      with self.subTest(name):
        self.assertAlmostEqual(float(got[name]), value, places=5)

  def test_identical_clients_have_zero_drift(self):
    same = {'a': np.tile([[0.5, -2.]], (3, 1)).astype(np.float32)}
    got = drift.update_metrics(same, np.array([1., 3., 2.]))
    self.assertEqual(float(got['client_drift']), 0.)
    self.assertEqual(float(got['update_variance']), 0.)
    self.assertAlmostEqual(float(got['update_cosine_min']), 1., places=6)
    self.assertAlmostEqual(float(got['drift_sq_dist']), 4.25, places=5)
    g = drift.gradient_dissimilarity(same, np.ones(3))
    self.assertEqual(float(g['zeta_sq']), 0.)
    self.assertAlmostEqual(float(g['b_dissimilarity_sq']), 1., places=6)

  def test_gradient_dissimilarity_against_numpy(self):
    got = jax.jit(drift.gradient_dissimilarity)(UPDATES, WEIGHTS)
    d = np.concatenate([UPDATES['a'], UPDATES['b']], 1).astype(np.float64)
    p = WEIGHTS / WEIGHTS.sum()
    mean = p @ d
    zeta = p @ ((d - mean) ** 2).sum(1)
    self.assertAlmostEqual(float(got['zeta_sq']), zeta, places=5)
    self.assertAlmostEqual(float(got['grad_sq_norm']), (mean ** 2).sum(),
                           places=5)
    # B^2 = 1 + zeta^2 / |grad f|^2.
    self.assertAlmostEqual(float(got['b_dissimilarity_sq']),
                           1 + zeta / (mean ** 2).sum(), places=5)

  def test_opposite_gradients_have_infinite_b(self):
    grads = {'a': np.array([[1., 0.], [-1., 0.]], np.float32)}
    got = drift.gradient_dissimilarity(grads, np.ones(2))
    self.assertEqual(float(got['grad_sq_norm']), 0.)
    self.assertEqual(float(got['zeta_sq']), 1.)
    self.assertTrue(np.isinf(float(got['b_dissimilarity_sq'])))

  def test_drift_bound_by_hand(self):
    # p = (1/3, 2/3); eta^2 = 0.01;
    # client 0: 5*2*0.01*1 + 30*4*0.01*3 = 0.1 + 3.6 = 3.7;
    # client 1: 5*1*0.01*0 + 30*1*0.01*6 = 1.8.
    bound = drift.drift_bound(0.1, jnp.array([2., 1.]), jnp.array([1., 0.]),
                              jnp.array([3., 6.]), jnp.array([1., 2.]))
    self.assertAlmostEqual(float(bound), 3.7 / 3 + 2 * 1.8 / 3, places=5)


if __name__ == '__main__':
  absltest.main()
