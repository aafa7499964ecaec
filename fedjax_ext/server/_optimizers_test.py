"""Server optimizers against Reddi et al. (2021), Algorithm 2, by hand."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import server


class FedOptTest(parameterized.TestCase):

  @parameterized.parameters('adagrad', 'adam', 'yogi')
  def test_two_steps_by_hand(self, variant):
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    tx = server.server_optimizer('fed' + variant, lr, b1=b1, b2=b2, tau=tau)
    params = {'w': jnp.array([1., -2.])}
    state = tx.init(params)
    m, v = np.zeros(2), np.full(2, tau**2)
    x = np.array([1., -2.])
    update = jax.jit(tx.update)
    for g in (np.array([0.5, -1.]), np.array([0.2, 0.3])):
      m = b1 * m + (1 - b1) * g
      if variant == 'adagrad':
        v = v + g**2
      elif variant == 'adam':
        v = b2 * v + (1 - b2) * g**2
      else:
        v = v - (1 - b2) * g**2 * np.sign(v - g**2)
      x = x - lr * m / (np.sqrt(v) + tau)
      steps, state = update({'w': jnp.asarray(g, jnp.float32)}, state, params)
      params = jax.tree.map(jnp.add, params, steps)
    np.testing.assert_allclose(params['w'], x, rtol=1e-5)

  def test_fedavg_is_sgd(self):
    tx = server.server_optimizer('fedavg', 1.0)
    steps, _ = tx.update({'w': jnp.array([2.])}, tx.init({'w': jnp.zeros(1)}))
    np.testing.assert_allclose(steps['w'], [-2.])

  def test_unknown_names_list_choices(self):
    with self.assertRaisesRegex(ValueError, 'fedavg, fedavgm, fedadagrad'):
      server.server_optimizer('fedlamb', 1.0)
    with self.assertRaisesRegex(ValueError, 'adagrad, adam, yogi'):
      server.scale_by_fedopt('lamb')


if __name__ == '__main__':
  absltest.main()
