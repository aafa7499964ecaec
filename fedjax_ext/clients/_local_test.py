"""`run_local_steps` on a conv model: executions give the same round."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext._src import test_utils

C, S, B = 3, 3, 4


def cnn_cohort():
  """A tiny EMNIST-shaped CNN (8x8 images) and a cohort with padding."""
  model = models.create_model('cnn', num_classes=5)
  rng = np.random.default_rng(0)
  mask = np.ones((C, S, B), np.float32)
  mask[1, 2] = 0.  # Client 1 has one batch fewer: a skipped step.
  mask[2, 1, 1:] = 0.
  batches = {'x': jnp.asarray(rng.normal(size=(C, S, B, 8, 8, 1)),
                              jnp.float32),
             'y': jnp.asarray(rng.integers(0, 5, (C, S, B)), jnp.int32),
             'mask': jnp.asarray(mask)}
  params = model.init(jax.random.key(0), batches['x'][0, 0])['params']
  return model, params, batches


class LocalStepsExecutionTest(absltest.TestCase):

  def test_rolled_sequential_round_equals_vmap(self):
    model, params, batches = cnn_cohort()
    update = clients.local_sgd(clients.classification_loss(model),
                               optax.sgd(0.1))
    keys = jax.random.split(jax.random.key(1), C)

    def round_outputs(execution):
      return jax.jit(lambda p, b, k: core.map_clients(
          update, p, (), b, k, in_axes=(None, None, 0, 0),
          execution=execution))(params, batches, keys)

    # `auto`'s choice for large models on CPU: clients in lax.map, rolled
    # local steps with canonical convolutions.
    rolled = round_outputs(core.Execution('sequential', unroll=1))
    # The vmap of rolled steps: grouped convolutions, no canonical rewrite
    # needed by XLA, a different program computing the same round.
    test_utils.assert_trees_all_close(
        rolled, round_outputs(core.Execution('vmap', unroll=1)),
        atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(rolled.metrics['local_steps'], [3, 2, 3])
    np.testing.assert_array_equal(rolled.weight, [12, 8, 9])


if __name__ == '__main__':
  absltest.main()
