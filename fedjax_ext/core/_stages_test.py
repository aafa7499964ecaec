"""The public stages: weighting, the aggregator's extra arguments, checks.

Rounds of other shapes built on the stages are tested in their packages:
`fedjax_ext.split` (client and server halves exchanging activations and
gradients in one compiled step) and `fedjax_ext.decentralized` (one model
per node in the client store, no server model).
"""

import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)


def unequal_cohort():
  """Two clients, two full local steps each, dataset sizes n = (2, 6)."""
  cohort = _testing.random_cohort(2, 2, 2, seed=3)
  return cohort._replace(num_examples=np.array([2., 6.], np.float32))


class WeightingTest(parameterized.TestCase):

  def test_fixed_steps_weigh_by_dataset_size(self):
    # Both clients process S * B = 4 examples; FedAvg (McMahan et al.) and
    # FedJAX weigh them by their dataset sizes 2 and 6, i.e. 1/4 and 3/4.
    cohort = unequal_cohort()
    params = _testing.linear_params()
    local = [_testing.sgd_steps(params, jax.tree.map(lambda v, i=i: v[i],
                                                     cohort.batches), 0.05)
             for i in range(2)]
    update = clients.local_sgd(_testing.linear_loss, optax.sgd(0.05))
    expected = {
        'num_examples': (0.25, 0.75),
        'examples_processed': (0.5, 0.5),
        'uniform': (0.5, 0.5),
    }
    for weighting, (p0, p1) in expected.items():
      algorithm = core.federated_algorithm(
          update, aggregators.weighted_mean(), optax.sgd(1.0),
          weighting=weighting)
      state, _, metrics = jax.jit(algorithm.apply)(
          algorithm.init(params), (), cohort, KEY)
      by_hand = jax.tree.map(lambda a, b: p0 * a + p1 * b, *local)
      test_utils.assert_trees_all_close(state.params, by_hand, atol=1e-6)
      self.assertAlmostEqual(float(metrics['cohort_weight']),
                             {'num_examples': 8., 'examples_processed': 8.,
                              'uniform': 2.}[weighting])

  def test_a_client_without_data_keeps_weight_zero(self):
    outputs = core.ClientOutput(update=jnp.zeros((3, 1)),
                                weight=jnp.array([4., 0., jnp.nan]),
                                client_state=(), metrics={})
    cohort = core.Cohort(np.arange(3), {}, np.array([10., 20., 30.]))
    weights = core.weigh_clients(outputs, cohort, 'num_examples').weight
    np.testing.assert_array_equal(weights[:2], [10., 0.])
    self.assertTrue(np.isnan(weights[2]))  # Rejected stays rejected.

  def test_unknown_weighting_names_the_choices(self):
    with self.assertRaisesRegex(ValueError, 'num_examples, '
                                'examples_processed, uniform'):
      core.federated_algorithm(
          clients.local_sgd(_testing.linear_loss, optax.sgd(0.1)),
          aggregators.weighted_mean(), optax.sgd(1.0), weighting='examples')


class ExtraArgsTest(absltest.TestCase):

  def test_aggregator_sees_key_state_and_info(self):
    seen = {}

    def init(params):
      del params
      return ()

    def update(updates, state, params=None, *, weights, key, server_state,
               client_info, **extra):
      del params, extra
      seen.update(round=server_state.round, info=client_info, key=key)
      return core.tree_weighted_mean(updates, weights), state

    cohort = _testing.random_cohort(3, 1, 2)
    cohort = cohort._replace(info={'rank': np.array([1., 2., 4.],
                                                    np.float32)})
    algorithm = core.federated_algorithm(
        clients.local_sgd(_testing.linear_loss, optax.sgd(0.1)),
        core.Aggregator(init, update), optax.sgd(1.0))
    algorithm.apply(algorithm.init(_testing.linear_params()), (), cohort,
                    KEY)
    np.testing.assert_array_equal(seen['info']['rank'], [1., 2., 4.])
    self.assertIn('num_examples', seen['info'])
    np.testing.assert_array_equal(
        jax.random.key_data(seen['key']),
        jax.random.key_data(core.stage_key(KEY, 0, 1)))


class CheckTest(absltest.TestCase):

  def test_bad_cohorts_and_mapped_arguments_name_the_field(self):
    good = _testing.random_cohort(3, 2, 4)
    update = clients.local_sgd(_testing.linear_loss, optax.sgd(0.1))
    algorithm = core.federated_algorithm(update, aggregators.weighted_mean(),
                                         optax.sgd(1.0))
    state = algorithm.init(_testing.linear_params())
    bad = {
        'num_examples': good._replace(num_examples=np.ones(2)),
        "info['rank']": good._replace(info={'rank': np.ones(4)}),
        "batches['mask']": good._replace(
            batches={**good.batches, 'mask': np.ones((3, 2))}),
        "batches['x']": good._replace(
            batches={**good.batches, 'x': np.ones((3, 1, 4, 3))}),
    }
    for field, cohort in bad.items():
      with self.assertRaisesRegex(ValueError, re.escape(field)):
        algorithm.apply(state, (), cohort, KEY)
    with self.assertRaisesRegex(ValueError, 'disagree on the number of '
                                r'clients: 3 \(argument 0\), 2'):
      core.map_clients(lambda a, b: a + b, jnp.ones(3), jnp.ones(2))
    with self.assertRaisesRegex(ValueError, 'weights must have shape'):
      core.tree_weighted_mean({'a': jnp.ones((3, 2))}, jnp.ones(2))


if __name__ == '__main__':
  absltest.main()
