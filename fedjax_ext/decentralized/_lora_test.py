"""LoRA gossip: Dec-LoRA, RoLoRA, FFA-LoRA gossip, TAD-LoRA on a tiny MLP."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext import decentralized
from fedjax_ext import lora
from fedjax_ext import topology
from fedjax_ext._src import test_utils
from fedjax_ext.lora import _testing

KEY = jax.random.key(0)
N = 4
TARGETS = r'params/layer_[01]/kernel'
ALPHA = 4.
LR = 0.2


def config(dense=None):
  return lora.LoRAConfig(TARGETS, 2, ALPHA, jax.random.key(1),
                         dense_targets=dense)


BASE = _testing.base_params()
SAMPLE = jax.jit(topology.ring(N).sample)


def start(algorithm):
  """(base, state, store) at round 0, in one compiled call."""

  def fn(base):
    return algorithm.init(base), core.tree_broadcast(
        algorithm.init_client_state(base), N)

  return (BASE,) + jax.jit(fn)(BASE)


@functools.cache
def shared_start():
  """Round 0 of every method training both factors (no dense leaves):
  Dec-LoRA, RoLoRA and TAD-LoRA share `_gossip`'s init (compiled once)."""
  return start(decentralized.dec_lora(_testing.loss_fn, optax.sgd(LR),
                                      config(), topology.ring(N)))


def row(tree, i):
  return jax.tree.map(lambda v: v[i], tree)


@functools.partial(jax.jit, static_argnames='names')
def train_node(base, frozen, node_row, batches, key, names):
  """One node's `lora.train_lora`, what the round must do (no vmap)."""
  full = lora.LoRAParams(lora.join_factors(node_row.adapters, frozen),
                         node_row.dense)
  _, local, _ = lora.train_lora(_testing.loss_fn, optax.sgd(LR), base, full,
                                names, batches, key, alpha=ALPHA)
  _, untouched = lora.split_factors(node_row.adapters, names)
  return lora.LoRAParams(lora.join_factors(local.adapters, untouched),
                         local.dense)


def reference_round(state, store, cohort, graph, names, gossiped):
  """Node by node training, then W applied to the `gossiped` factors."""
  keys = core.client_keys(KEY, state.round, cohort.client_ids)
  frozen = state.shared.get('frozen', {})
  local = [train_node(state.shared['base'], frozen, row(store, i),
                      row(cohort.batches, i), keys[i], names)
           for i in range(N)]
  local = jax.tree.map(lambda *v: jnp.stack(v), *local)
  take, rest = lora.split_factors(local.adapters, gossiped)
  mixed = topology.mix_dense(topology.dense_matrix(graph),
                             lora.LoRAParams(take, local.dense))
  return lora.LoRAParams(lora.join_factors(mixed.adapters, rest), mixed.dense)


class LoRAGossipTest(parameterized.TestCase):

  def test_dec_lora_trains_and_mixes_both(self):
    ring = topology.ring(N)
    cohort = _testing.cohort(N, 2, 4, seed=1)
    algorithm = decentralized.dec_lora(_testing.loss_fn, optax.sgd(LR),
                                       config(dense=r'params/head/.*'), ring)
    base, state, store = start(algorithm)
    self.assertEqual(set(store.adapters), {'params/layer_0/kernel',
                                           'params/layer_1/kernel'})
    # At init (B = 0) every node is the base model: labels from the base's
    # predictions give accuracy 1 on every node.
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    y = jnp.argmax(_testing.MODEL.apply(base, x), axis=-1)

    def predict(node_row, inputs):
      return _testing.MODEL.apply(
          decentralized.lora_node_params(state, node_row, alpha=ALPHA),
          inputs)

    accs = jax.jit(decentralized.node_accuracies, static_argnums=0)(
        predict, store, {'x': x, 'y': y})
    np.testing.assert_allclose(accs, np.ones(N))
    self.assertEqual(set(store.dense), {'params/head/kernel',
                                        'params/head/bias'})
    apply = jax.jit(algorithm.apply)
    for _ in range(2):
      expected = reference_round(state, store, cohort, SAMPLE(KEY),
                                 ('A', 'B'), ('A', 'B'))
      state, store, metrics = apply(state, store, cohort, KEY)
      test_utils.assert_trees_all_close(store, expected, atol=1e-5)
    self.assertGreater(float(metrics['cross_term_error']), 0.)
    np.testing.assert_allclose(
        metrics['cross_term_error'],
        decentralized.lora_cross_term_error(store.adapters), rtol=1e-5)
    self.assertEqual(float(metrics['gossip_bytes_per_node']),
                     lora.count_bytes(row(store, 0)))
    # The averaged model: the base with the node-mean factors merged in.
    mean = jax.tree.map(lambda v: v.mean(0), store)
    test_utils.assert_trees_all_close(
        jax.jit(algorithm.model_params)(state, store),
        lora.merge(base, mean, alpha=ALPHA), atol=1e-6)

  @parameterized.named_parameters(('fixed_1', 1, 1., 3),
                                  ('auto_2', 'auto', 2., 4))
  def test_tad_lora_trains_one_factor_per_phase_and_mixes_both(
      self, interval, c, rounds):
    ring = topology.ring(N)
    period = (1 if interval == 1 else topology.tad_lora_interval(
        topology.contraction(ring, jax.random.key(0)), c=c))
    self.assertEqual(period, 1 if interval == 1 else 2)
    cohort = _testing.cohort(N, 2, 4, seed=2)
    algorithm = decentralized.tad_lora(_testing.loss_fn, optax.sgd(LR),
                                       config(), ring, interval=interval,
                                       c=c)
    _, state, store = shared_start()
    apply = jax.jit(algorithm.apply)
    phases = []
    for r in range(rounds):
      names = ('B',) if (r // period) % 2 == 0 else ('A',)
      expected = reference_round(state, store, cohort, SAMPLE(KEY),
                                 names, ('A', 'B'))
      state, store, metrics = apply(state, store, cohort, KEY)
      test_utils.assert_trees_all_close(store, expected, atol=1e-5)
      phases.append(float(metrics['trains_b']))
      self.assertEqual(float(metrics['switch_interval']), period)
      np.testing.assert_allclose(
          metrics['cross_term_error'],
          decentralized.lora_cross_term_error(store.adapters), rtol=1e-5,
          atol=1e-8)
    self.assertEqual(phases, [1., 0., 1.] if period == 1 else
                     [1., 1., 0., 0.])
    # After a round that trained A, the factors differ across nodes.
    self.assertGreater(float(metrics['consensus_after_mix']), 0.)

  def test_rolora_mixes_only_the_active_factor(self):
    ring = topology.ring(N)
    cohort = _testing.cohort(N, 2, 4, seed=3)
    algorithm = decentralized.rolora(_testing.loss_fn, optax.sgd(LR),
                                     config(), ring)
    _, state, store = shared_start()
    apply = jax.jit(algorithm.apply)
    a_bytes = lora.count_bytes(lora.split_factors(row(store, 0).adapters,
                                                  ('A',))[0])
    b_bytes = lora.count_bytes(lora.split_factors(row(store, 0).adapters,
                                                  ('B',))[0])
    for r, active in enumerate(('B', 'A', 'B')):
      expected = reference_round(state, store, cohort, SAMPLE(KEY),
                                 (active,), (active,))
      frozen = 'A' if active == 'B' else 'B'
      before = lora.split_factors(store.adapters, (frozen,))[0]
      state, new_store, metrics = apply(state, store, cohort, KEY)
      test_utils.assert_trees_all_close(new_store, expected, atol=1e-5)
      # The frozen factor's rows are untouched by the round, bit for bit.
      test_utils.assert_trees_all_equal(
          lora.split_factors(new_store.adapters, (frozen,))[0], before)
      self.assertEqual(float(metrics['trains_b']), float(active == 'B'))
      self.assertEqual(float(metrics['gossip_bytes_per_node']),
                       b_bytes if active == 'B' else a_bytes, msg=r)
      store = new_store

  def test_ffa_gossip_never_changes_a(self):
    ring = topology.ring(N)
    cohort = _testing.cohort(N, 2, 4, seed=4)
    algorithm = decentralized.ffa_gossip(_testing.loss_fn, optax.sgd(LR),
                                         config(), ring)
    base, state, store = start(algorithm)
    init_a = lora.split_factors(
        lora.init_lora_params(base, config()).adapters, ('A',))[0]
    # A is not in the store (not per node): only B travels.
    self.assertEqual({f for a in store.adapters.values() for f in a}, {'B'})
    apply = jax.jit(algorithm.apply)
    for _ in range(2):
      expected = reference_round(state, store, cohort, SAMPLE(KEY),
                                 ('B',), ('B',))
      state, store, metrics = apply(state, store, cohort, KEY)
      test_utils.assert_trees_all_close(store, expected, atol=1e-5)
    test_utils.assert_trees_all_equal(state.shared['frozen'], init_a)
    self.assertGreater(float(jnp.abs(
        store.adapters['params/layer_1/kernel']['B']).max()), 0.)
    self.assertEqual(float(metrics['cross_term_error']), 0.)
    self.assertEqual(float(metrics['gossip_bytes_per_node']),
                     lora.count_bytes(row(store, 0)))
    mean_b = jax.tree.map(lambda v: v.mean(0), store.adapters)
    test_utils.assert_trees_all_close(
        jax.jit(algorithm.model_params)(state, store),
        lora.merge(base, lora.join_factors(mean_b, init_a), alpha=ALPHA),
        atol=1e-6)

BAD_CALLS = (
    ('interval', lambda: decentralized.tad_lora(
        _testing.loss_fn, optax.sgd(LR), config(), topology.ring(N),
        interval=0), 'interval'),
    ('interval_type', lambda: decentralized.tad_lora(
        _testing.loss_fn, optax.sgd(LR), config(), topology.ring(N),
        interval='often'), 'interval'),
    ('c', lambda: decentralized.tad_lora(
        _testing.loss_fn, optax.sgd(LR), config(), topology.ring(N), c=0.),
     'c must be'),
    ('never_mixes', lambda: decentralized.tad_lora(
        _testing.loss_fn, optax.sgd(LR), config(),
        topology.from_edges(N, [(0, 1)])), 'rho'),
    ('config', lambda: decentralized.dec_lora(
        _testing.loss_fn, optax.sgd(LR), {'rank': 2}, topology.ring(N)),
     'LoRAConfig'),
    ('optimizer', lambda: decentralized.rolora(
        _testing.loss_fn, 0.1, config(), topology.ring(N)), 'optimizer'),
)

BadCallsTest = test_utils.bad_calls_test_case(BAD_CALLS)

if __name__ == '__main__':
  absltest.main()
