"""The round's hooks and key derivation."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext.core import _testing

KEY = jax.random.key(0)


class HooksTest(absltest.TestCase):

  def test_transform_outputs_and_extra_metrics(self):
    seen_keys = []

    def drop_first_client(outputs, state, cohort, key):
      seen_keys.append(key)
      self.assertEqual(state.round.shape, ())
      self.assertIn('num_examples', cohort.client_info())
      return outputs._replace(weight=outputs.weight.at[0].set(0.))

    def count(outputs, aggregate, state):
      del aggregate, state
      return {'clients_with_weight': jnp.sum(outputs.weight > 0)}

    update = clients.local_sgd(_testing.linear_loss, optax.sgd(0.05))
    algorithm = core.federated_algorithm(
        update, aggregators.weighted_mean(), optax.sgd(1.0),
        transform_outputs=drop_first_client, extra_metrics=count)
    plain = core.federated_algorithm(update, aggregators.weighted_mean(),
                                     optax.sgd(1.0))
    params = _testing.linear_params()
    cohort = _testing.random_cohort(3, 2, 4)
    state, _, metrics = jax.jit(algorithm.apply)(algorithm.init(params), (),
                                                 cohort, KEY)
    only_two = cohort._replace(
        client_ids=cohort.client_ids[1:],
        batches=jax.tree.map(lambda v: v[1:], cohort.batches),
        num_examples=cohort.num_examples[1:])
    expected, _, _ = jax.jit(plain.apply)(plain.init(params), (), only_two,
                                          KEY)
    np.testing.assert_allclose(state.params['w'], expected.params['w'],
                               atol=1e-6)
    self.assertEqual(int(metrics['clients_with_weight']), 2)
    self.assertLen(seen_keys, 1)

  def test_keys_depend_on_client_id_not_position(self):
    a = core.client_keys(KEY, 3, jnp.array([5, 9]))
    b = core.client_keys(KEY, 3, jnp.array([9, 5]))
    np.testing.assert_array_equal(jax.random.key_data(a[0]),
                                  jax.random.key_data(b[1]))
    c = core.client_keys(KEY, 4, jnp.array([5]))
    self.assertFalse(np.array_equal(jax.random.key_data(a[0]),
                                    jax.random.key_data(c[0])))
    server = core.round_key(KEY, 3)
    self.assertFalse(np.array_equal(jax.random.key_data(server),
                                    jax.random.key_data(a[0])))


if __name__ == '__main__':
  absltest.main()
