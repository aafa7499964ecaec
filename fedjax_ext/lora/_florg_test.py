"""FLoRG: Gram aggregation, eigen-factor, Procrustes alignment, rounds."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import lora
from fedjax_ext._src import test_utils
from fedjax_ext.lora import _testing

KEY = jax.random.key(0)
PATH = 'params/layer_1/kernel'  # [5, 4]: d_in 5, d_out 4, k = 4.


def orthogonal(rng, n, m=None):
  """A random [n, m] (default [n, n]) matrix with orthonormal rows."""
  q, _ = np.linalg.qr(rng.normal(size=(m or n, n)))
  return q.T


class AggregationTest(absltest.TestCase):

  def test_gram_is_the_weighted_mean_of_client_grams(self):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 4)).astype(np.float32)
    w = np.array([1., 2., 5.], np.float32)
    updates = lora.LoRAParams({'m': {'A': a}}, {})
    agg, _ = lora.gram_aggregator().update(updates, (), weights=w)
    expected = sum(w[i] * a[i].T @ a[i] for i in range(3)) / w.sum()
    np.testing.assert_allclose(agg.adapters['m']['gram'], expected,
                               rtol=1e-5)

  def test_implied_delta_w_is_the_mean_when_ranks_allow(self):
    rng = np.random.default_rng(1)
    bases = {'m': {'L': orthogonal(rng, 4, 6).T, 'R': orthogonal(rng, 4, 5)}}
    # (a) r = k: every Gram is representable.
    # (b) r = 2 < k, clients sharing a 2-d row space: rank(Q) = 2.
    row_space = rng.normal(size=(2, 4))
    cases = {
        'full_rank': (4, [rng.normal(size=(4, 4)) for _ in range(3)]),
        'shared_rows': (2, [rng.normal(size=(2, 2)) @ row_space
                            for _ in range(3)]),
    }
    for name, (r, clients) in cases.items():
      for alignment in ('truncate', 'align_all'):
        with self.subTest(name=name, alignment=alignment):
          q = np.mean([c.T @ c for c in clients], axis=0)
          previous = rng.normal(size=(r, 4))
          new = lora.refactor(jnp.asarray(q), jnp.asarray(previous),
                              alignment=alignment, num_components=3 * r)
          deltas = [lora.florg_deltas({'m': {'A': c}}, bases, 0.5)['m']
                    for c in clients]
          implied = lora.florg_deltas({'m': {'A': new}}, bases, 0.5)['m']
          np.testing.assert_allclose(implied, np.mean(deltas, axis=0),
                                     atol=1e-4)


class ProcrustesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(2)
    self.rng = rng
    clients = [rng.normal(size=(2, 6)) for _ in range(3)]
    self.q = jnp.asarray(np.mean([c.T @ c for c in clients], axis=0),
                         jnp.float32)
    self.previous = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)

  def test_truncate_minimises_distance_among_rotations(self):
    factor = lora.eigen_factor(self.q, 2)
    aligned = lora.refactor(self.q, self.previous, alignment='truncate')
    best = float(jnp.linalg.norm(aligned - self.previous))
    for _ in range(200):
      o = jnp.asarray(orthogonal(self.rng, 2), jnp.float32)
      self.assertGreaterEqual(
          float(jnp.linalg.norm(o @ factor - self.previous)), best - 1e-5)
    # Same Gram as the canonical factor: the top-2 truncation of Q.
    np.testing.assert_allclose(lora.gram(aligned), lora.gram(factor),
                               atol=1e-5)
    # Better than the unaligned eigen-factor ('none').
    unaligned = lora.refactor(self.q, self.previous, alignment='none')
    self.assertLess(best, float(jnp.linalg.norm(unaligned - self.previous)))

  def test_align_all_minimises_among_semi_orthogonal_maps(self):
    factor = lora.eigen_factor(self.q, 6)
    s = lora.procrustes(self.previous, factor)
    np.testing.assert_allclose(s @ s.T, np.eye(2), atol=1e-5)
    best = float(jnp.linalg.norm(s @ factor - self.previous))
    for _ in range(200):
      o = jnp.asarray(orthogonal(self.rng, 2, 6), jnp.float32)  # [2, 6].
      self.assertGreaterEqual(
          float(jnp.linalg.norm(o @ factor - self.previous)),
          best - 1e-5)

  def test_truncation_gives_the_best_rank_r_gram(self):
    lam = np.sort(np.linalg.eigvalsh(np.asarray(self.q, np.float64)))[::-1]
    optimal = np.sqrt(np.sum(lam[2:] ** 2))
    errors = {a: float(jnp.linalg.norm(lora.gram(lora.refactor(
        self.q, self.previous, alignment=a, num_components=6)) - self.q))
              for a in lora.ALIGNMENTS}
    self.assertAlmostEqual(errors['truncate'], optimal, places=4)
    self.assertAlmostEqual(errors['none'], optimal, places=4)
    self.assertGreaterEqual(errors['align_all'], optimal - 1e-5)

  def test_gauge_invariance(self):
    bases = lora.init_bases(_testing.base_params(), lora.FLoRGConfig(
        PATH, 2, 2., KEY))
    a = jax.random.normal(KEY, (2, 4))
    o = jnp.asarray(orthogonal(self.rng, 2), jnp.float32)
    np.testing.assert_allclose(
        lora.florg_deltas({PATH: {'A': o @ a}}, bases, 1.)[PATH],
        lora.florg_deltas({PATH: {'A': a}}, bases, 1.)[PATH], atol=1e-5)
    # LoRA's gauge: (B G^-1)(G A) = B A.
    g = jnp.asarray(self.rng.normal(size=(2, 2)) + 3 * np.eye(2),
                    jnp.float32)
    b = jax.random.normal(jax.random.key(3), (4, 2))
    np.testing.assert_allclose(
        lora.delta_w({'A': g @ a, 'B': b @ jnp.linalg.inv(g)}),
        lora.delta_w({'A': a, 'B': b}), atol=1e-4)


class BasesTest(parameterized.TestCase):

  @parameterized.parameters('random', 'svd')
  def test_semi_orthogonal(self, kind):
    bases = lora.init_bases(_testing.base_params(), lora.FLoRGConfig(
        'params/layer_.*/kernel', 2, 2., KEY, bases=kind))
    for path, b in bases.items():
      k = min(b['L'].shape[0], b['R'].shape[1])
      self.assertEqual(b['L'].shape[1], k, path)
      np.testing.assert_allclose(b['L'].T @ b['L'], np.eye(k), atol=1e-5)
      np.testing.assert_allclose(b['R'] @ b['R'].T, np.eye(k), atol=1e-5)


class RoundTest(parameterized.TestCase):

  @parameterized.parameters('truncate', 'align_all')
  def test_round_averages_client_delta_w_exactly(self, alignment):
    # r = k = 4: the new model's delta-W is the mean of the clients'.
    cohort = _testing.cohort(3)
    base = _testing.base_params()
    captured = {}

    def capture(outputs, state, cohort, key):
      del state, cohort, key
      captured['A'] = outputs.update.adapters[PATH]['A']
      return outputs

    config = lora.FLoRGConfig(PATH, 4, 4., jax.random.key(1),
                              alignment=alignment, offset_base=False)
    algorithm = lora.florg(_testing.loss_fn, optax.sgd(0.2), config,
                           transform_outputs=capture)
    state = algorithm.init(base)
    new, _, metrics = algorithm.apply(state, (), cohort, KEY)
    bases = state.algorithm_state['bases']
    client_deltas = [lora.florg_deltas({PATH: {'A': a}}, bases, 1.)[PATH]
                     for a in captured['A']]
    model = algorithm.model_params(new, ())
    np.testing.assert_allclose(
        (model['params']['layer_1']['kernel']
         - base['params']['layer_1']['kernel']).T,
        np.mean(client_deltas, axis=0), atol=1e-5)
    self.assertLess(float(metrics['florg_gram_error']), 1e-4)
    # The frozen base is bit-identical after training.
    test_utils.assert_trees_all_equal(new.algorithm_state['base'], base)
    # Uploads A [4, 4] float32 only.
    self.assertEqual(float(metrics['upload_bytes_per_client']), 64.)

  def test_offset_base_starts_at_the_pretrained_model(self):
    base = _testing.base_params()
    algorithm = lora.florg(_testing.loss_fn, optax.sgd(0.2),
                           lora.FLoRGConfig(PATH, 2, 2., KEY,
                                            init_scale=0.5))
    state = algorithm.init(base)
    test_utils.assert_trees_all_close(algorithm.model_params(state, ()),
                                      base, atol=1e-6)
    self.assertGreater(float(jnp.linalg.norm(
        state.algorithm_state['base']['params']['layer_1']['kernel']
        - base['params']['layer_1']['kernel'])), 1e-3)

  def test_alignment_reduces_drift_over_rounds(self):
    cohort = _testing.cohort(4)
    base = _testing.base_params()
    drift = {}
    for alignment in ('truncate', 'none'):
      algorithm = lora.florg(_testing.loss_fn, optax.sgd(0.2),
                             lora.FLoRGConfig(PATH, 2, 2., KEY,
                                              alignment=alignment))
      state = algorithm.init(base)
      total = 0.
      for _ in range(3):
        state, _, metrics = jax.jit(algorithm.apply)(state, (), cohort, KEY)
        total += float(metrics['florg_drift'])
      drift[alignment] = total
    self.assertLess(drift['truncate'], drift['none'])


if __name__ == '__main__':
  absltest.main()
