"""Bad arguments to `fedjax_ext.isr`: one error naming the argument each."""

import math

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext._src import test_utils
from fedjax_ext import algorithms
from fedjax_ext import isr
from fedjax_ext import models


def loss_fn(params, batch, key):
  del key
  return jnp.sum(params['w'] * batch['x']), {}


ALGORITHM = algorithms.fed_avg(loss_fn, optax.sgd(0.1), optax.sgd(1.))
MLP = models.create_model('mlp', num_classes=3, hidden_sizes=(4,))
POINTS = isr.isr_points(['hidden_0'])
EXAMPLES = {'x': np.zeros((6, 2), np.float32), 'y': np.zeros(6, np.int32)}
CLIENTS = [np.arange(3), np.arange(3, 6)]

BAD_CALLS = (
    ('points_negative_weight',
     lambda: isr.isr_points(['hidden_0'], mi_weight=-1.),
     'mi_weight must be a finite number >= 0'),
    ('points_nan_weight',
     lambda: isr.isr_points(['hidden_0'], ne_weight=math.nan),
     'ne_weight must be'),
    ('points_string', lambda: isr.isr_points('hidden_0'),
     'names must be a sequence of submodule names'),
    ('points_repeated', lambda: isr.isr_points(['hidden_0', 'hidden_0']),
     'names must not repeat'),
    ('loss_ne_over', lambda: isr.isr_loss(MLP, POINTS, ne_over='batch'),
     'ne_over'),
    ('init_num_classes',
     lambda: isr.init_isr(MLP, jax.random.key(0), jnp.zeros((1, 2)), POINTS,
                          num_classes=0), 'num_classes must be >= 1'),
    ('init_unknown_point',
     lambda: isr.init_isr(MLP, jax.random.key(0), jnp.zeros((1, 2)),
                          isr.isr_points(['conv9']), num_classes=3),
     "ISR point 'conv9'"),
    ('centralized_lr_zero', lambda: isr.centralized(loss_fn, 0.),
     'learning_rate must be a finite number > 0'),
    ('centralized_lr_nan', lambda: isr.centralized(loss_fn, math.nan),
     'learning_rate must be'),
    ('hybrid_cloud_weight',
     lambda: isr.hybrid(ALGORITHM, loss_fn, learning_rate=0.1,
                        cloud_weight=1.5), 'cloud_weight must be'),
    ('hybrid_cloud_weight_nan',
     lambda: isr.hybrid(ALGORITHM, loss_fn, learning_rate=0.1,
                        cloud_weight=math.nan), 'cloud_weight must be'),
    ('hybrid_lr', lambda: isr.hybrid(ALGORITHM, loss_fn, learning_rate=-1.,
                                     cloud_weight=0.5), 'learning_rate'),
    ('pooled_no_members',
     lambda: isr.pooled_cohort(EXAMPLES, CLIENTS, [], batch_size=2,
                               num_steps=1, seed=0, round_num=0),
     'members must be a non-empty list'),
    ('pooled_member_out_of_range',
     lambda: isr.pooled_cohort(EXAMPLES, CLIENTS, [2], batch_size=2,
                               num_steps=1, seed=0, round_num=0),
     'members must be'),
    ('pooled_batch_zero',
     lambda: isr.pooled_cohort(EXAMPLES, CLIENTS, [0], batch_size=0,
                               num_steps=1, seed=0, round_num=0),
     'batch_size must be >= 1'),
    ('hybrid_cohort_steps_zero',
     lambda: isr.hybrid_cohort(EXAMPLES, CLIENTS, np.array([1]), [0],
                               batch_size=2, num_steps=0, seed=0,
                               round_num=0), 'num_steps must be >= 1'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
