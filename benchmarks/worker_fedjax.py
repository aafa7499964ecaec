"""Benchmark worker for FedJAX 0.0.17 (runs in its own virtualenv).

FedJAX's own `fedjax.algorithms.fed_avg.federated_averaging` with its
default `for_each_client` backend (jitted init/step/final per client, a
Python loop over clients and batches), its `InMemoryFederatedData`, and
its `ShuffleRepeatBatchHParams` batching, exactly as a FedJAX user runs it.
The models are the same layers as ours, built with haiku (FedJAX's
``create_conv_model`` is the same CNN plus two dropout layers; the
benchmark leaves dropout out of every system so the arithmetic is equal).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _haiku_model(spec):
  import fedjax  # pylint: disable=g-import-not-at-top
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  num_classes = spec['num_classes']
  name = spec['model']

  def forward(batch):
    x = batch['x']
    if name == 'cnn':
      x = jax.nn.relu(hk.Conv2D(32, (3, 3), padding='VALID')(x))
      x = jax.nn.relu(hk.Conv2D(64, (3, 3), padding='VALID')(x))
      x = hk.MaxPool(window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                     padding='VALID')(x)
      x = hk.Flatten()(x)
      x = jax.nn.relu(hk.Linear(128)(x))
    elif name == 'mlp':
      x = hk.Flatten()(x)
      for size in spec.get('hidden_sizes', (64,)):
        x = jax.nn.relu(hk.Linear(size)(x))
    elif name != 'logistic':
      raise ValueError(f'unknown model {name!r}')
    return hk.Linear(num_classes)(hk.Flatten()(x))

  sample = {'x': np.zeros((1, *spec['input_shape']), np.float32),
            'y': np.zeros((1,), np.int32)}
  return fedjax.create_model_from_haiku(
      transformed_forward_pass=hk.transform(forward),
      sample_batch=sample,
      train_loss=lambda batch, preds: fedjax.metrics.unreduced_cross_entropy_loss(  # pylint: disable=line-too-long
          batch['y'], preds))


def main(spec):
  import fedjax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  x, y = _common.synthetic_data(spec)
  c, s, b = y.shape
  n = s * b
  client_data = {
      f'{i}'.encode(): {'x': x[i].reshape((n, *x.shape[3:])),
                        'y': y[i].reshape(n)} for i in range(c)}
  del x, y
  data = fedjax.InMemoryFederatedData(client_data)
  model = _haiku_model(spec)
  grad_fn = fedjax.model_grad(model)
  # One epoch of n examples in batches of b makes exactly s steps.
  hparams = fedjax.ShuffleRepeatBatchHParams(batch_size=b, num_epochs=1,
                                             seed=0)
  algorithm = fedjax.algorithms.fed_avg.federated_averaging(
      grad_fn, fedjax.optimizers.sgd(spec['lr']),
      fedjax.optimizers.sgd(spec.get('server_lr', 1.)), hparams)
  params = model.init(jax.random.PRNGKey(1))
  holder = {'state': algorithm.init(params)}
  ids = list(client_data)
  cohort = [(cid, data.get_client(cid), jax.random.PRNGKey(i))
            for i, cid in enumerate(ids)]

  def run_round(r):
    del r
    state, _ = algorithm.apply(holder['state'], cohort)
    holder['state'] = jax.block_until_ready(state)

  timing = _common.time_rounds(run_round, spec, first_includes_compile=True)
  finite = all(bool(jnp.all(jnp.isfinite(leaf)))
               for leaf in jax.tree_util.tree_leaves(holder['state'].params))
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return dict(timing, finite=finite, backend=jax.default_backend(),
              jax_version=jax.__version__,
              fedjax_version=importlib.metadata.version('fedjax'))


if __name__ == '__main__':
  _common.run_worker(main)
