"""Bad arguments to `fedjax_ext.drift`: one error naming the argument each."""

import math

from absl.testing import absltest
import jax
import jax.numpy as jnp
import optax

from fedjax_ext._src import test_utils
from fedjax_ext import algorithms
from fedjax_ext import drift


def loss_fn(params, batch, key):
  del key
  return jnp.sum(params['w'] * batch['x']), {}


ALGORITHM = algorithms.fed_avg(loss_fn, optax.sgd(0.1), optax.sgd(1.))
STACKED = {'w': jnp.ones((3, 2))}


def stats(batches):
  fn = drift.client_gradient_stats(loss_fn)
  return fn({'w': jnp.ones(2)}, batches, jax.random.key(0))


BAD_CALLS = (
    ('instrument_lr_zero',
     lambda: drift.instrument(ALGORITHM, loss_fn, learning_rate=0.),
     'learning_rate must be a finite number > 0'),
    ('instrument_lr_negative',
     lambda: drift.instrument(ALGORITHM, loss_fn, learning_rate=-0.1),
     'learning_rate must be'),
    ('instrument_lr_nan',
     lambda: drift.instrument(ALGORITHM, loss_fn, learning_rate=math.nan),
     'learning_rate must be'),
    ('instrument_weighting',
     lambda: drift.instrument(ALGORITHM, loss_fn, learning_rate=0.1,
                              weighting='bogus'), 'weighting'),
    ('instrument_algorithm',
     lambda: drift.instrument(optax.sgd(1.), loss_fn, learning_rate=0.1),
     'algorithm must be a core.FederatedAlgorithm'),
    ('instrument_loss_fn',
     lambda: drift.instrument(ALGORITHM, None, learning_rate=0.1),
     'loss_fn must be callable'),
    ('instrument_select',
     lambda: drift.instrument(ALGORITHM, loss_fn, learning_rate=0.1,
                              select='w'), 'select must be'),
    ('drift_metrics_select', lambda: drift.drift_metrics(select=3),
     'select must be'),
    ('stats_no_mask', lambda: stats({'x': jnp.ones((2, 4, 2))}),
     "batches must have a 'mask'"),
    ('stats_cohort_axis',
     lambda: stats({'x': jnp.ones((3, 2, 4, 2)), 'mask': jnp.ones((3, 2, 4))}),
     "batches['mask'] must be [S, B]"),
    ('stats_leaf_mismatch',
     lambda: stats({'x': jnp.ones((3, 4, 2)), 'mask': jnp.ones((2, 4))}),
     "batches['x'] must have leading axes [S, B] = [2, 4]"),
    ('flatten_empty', lambda: drift.flatten_clients({}),
     'stacked must be a non-empty pytree'),
    ('flatten_mismatched_clients',
     lambda: drift.flatten_clients({'a': jnp.ones((3, 2)),
                                    'b': jnp.ones((4,))}),
     'leading client axis'),
    ('normalized_weights_2d',
     lambda: drift.normalized_weights(jnp.ones((2, 2))), 'weights must be'),
    ('update_metrics_weights_count',
     lambda: drift.update_metrics(STACKED, jnp.ones(4)),
     'weights must be one value per client, shape [3]'),
    ('update_metrics_eps',
     lambda: drift.update_metrics(STACKED, jnp.ones(3), eps=-1.), 'eps'),
    ('dissimilarity_weights_count',
     lambda: drift.gradient_dissimilarity(STACKED, jnp.ones(2)),
     'weights must be one value per client'),
    ('bound_lr_nan',
     lambda: drift.drift_bound(math.nan, jnp.ones(3), jnp.ones(3),
                               jnp.ones(3), jnp.ones(3)), 'learning_rate'),
    ('bound_shapes',
     lambda: drift.drift_bound(0.1, jnp.ones(3), jnp.ones(2), jnp.ones(3),
                               jnp.ones(3)), 'noise_var must be'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
