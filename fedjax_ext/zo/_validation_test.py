"""Bad arguments to `fedjax_ext.zo`'s public functions: one named error each.

Every row is a call with one bad argument and a substring the message must
contain: the argument's name and, where there is one, its allowed range.
"""

import math

from absl.testing import absltest
import jax
import jax.numpy as jnp
import optax

from fedjax_ext._src import test_utils
from fedjax_ext import clients
from fedjax_ext import zo


def loss_fn(params, batch, key):
  del key
  return clients.masked_mean(jnp.sum(batch['x'] * params['w'], -1),
                             batch['mask'])


def local(batches, optimizer=None):
  optimizer = optimizer or optax.chain(zo.mezo(), optax.sgd(0.1))
  return zo.zo_train_locally({'w': jnp.ones(2)}, batches, jax.random.key(0),
                             loss_fn=loss_fn, optimizer=optimizer)


BATCHES = {'x': jnp.ones((3, 4, 2)), 'mask': jnp.ones((3, 4))}

BAD_CALLS = (
    ('mezo_epsilon_inf', lambda: zo.mezo(epsilon=math.inf),
     'epsilon must be a finite number > 0'),
    ('mezo_epsilon_zero', lambda: zo.mezo(epsilon=0.),
     'epsilon must be a finite number > 0'),
    ('mezo_epsilon_nan', lambda: zo.mezo(epsilon=math.nan),
     'epsilon must be a finite number > 0'),
    ('mezo_directions_zero', lambda: zo.mezo(num_directions=0),
     'num_directions must be >= 1'),
    ('mezo_directions_float', lambda: zo.mezo(num_directions=1.5),
     'num_directions must be an integer'),
    ('mezo_distribution', lambda: zo.mezo(distribution='uniform'),
     'distribution'),
    ('mezo_key', lambda: zo.mezo(key='seed'), 'key must be'),
    ('sparse_budget_zero', lambda: zo.sparse_zo(budget=0.),
     'budget must be'),
    ('sparse_budget_above_one', lambda: zo.sparse_zo(budget=1.5),
     'budget must be'),
    ('sparse_budget_nan', lambda: zo.sparse_zo(budget=math.nan),
     'budget must be'),
    ('sparse_epsilon_inf', lambda: zo.sparse_zo(epsilon=math.inf),
     'epsilon must be'),
    ('sparse_sampling', lambda: zo.sparse_zo(sampling='pps'), 'sampling'),
    ('sparse_score_rule', lambda: zo.sparse_zo(score_rule='x'),
     'score_rule'),
    ('sparse_min_budget_nan', lambda: zo.sparse_zo(min_budget=math.nan),
     'min_budget'),
    ('sparse_max_below_min',
     lambda: zo.sparse_zo(min_budget=0.5, max_budget=0.2), 'max_budget'),
    ('sparse_adaptive_budget_outside',
     lambda: zo.sparse_zo(budget=0.9, adaptive_budget=True),
     'budget 0.9 must lie in [min_budget, max_budget]'),
    ('sparse_uniform_mix', lambda: zo.sparse_zo(uniform_mix=1.5),
     'uniform_mix must be a finite number in [0, 1]'),
    ('sparse_adapt_every', lambda: zo.sparse_zo(adapt_every=0),
     'adapt_every must be >= 1'),
    ('sparse_score_decay_zero', lambda: zo.sparse_zo(score_decay=0.),
     'score_decay must be'),
    ('sparse_score_decay_nan', lambda: zo.sparse_zo(score_decay=math.nan),
     'score_decay must be'),
    ('sparse_scale_decay', lambda: zo.sparse_zo(scale_decay=2.),
     'scale_decay must be'),
    ('sparse_score_init', lambda: zo.sparse_zo(score_init=-1.),
     'score_init must be'),
    ('sparse_scale_init', lambda: zo.sparse_zo(scale_init=0.),
     'scale_init must be'),
    ('sparse_budget_momentum', lambda: zo.sparse_zo(budget_momentum=1.),
     'budget_momentum must be'),
    ('sparse_support_weight', lambda: zo.sparse_zo(support_weight=-0.1),
     'support_weight must be'),
    ('sparse_sharpness_weight',
     lambda: zo.sparse_zo(sharpness_weight=math.inf), 'sharpness_weight'),
    ('curvzo_budget', lambda: zo.curvzo(budget=1.5), 'budget'),
    ('pps_weights_2d',
     lambda: zo.poisson_pps_probs(jnp.ones((2, 2)), 1.), 'weights must be'),
    ('pps_budget_negative',
     lambda: zo.poisson_pps_probs(jnp.ones(3), -1.), 'budget must be'),
    ('support_scores_2d',
     lambda: zo.effective_support(jnp.ones((2, 2))), 'scores must be'),
    ('adapt_scores_2d',
     lambda: zo.adapt_budget(jnp.ones((2, 2)), 0.5), 'scores must be'),
    ('adapt_min_above_max',
     lambda: zo.adapt_budget(jnp.ones(3), 0.5, min_fraction=0.9,
                             max_fraction=0.1), 'max_fraction'),
    ('adapt_momentum', lambda: zo.adapt_budget(jnp.ones(3), 0.5,
                                               momentum=1.5), 'momentum'),
    ('seed_bytes_steps', lambda: zo.seed_upload_bytes(-1), 'num_steps'),
    ('seed_bytes_directions', lambda: zo.seed_upload_bytes(2, 0),
     'num_directions'),
    ('sampler_bytes_blocks', lambda: zo.sampler_bytes(0), 'num_blocks'),
    ('zo_local_upload',
     lambda: zo.zo_local(loss_fn, optax.sgd(0.1), upload='grads'), 'upload'),
    ('zo_local_loss_fn', lambda: zo.zo_local(None, optax.sgd(0.1)),
     'loss_fn must be callable'),
    ('zo_local_optimizer', lambda: zo.zo_local(loss_fn, 0.1),
     'optimizer must be'),
    ('zo_fed_avg_upload',
     lambda: zo.zo_fed_avg(loss_fn, optax.sgd(0.1), optax.sgd(1.),
                           upload='x'), 'upload'),
    ('train_locally_no_mask',
     lambda: local({'x': jnp.ones((3, 4, 2))}), "batches must have a 'mask'"),
    ('train_locally_mask_shape',
     lambda: local({'x': jnp.ones((3, 4, 2)), 'mask': jnp.ones((3,))}),
     'mask'),
    ('train_locally_leaf_shape',
     lambda: local({'x': jnp.ones((2, 4, 2)), 'mask': jnp.ones((3, 4))}),
     "batches['x']"),
    ('train_locally_no_estimator',
     lambda: local(BATCHES, optimizer=optax.sgd(0.1)),
     'Expected exactly one ZO estimator'),
    ('reseed_no_estimator',
     lambda: zo.projected_grads(optax.sgd(0.1).init({'w': jnp.ones(2)})),
     'Expected exactly one ZO estimator'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
