"""Compiled memory of a ZO step vs forward-only evaluation and backprop."""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_ext import zo


class DeepMLP(nn.Module):
  """Batch-heavy: activations [4096, 128] dwarf its 0.35 MB of params."""

  @nn.compact
  def __call__(self, x):
    for _ in range(6):
      x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


def temp_bytes(fn, *args) -> int:
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


class MemoryTest(absltest.TestCase):

  def test_zo_step_has_inference_memory(self):
    model, batch = DeepMLP(), 4096
    x = jnp.ones((batch, 32))
    y = jnp.zeros((batch,), jnp.int32)
    params = model.init(jax.random.key(0), x[:1])['params']

    def loss(p, x, y):
      logits = model.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             y).mean()

    tx = optax.chain(zo.curvzo(), optax.sgd(1e-3))

    def zo_step(p, s, x, y):
      updates, s = tx.update(None, s, p, obj_fn=lambda q: loss(q, x, y))
      return optax.apply_updates(p, updates), s

    def backprop_step(p, x, y):
      grads = jax.grad(loss)(p, x, y)
      return jax.tree.map(lambda w, g: w - 1e-3 * g, p, grads)

    forward = temp_bytes(loss, params, x, y)
    step = temp_bytes(zo_step, params, tx.init(params), x, y)
    backprop = temp_bytes(backprop_step, params, x, y)
    self.assertGreater(forward, 10 * zo.upload_bytes(params))  # Batch-heavy.
    self.assertLessEqual(step, 1.2 * forward)
    self.assertLess(step, 0.5 * backprop)
    # The federated client: the same step inside the shared local loop
    # (`clients.run_local_steps`), S = 2 batches. The loop adds only
    # parameter-sized carries (params, momentum-free optimizer state, the
    # masked-step select), never a second forward pass's activations.
    batches = {'x': jnp.stack([x, x]), 'y': jnp.stack([y, y]),
               'mask': jnp.ones((2, batch))}
    local = lambda p, b, k: zo.zo_train_locally(
        p, b, k, loss_fn=lambda q, bt, _: (loss(q, bt['x'], bt['y']), {}),
        optimizer=tx, sampler=zo.sampler_state(tx.init(p)), unroll=1).params
    client = temp_bytes(local, params, batches, jax.random.key(0))
    self.assertLessEqual(client, 1.2 * forward + 4 * zo.upload_bytes(params))
    self.assertLess(client, 0.5 * backprop)


if __name__ == '__main__':
  absltest.main()
