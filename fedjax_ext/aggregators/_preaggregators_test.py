"""Pre-aggregators vs direct NumPy implementations, and their chaining."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext import core
from fedjax_ext.aggregators import _distance
from fedjax_ext.aggregators import _preaggregators
from fedjax_ext.aggregators import _testing as t


class PreAggregatorTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)

  def sample(self, n):
    return self.rng.normal(size=(n, 7)) * self.rng.uniform(0.5, 2, (n, 1))

  @parameterized.parameters(1, 3)
  def test_nnm(self, b):
    x = self.sample(9)
    (mixed, _), _ = jax.jit(aggregators.nnm(b).update)(
        t.as_tree(x), (), weights=jnp.ones(9))
    np.testing.assert_allclose(t.rows(mixed), t.np_nnm(x, b), rtol=1e-5,
                               atol=1e-6)

  def test_nnm_exact_distances_and_a_given_gram_agree(self):
    x = self.sample(9)
    weights = jnp.ones(9).at[5].set(0.)
    tree = t.as_tree(x)
    (mixed, w), _ = jax.jit(aggregators.nnm(2).update)(tree, (),
                                                       weights=weights)
    (exact, w_exact), _ = jax.jit(aggregators.nnm(2, distances='exact')
                                  .update)(tree, (), weights=weights)
    np.testing.assert_allclose(t.rows(mixed), t.rows(exact), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(w, w_exact)
    gram = _distance.gram_matrix(tree)
    (given, _), _ = aggregators.nnm(2).update(tree, (), weights=weights,
                                              gram=gram)
    np.testing.assert_array_equal(t.rows(mixed), t.rows(given))

  def test_nnm_then_krum_from_one_gram(self):
    # NNM's outputs are M x, so the next rule's Gram matrix is M G M^T:
    # one pass over the updates serves both stages.
    x = self.sample(11)
    x[:2] += 5.
    tree, weights = t.as_tree(x), jnp.ones(11)
    chained, _ = jax.jit(aggregators.process(
        aggregators.nnm(2), aggregators.krum(2)).update)(
            tree, ((), ()), weights=weights)

    @jax.jit
    def shared(tree, weights):
      gram = _distance.gram_matrix(tree)
      present, _ = _distance.presence_from_gram(gram, weights)
      mixing = _preaggregators.nnm_mixing(
          _distance.sq_distances_from_gram(gram, present), present, 2)
      (mixed, w), _ = aggregators.nnm(2).update(tree, (), weights=weights,
                                                gram=gram)
      out, _ = aggregators.krum(2).update(
          mixed, (), weights=w, gram=_distance.mixed_gram(mixing, gram))
      return out

    np.testing.assert_allclose(t.from_tree(shared(tree, weights)),
                               t.from_tree(chained), rtol=1e-5, atol=1e-6)

  @parameterized.parameters(1, 2, 4)
  def test_arc(self, b):
    x = self.sample(10)
    (clipped, w), _ = jax.jit(aggregators.arc(b).update)(
        t.as_tree(x), (), weights=jnp.ones(10))
    np.testing.assert_allclose(t.rows(clipped), t.np_arc(x, b), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(w, np.ones(10))

  def test_norm_clipping(self):
    x = self.sample(6)
    (clipped, _), _ = jax.jit(aggregators.norm_clipping(1.5).update)(
        t.as_tree(x), (), weights=jnp.ones(6))
    np.testing.assert_allclose(t.rows(clipped), t.np_clip(x, 1.5),
                               rtol=1e-5, atol=1e-6)

  def test_bucketing_partitions_clients(self):
    x = self.sample(7)
    bucket = aggregators.bucketing(3, key=jax.random.key(0))
    state = bucket.init(None)
    (means, counts), state2 = jax.jit(bucket.update)(
        t.as_tree(x), state, weights=jnp.ones(7))
    np.testing.assert_array_equal(counts, [3., 3., 1.])
    got = t.rows(means)
    # Each bucket is the mean of a distinct group; weighted by size they
    # sum to the total, and the singleton bucket is one client exactly.
    np.testing.assert_allclose((got * [[3], [3], [1]]).sum(0), x.sum(0),
                               rtol=1e-5, atol=1e-5)
    self.assertTrue(np.any(np.all(np.isclose(x, got[2], atol=1e-6), 1)))
    # The state's key advances: the next round buckets differently.
    self.assertFalse(np.array_equal(jax.random.key_data(state.rng_key),
                                    jax.random.key_data(state2.rng_key)))

  def test_bucketing_uses_the_round_key_when_given(self):
    x = t.as_tree(self.sample(7))
    bucket = aggregators.bucketing(2, key=jax.random.key(0))
    state = bucket.init(None)
    update = jax.jit(bucket.update)
    key = jax.random.key(5)
    (a, _), s_a = update(x, state, weights=jnp.ones(7), key=key)
    (b, _), _ = update(x, bucket.init(None), weights=jnp.ones(7), key=key)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # The state is left as it is when the round supplies the key.
    np.testing.assert_array_equal(jax.random.key_data(s_a.rng_key),
                                  jax.random.key_data(state.rng_key))

  def test_absent_clients_are_ignored(self):
    x = self.sample(9)
    weights = jnp.array([1., 0., 1., 1., 0., 1., 1., 1., 1.])
    keep = np.asarray(weights) > 0
    (clipped, _), _ = jax.jit(aggregators.arc(2).update)(
        t.as_tree(x), (), weights=weights)
    got = t.rows(clipped)
    np.testing.assert_allclose(got[keep], t.np_arc(x[keep], 2), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(got[~keep], 0.)

  @parameterized.named_parameters(('nnm', aggregators.nnm, 'nnm'),
                                  ('arc', aggregators.arc, 'arc'))
  def test_num_byzantine_too_large_for_the_cohort(self, factory, rule):
    x = t.as_tree(self.sample(6))
    factory(2).update(x, (), weights=jnp.ones(6))
    with self.assertRaisesRegex(ValueError,
                                rf'{rule}: num_byzantine=3 .* 6 clients'):
      factory(3).update(x, (), weights=jnp.ones(6))

  def test_bad_constants_are_rejected_when_built(self):
    for name, build in (
        ('max_norm', lambda: aggregators.norm_clipping(float('nan'))),
        ('max_norm', lambda: aggregators.norm_clipping(0.)),
        ('bucket_size', lambda: aggregators.bucketing(
            0, key=jax.random.key(0)))):
      with self.subTest(name), self.assertRaisesRegex(ValueError, name):
        build()

  def test_process_forwards_the_round_extra_args_to_every_stage(self):
    seen = []

    def spy_update(updates, state, params=None, *, weights, **extra):
      seen.append((params, extra))
      return (updates, weights), state

    spy = aggregators.PreAggregator(lambda params: (), spy_update)

    def final_update(updates, state, params=None, *, weights, **extra):
      seen.append((params, extra))
      return jax.tree.map(lambda leaf: leaf[0], updates), state

    final = core.Aggregator(lambda params: (), final_update)
    x = t.as_tree(self.sample(5))
    extra = dict(key=jax.random.key(1), server_state='state',
                 client_info={'num_examples': jnp.ones(5)})
    for combine in (aggregators.process, aggregators.chain):
      seen.clear()
      agg = combine(spy, aggregators.nnm(1), spy, final)
      agg.update(x, agg.init(None), 'params', weights=jnp.ones(5), **extra)
      self.assertLen(seen, 3)
      for params, got in seen:
        self.assertEqual(params, 'params')
        self.assertEqual(set(got), set(extra))
        self.assertIs(got['client_info'], extra['client_info'])
        self.assertEqual(got['server_state'], 'state')


if __name__ == '__main__':
  absltest.main()
