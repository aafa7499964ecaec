"""Every algorithm builder forwards every hook of the round.

The table lists each public builder with the arguments it needs; every row
is built with the same hooks (a weighting, an output transform, an extra
metric, an execution policy) and must show each one in its round: the
transform ran with the server state, the metric is reported, the weighting
changed the aggregation weights, and the clients were mapped with the
given policy. (The bug this pins: `fed_avg` once accepted
``extra_metrics`` and dropped it.)
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import core
from fedjax_ext import zo
from fedjax_ext.core import _map
from fedjax_ext.core import _testing

LOSS = _testing.linear_loss
SERVER = optax.sgd(1.0)


def _zo_optimizer():
  return optax.chain(zo.mezo(key=0), optax.sgd(1e-3))


BUILDERS = {
    'fed_avg': lambda **h: algorithms.fed_avg(LOSS, optax.sgd(0.05),
                                              SERVER, **h),
    'fedprox': lambda **h: algorithms.fed_avg(LOSS, optax.sgd(0.05), SERVER,
                                              prox_mu=0.1, **h),
    'scaffold': lambda **h: algorithms.scaffold(LOSS, 0.05, SERVER,
                                                num_clients=4, **h),
    **{f'create_algorithm:{name}': (
        lambda name=name, **h: algorithms.create_algorithm(
            name, LOSS, client_learning_rate=0.05, server_learning_rate=0.1,
            num_clients=4, **h)) for name in algorithms.ALGORITHMS},
    'robust_fedavg': lambda **h: byzantine.robust_algorithm(
        LOSS, aggregators.coordinate_median(), SERVER, mode='fedavg',
        client_optimizer=optax.sgd(0.05), momentum=0.5, **h),
    'robust_dsgd': lambda **h: byzantine.robust_algorithm(
        LOSS, aggregators.weighted_mean(), optax.sgd(0.1), mode='dsgd', **h),
    'zo_delta': lambda **h: zo.zo_fed_avg(LOSS, _zo_optimizer(), SERVER,
                                          upload='delta', **h),
    'zo_seeds': lambda **h: zo.zo_fed_avg(LOSS, _zo_optimizer(), SERVER,
                                          upload='seeds', **h),
}


def cohort_with_unequal_sizes():
  cohort = _testing.random_cohort(3, 2, 4, seed=5)
  return cohort._replace(client_ids=np.array([0, 2, 3], np.int32),
                         num_examples=np.array([8., 40., 100.], np.float32))


class BuildersForwardHooksTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in BUILDERS])
  def test_every_hook_reaches_the_round(self, name):
    seen = {}
    executions = []
    real_map = _map.map_clients

    def spy_map(fn, *args, execution=None, **kwargs):
      executions.append(_map.as_execution(execution))
      return real_map(fn, *args, execution=execution, **kwargs)

    def transform(outputs, state, cohort, key):
      del key
      seen['weights'] = outputs.weight
      seen['round'] = state.round
      seen['info'] = cohort.client_info()
      return outputs

    def extra(outputs, aggregate, state):
      del outputs, aggregate, state
      return {'hook_marker': jnp.float32(7.)}

    execution = core.Execution('sequential', unroll=2)
    self.enter_context(absltest.mock.patch.object(_map, 'map_clients',
                                                  spy_map))
    algorithm = BUILDERS[name](weighting='uniform',
                               transform_outputs=transform,
                               extra_metrics=extra, execution=execution)
    params = _testing.linear_params()
    store = core.tree_broadcast(algorithm.init_client_state(params), 4)
    _, _, metrics = algorithm.apply(algorithm.init(params), store,
                                    cohort_with_unequal_sizes(),
                                    jax.random.key(0))
    self.assertEqual(float(metrics['hook_marker']), 7.)
    self.assertEqual(int(seen['round']), 0)
    np.testing.assert_array_equal(seen['info']['num_examples'],
                                  [8., 40., 100.])
    # 'uniform': every client that trained weighs 1 (not its n_k).
    np.testing.assert_array_equal(seen['weights'], [1., 1., 1.])
    self.assertTrue(executions)
    for used in executions:
      self.assertEqual(used.strategy, 'sequential')

  @parameterized.named_parameters(*[(name, name) for name in BUILDERS])
  def test_default_weighting_is_dataset_size(self, name):
    seen = {}

    def transform(outputs, state, cohort, key):
      del state, cohort, key
      seen['weights'] = outputs.weight
      return outputs

    kwargs = {}
    if name.startswith('robust'):  # Robust rules default to uniform.
      kwargs['weighting'] = 'num_examples'
    algorithm = BUILDERS[name](transform_outputs=transform, **kwargs)
    params = _testing.linear_params()
    store = core.tree_broadcast(algorithm.init_client_state(params), 4)
    algorithm.apply(algorithm.init(params), store,
                    cohort_with_unequal_sizes(), jax.random.key(0))
    np.testing.assert_array_equal(seen['weights'], [8., 40., 100.])


if __name__ == '__main__':
  absltest.main()
