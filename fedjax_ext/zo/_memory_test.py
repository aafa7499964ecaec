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


if __name__ == '__main__':
  absltest.main()
