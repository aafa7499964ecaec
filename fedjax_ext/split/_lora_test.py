"""SplitLoRA: split forward = unsplit model, one step = centralized LoRA."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext import lora
from fedjax_ext import pretrained
from fedjax_ext._src import test_utils
from fedjax_ext.split import _lora
from fedjax_ext.split import _round

ENCODER = pretrained.MiniLM(num_layers=3, hidden_size=16, num_heads=2,
                            intermediate_size=32, vocab_size=50,
                            max_positions=16)
FIRST, CUT, ALPHA, RANK, K, T = 1, 2, 8., 2, 3, 6
HIDDEN = ENCODER.hidden_size
TARGETS = r'layer_[1-2]/attention/(query|value)/kernel'
CONFIG = lora.LoRAConfig(TARGETS, RANK, ALPHA, jax.random.key(3),
                         dense_targets='head/.*')
KEY = jax.random.key(0)


def _params():
  ids = jnp.ones((1, T), jnp.int32)
  params = dict(ENCODER.init(jax.random.key(1), ids, ids)['params'])
  params['head'] = {
      'kernel': jax.random.normal(jax.random.key(2), (HIDDEN, K)) / 4.,
      'bias': jnp.zeros((K,))}
  return params


PARAMS = _params()
TOP = _lora.top_params(PARAMS, first=FIRST, num_layers=ENCODER.num_layers)


def tokens(shape, seed=0):
  """Token ids and attention masks [..., T] with varied lengths."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, ENCODER.vocab_size, size=shape + (T,))
  lengths = rng.integers(2, T + 1, size=shape)
  mask = (np.arange(T) < lengths[..., None]).astype(np.int32)
  return (ids * mask).astype(np.int32), mask


@jax.jit
def features(ids, mask):
  """The frozen-prefix cache [..., T, H + 1] (experiments/lora.py's)."""
  lead = ids.shape[:-1]
  h = ENCODER.apply({'params': PARAMS}, FIRST, ids.reshape(-1, T),
                    mask.reshape(-1, T),
                    method=pretrained.MiniLM.hidden_states_up_to)
  x = jnp.concatenate([h, mask.reshape(-1, T, 1).astype(h.dtype)], -1)
  return x.reshape(lead + x.shape[1:])


def cohort(num_clients, num_steps, batch_size=4, seed=0):
  rng = np.random.default_rng(seed + 1)
  shape = (num_clients, num_steps, batch_size)
  x = features(*tokens(shape, seed))
  return core.Cohort(
      np.arange(num_clients, dtype=np.int32),
      {'x': x, 'y': rng.integers(0, K, size=shape).astype(np.int32),
       'mask': np.ones(shape, np.float32)},
      np.full((num_clients,), 4. * num_steps, np.float32))


def top_forward(merged, x):
  """The unsplit model (CachedTop): layers [FIRST, L), mean pool, head."""
  layers = {k: v for k, v in merged.items() if k != 'head'}
  h = ENCODER.apply({'params': layers}, FIRST, x[..., :-1], x[..., -1],
                    method=pretrained.MiniLM.forward_from)
  head = merged['head']
  return pretrained.mean_pool(h, x[..., -1]) @ head['kernel'] + head['bias']


def random_b(trainable, seed):
  """Nonzero B's, so that the A's get gradients too."""
  keys = iter(jax.random.split(jax.random.key(seed), 64))
  return trainable._replace(adapters={
      p: {'A': a['A'], 'B': 0.3 * jax.random.normal(next(keys),
                                                    a['B'].shape)}
      for p, a in trainable.adapters.items()})


def algorithm(lr=0.5, **kwargs):
  return _lora.split_lora(ENCODER, optax.sgd(lr), optax.sgd(lr), CONFIG,
                          cut=CUT, first=FIRST, **kwargs)


# One compiled round (cohorts [2, 1, 4]) and model_params serve every test.
LR, BATCH = 0.5, 4
ALG = algorithm(LR, average_every=1)
APPLY = jax.jit(ALG.apply)
MODEL_PARAMS = jax.jit(ALG.model_params)
CLIENT_LAYERS = frozenset({'layer_1'})


class SplitLoRATest(absltest.TestCase):

  def test_zero_lora_split_forward_equals_frozen_model(self):
    model = _lora.split_lora_model(ENCODER, PARAMS, first=FIRST, cut=CUT,
                                   alpha=ALPHA)
    trainable = lora.init_lora_params(TOP, CONFIG)
    client, server = model.split_params(trainable)
    self.assertEqual(sorted(client.adapters), [
        'layer_1/attention/query/kernel', 'layer_1/attention/value/kernel'])
    self.assertEqual(sorted(server.adapters), [
        'layer_2/attention/query/kernel', 'layer_2/attention/value/kernel'])
    self.assertEqual(sorted(server.dense), ['head/bias', 'head/kernel'])
    self.assertEqual(client.dense, {})
    test_utils.assert_trees_all_equal(model.merge_params(client, server),
                                      trainable)
    ids, mask = tokens((2, 1, BATCH))  # The cohorts' shape: one compile.
    x = features(ids, mask).reshape(-1, T, HIDDEN + 1)
    ids, mask = ids.reshape(-1, T), mask.reshape(-1, T)
    acts = model.client_apply(client, x)
    self.assertEqual(acts.shape, (2 * BATCH, T, HIDDEN + 1))
    logits = model.server_apply(server, acts)
    hidden = ENCODER.apply({'params': PARAMS}, ids, mask)
    expected = (pretrained.mean_pool(hidden, mask) @ PARAMS['head']['kernel']
                + PARAMS['head']['bias'])
    test_utils.assert_trees_all_close(logits, expected, atol=1e-6)

  def test_one_client_one_step_equals_centralized_lora(self):
    # Client 1 is all padding: it neither sends nor weighs in the FedAvg.
    state = ALG.init(PARAMS)
    start = _lora._merge_trainable(random_b(state.client_params, 1),
                                   random_b(state.server_params, 2))
    client, server = _lora._split_trainable(start, CLIENT_LAYERS)
    state = state._replace(client_params=client, server_params=server,
                           server_opt_state=optax.sgd(LR).init(server))
    data = cohort(2, 1, BATCH)
    data.batches['mask'][1] = 0.
    state, store, metrics = APPLY(state, (), data, KEY)
    self.assertEqual(float(metrics['local_steps']), 0.5)

    batch = jax.tree.map(lambda v: v[0, 0], data.batches)

    def loss(trainable):
      logits = top_forward(lora.merge(TOP, trainable, alpha=ALPHA),
                           batch['x'])
      return _round.label_loss(logits, (batch['y'], batch['mask']))[0]

    grads = jax.jit(jax.grad(loss))(start)
    expected = jax.tree.map(lambda p, g: p - LR * g, start, grads)
    for path in ('layer_1/attention/query/kernel',
                 'layer_2/attention/value/kernel'):
      for factor in ('A', 'B'):
        self.assertGreater(
            float(jnp.abs(grads.adapters[path][factor]).max()), 1e-4)
    exp_client, exp_server = _lora._split_trainable(expected, CLIENT_LAYERS)
    test_utils.assert_trees_all_close(state.client_params, exp_client,
                                      atol=1e-5)
    test_utils.assert_trees_all_close(state.server_params, exp_server,
                                      atol=1e-5)
    test_utils.assert_trees_all_close(
        MODEL_PARAMS(state, store), lora.merge(TOP, expected, alpha=ALPHA),
        atol=1e-5)

  def test_round_keeps_base_and_counts_adapter_bytes_only(self):
    state = ALG.init(PARAMS)
    before = jax.tree.map(np.asarray, state.algorithm_state['base'])
    client0 = state.client_params
    data = cohort(2, 1, BATCH, seed=5)
    store = ALG.init_client_state(PARAMS)
    self.assertEqual(store, ())
    state, store, metrics = APPLY(state, store, data, KEY)
    test_utils.assert_trees_all_equal(state.algorithm_state['base'], before)
    client_base, server_base = _lora.split_minilm_params(
        PARAMS, first=FIRST, cut=CUT, num_layers=ENCODER.num_layers)
    test_utils.assert_trees_all_equal(before, {'client': client_base,
                                               'server': server_base})
    self.assertEqual(store, ())
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                         state.client_params.adapters, client0.adapters)
    self.assertGreater(max(jax.tree.leaves(moved)), 0.)
    adapter_bytes = lora.count_bytes(state.client_params)
    self.assertEqual(adapter_bytes, 2 * (RANK * HIDDEN * 2) * 4)
    act_row = T * (HIDDEN + 1) * 4
    np.testing.assert_allclose(metrics['upload_bytes_per_client'],
                               BATCH * (act_row + 4) + adapter_bytes)
    np.testing.assert_allclose(metrics['model_upload_bytes_per_client'],
                               adapter_bytes)
    np.testing.assert_allclose(metrics['downlink_bytes_per_client'],
                               BATCH * act_row + adapter_bytes)
    merged = MODEL_PARAMS(state, store)
    self.assertEqual(sorted(merged), ['head', 'layer_1', 'layer_2'])
    model = _lora.split_lora_model(ENCODER, PARAMS, first=FIRST, cut=CUT,
                                   alpha=ALPHA)
    x = data.batches['x'][0, 0]
    unsplit, split = jax.jit(lambda m, c, s: (
        top_forward(m, x), model.server_apply(s, model.client_apply(c, x))))(
            merged, state.client_params, state.server_params)
    test_utils.assert_trees_all_close(unsplit, split, atol=1e-5)
    with self.assertRaisesRegex(ValueError, 'average_every'):
      ALG.apply(state, store, data._replace(batches=jax.tree.map(
          lambda v: jnp.concatenate([v, v], 1), data.batches)), KEY)


BAD_CALLS = (
    ('cut_low', lambda: _lora.split_lora(
        ENCODER, optax.sgd(1.), optax.sgd(1.), CONFIG, cut=FIRST,
        first=FIRST), 'cut'),
    ('cut_high', lambda: _lora.split_lora(
        ENCODER, optax.sgd(1.), optax.sgd(1.), CONFIG, cut=4, first=FIRST),
     'cut'),
    ('first', lambda: _lora.split_lora_model(ENCODER, PARAMS, first=3,
                                             cut=3, alpha=1.), 'first'),
    ('encoder', lambda: _lora.split_lora_model(object(), PARAMS, first=0,
                                               cut=1, alpha=1.), 'encoder'),
    ('config', lambda: _lora.split_lora(ENCODER, optax.sgd(1.),
                                        optax.sgd(1.), {}, cut=2),
     'config'),
    ('average_every', lambda: algorithm(average_every=0), 'average_every'),
    ('server_rule', lambda: algorithm(server_rule='joint'), 'server_rule'),
    ('params', lambda: _lora.top_params({'layer_2': {}}, first=1,
                                        num_layers=3), 'head'),
)


class BadCallsTest(test_utils.bad_calls_test_case(BAD_CALLS)):
  pass


if __name__ == '__main__':
  absltest.main()
