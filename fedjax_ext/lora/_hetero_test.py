"""FlexLoRA and HetLoRA: heterogeneous ranks pad, truncate, aggregate."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext import lora
from fedjax_ext.lora import _testing

KEY = jax.random.key(0)
PATH = 'params/layer_0/kernel'  # [6, 5]: in 6, out 5.
RANKS = [1, 2, 4]


def run(algorithm, rounds=1, capture=None):
  cohort = _testing.cohort(3, ranks=RANKS)
  base = _testing.base_params()
  state = algorithm.init(base)
  store = core.tree_broadcast(algorithm.init_client_state(base), 3)
  for _ in range(rounds):
    previous = state
    state, store, metrics = algorithm.apply(state, store, cohort, KEY)
  return base, previous, state, store, metrics


def capturing():
  captured = {}

  def capture(outputs, state, cohort, key):
    del state, cohort, key
    captured['update'] = outputs.update
    captured['weight'] = outputs.weight
    return outputs

  return captured, capture


class FlexLoRATest(absltest.TestCase):

  def test_average_of_full_delta_w_and_per_client_svd(self):
    captured, capture = capturing()
    config = lora.LoRAConfig(PATH, 4, 8., jax.random.key(1))
    algorithm = lora.flex_lora(_testing.loss_fn, optax.sgd(0.3), config,
                               max_rank=4, transform_outputs=capture)
    base, _, state, _, metrics = run(algorithm, rounds=2)
    up = captured['update']
    factors = up['lora'].adapters[PATH]
    np.testing.assert_array_equal(up['rank'], RANKS)
    deltas = [8. / r * factors['B'][i] @ factors['A'][i]
              for i, r in enumerate(RANKS)]
    for i, r in enumerate(RANKS):  # Zero-padded beyond each client's rank.
      np.testing.assert_array_equal(factors['A'][i][r:], 0.)
      np.testing.assert_array_equal(factors['B'][i][:, r:], 0.)
    mean = np.mean(deltas, axis=0)  # Equal data sizes.
    np.testing.assert_allclose(state.algorithm_state['delta'][PATH], mean,
                               atol=1e-5)
    model = algorithm.model_params(state, ())
    np.testing.assert_allclose(
        (model['params']['layer_0']['kernel']
         - base['params']['layer_0']['kernel']).T, mean, atol=1e-5)
    # Client k's start: the rank-r_k truncated SVD of the global delta.
    u, s, vt = np.linalg.svd(np.asarray(mean, np.float64))
    for r in RANKS:
      cut = lora.truncate(state.params.adapters, r)[PATH]
      np.testing.assert_allclose(cut['B'] @ cut['A'],
                                 (u[:, :r] * s[:r]) @ vt[:r], atol=1e-5)
    # Bytes at each client's rank: r_k (6 + 5) floats (+ the rank).
    self.assertAlmostEqual(float(metrics['upload_bytes_per_client']),
                           np.mean(RANKS) * 11 * 4 + 4, places=3)
    self.assertAlmostEqual(float(metrics['downlink_bytes_per_client']),
                           np.mean(RANKS) * 11 * 4, places=3)


class HetLoRATest(absltest.TestCase):

  def test_pad_norm_weight_and_truncate(self):
    captured, capture = capturing()
    config = lora.LoRAConfig(PATH, 4, 8., jax.random.key(1))
    algorithm = lora.het_lora(_testing.loss_fn, optax.sgd(0.3), config,
                              max_rank=4, transform_outputs=capture)
    _, previous, state, store, _ = run(algorithm, rounds=2)
    factors = captured['update']['lora'].adapters[PATH]
    for i, r in enumerate(RANKS):
      np.testing.assert_array_equal(factors['A'][i][r:], 0.)
      np.testing.assert_array_equal(factors['B'][i][:, r:], 0.)
      # Client i trained from the global factors' rank-r truncation:
      # its first components moved, from the previous global ones.
      self.assertGreater(float(jnp.linalg.norm(
          factors['B'][i][:, :r] - previous.params.adapters[PATH]['B'][
              :, :r])), 0.)
    norms = np.array([np.linalg.norm(2. * factors['B'][i] @ factors['A'][i])
                      for i in range(3)])
    p = norms / norms.sum()
    for name in ('A', 'B'):
      np.testing.assert_allclose(
          state.params.adapters[PATH][name],
          np.tensordot(p, np.asarray(factors[name]), axes=1), atol=1e-6)
    np.testing.assert_array_equal(store['rank'], RANKS)  # No pruning by default.

  def test_self_pruning_lowers_ranks_in_the_store(self):
    config = lora.LoRAConfig(PATH, 4, 8., jax.random.key(1))
    algorithm = lora.het_lora(_testing.loss_fn, optax.sgd(0.3), config,
                              max_rank=4, prune_threshold=2.,
                              min_rank=1)
    # Threshold 2 x the largest component: every client above min_rank
    # drops one component per round.
    *_, store, metrics = run(algorithm, rounds=2)
    np.testing.assert_array_equal(store['rank'], [1, 1, 2])
    self.assertAlmostEqual(float(metrics['mean_rank']), 4. / 3, places=5)

  def test_missing_rank_column_names_it(self):
    algorithm = lora.het_lora(_testing.loss_fn, optax.sgd(0.3),
                              lora.LoRAConfig(PATH, 4, 8., KEY),
                              max_rank=4)
    base = _testing.base_params()
    with self.assertRaisesRegex(ValueError, r"info\['rank'\]"):
      algorithm.apply(algorithm.init(base),
                      core.tree_broadcast(algorithm.init_client_state(base),
                                          3), _testing.cohort(3), KEY)


if __name__ == '__main__':
  absltest.main()
