"""Bad arguments to `fedjax_ext.clients`: one error naming the argument each."""

import math

from absl.testing import absltest
import jax
import jax.numpy as jnp
import optax

from fedjax_ext._src import test_utils
from fedjax_ext import clients


def loss_fn(params, batch, key):
  del key
  return clients.masked_mean(jnp.sum(batch['x'] * params['w'], -1),
                             batch['mask']), {}


def train(batches, **kwargs):
  args = dict(loss_fn=loss_fn, optimizer=optax.sgd(0.1))
  args.update(kwargs)
  return clients.train_locally({'w': jnp.ones(2)}, batches,
                               jax.random.key(0), **args)


def run(batches, step_fn=lambda p, s, b, k: (p, s, 0., {}, ())):
  return clients.run_local_steps({'w': jnp.ones(2)}, (), batches,
                                 jax.random.key(0), step_fn)


BATCHES = {'x': jnp.ones((3, 4, 2)), 'mask': jnp.ones((3, 4))}

BAD_CALLS = (
    ('local_sgd_prox_nan',
     lambda: clients.local_sgd(loss_fn, optax.sgd(0.1), prox_mu=math.nan),
     'prox_mu must be a finite number >= 0'),
    ('local_sgd_prox_negative',
     lambda: clients.local_sgd(loss_fn, optax.sgd(0.1), prox_mu=-1.),
     'prox_mu must be'),
    ('local_sgd_prox_inf',
     lambda: clients.local_sgd(loss_fn, optax.sgd(0.1), prox_mu=math.inf),
     'prox_mu must be'),
    ('local_sgd_loss_fn', lambda: clients.local_sgd(None, optax.sgd(0.1)),
     'loss_fn must be callable'),
    ('local_sgd_optimizer', lambda: clients.local_sgd(loss_fn, 0.1),
     'optimizer must be an optax GradientTransformation'),
    ('train_prox_nan', lambda: train(BATCHES, prox_mu=math.nan), 'prox_mu'),
    ('train_optimizer', lambda: train(BATCHES, optimizer='sgd'),
     'optimizer must be'),
    ('train_no_mask', lambda: train({'x': jnp.ones((3, 4, 2))}),
     "batches must have a 'mask' column"),
    ('train_not_dict', lambda: train([jnp.ones((3, 4))]),
     "batches must have a 'mask' column"),
    ('train_mask_1d', lambda: train({'x': jnp.ones((3, 4, 2)),
                                     'mask': jnp.ones(12)}),
     "batches['mask'] must be [S, B]"),
    ('train_cohort_axis',
     lambda: train({'x': jnp.ones((5, 3, 4, 2)), 'mask': jnp.ones((5, 3, 4))}),
     'core.map_clients'),
    ('train_leaf_steps_mismatch',
     lambda: train({'x': jnp.ones((2, 4, 2)), 'mask': jnp.ones((3, 4))}),
     "batches['x'] must have leading axes [S, B] = [3, 4]"),
    ('train_leaf_batch_mismatch',
     lambda: train({'x': jnp.ones((3, 5, 2)), 'mask': jnp.ones((3, 4))}),
     "batches['x']"),
    ('run_step_fn', lambda: run(BATCHES, step_fn=None),
     'step_fn must be callable'),
    ('run_no_mask', lambda: run({'x': jnp.ones((3, 4, 2))}),
     "batches must have a 'mask'"),
    ('masked_mean_shapes',
     lambda: clients.masked_mean(jnp.ones(4), jnp.ones(3)), 'mask'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
