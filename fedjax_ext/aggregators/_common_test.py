"""Compliance suite every aggregator (and pre-aggregator chain) passes.

jit, shapes, finite outputs, dtype preservation (float32 and bfloat16), no
retracing across rounds, extra-args acceptance, invariance to client order,
and NaN/Inf/overflow rejection (robust rules only).
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext import core
from fedjax_ext._src import test_utils

C = 9  # Clients.
B = 2  # Byzantine clients tolerated.

# name -> (factory, robust: ignores non-finite clients).
FACTORIES = {
    'weighted_mean': (aggregators.weighted_mean, False),
    'mean_guarded': (lambda: aggregators.mean(reject_non_finite=True), True),
    'coordinate_median': (aggregators.coordinate_median, True),
    'trimmed_mean': (lambda: aggregators.trimmed_mean(B), True),
    'krum': (lambda: aggregators.krum(B), True),
    'multi_krum': (lambda: aggregators.multi_krum(B), True),
    'geometric_median': (aggregators.geometric_median, True),
    'centered_clipping': (
        lambda: aggregators.centered_clipping(0.5, num_iterations=2), True),
    'nnm_trimmed_mean': (lambda: aggregators.process(
        aggregators.nnm(B), aggregators.trimmed_mean(B)), True),
    'bulyan': (lambda: aggregators.bulyan(B), True),
    'arc_nnm_median': (lambda: aggregators.process(
        aggregators.arc(B), aggregators.nnm(B),
        aggregators.coordinate_median()), True),
    'clip_bucket_nnm_gm': (lambda: aggregators.chain(
        aggregators.norm_clipping(2.0),
        aggregators.bucketing(2, key=jax.random.key(0)),
        aggregators.nnm(B), aggregators.geometric_median()), True),
}
# `mean()` without the guard IS `tree_weighted_mean` (see `weighted_mean`).
ALL = [(name, name) for name in FACTORIES]
ROBUST = [(name, name) for name, (_, r) in FACTORIES.items() if r]


def make_updates(seed=0, dtype=jnp.float32, num_clients=C):
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(num_clients, 3, 2)), dtype),
          'b': jnp.asarray(rng.normal(size=(num_clients, 4)), dtype)}


def one_client(stacked):
  return jax.tree.map(lambda leaf: leaf[0], stacked)


class ComplianceTest(parameterized.TestCase):

  @parameterized.named_parameters(*ALL)
  def test_jit_shapes_finite_and_no_retrace(self, name):
    agg = FACTORIES[name][0]()
    updates = make_updates()
    weights = jnp.arange(1., C + 1.)
    state = agg.init(one_client(updates))

    params = one_client(updates)

    server_state = core.ServerState(params=params, opt_state=(),
                                    aggregator_state=state,
                                    algorithm_state=(),
                                    round=jnp.zeros((), jnp.int32))

    @jax.jit
    @test_utils.assert_max_traces(n=1)
    def step(u, s, w, key, info):
      # Also passes params, the round's extra arguments (as
      # `core.aggregate_outputs` does) and an unknown one.
      return agg.update(u, s, params, weights=w, key=key,
                        server_state=server_state, client_info=info,
                        unused_extra=1.0)

    test_utils.clear_trace_counter()
    for r in range(3):
      out, state = step(make_updates(r), state, weights,
                        jax.random.key(r),
                        {'num_examples': weights, 'byzantine': weights > 5})
    test_utils.assert_tree_all_finite(out)
    for leaf, ref in zip(jax.tree.leaves(out), jax.tree.leaves(updates)):
      test_utils.assert_shape(leaf, ref.shape[1:])

  @parameterized.named_parameters(*ALL)
  def test_preserves_bfloat16(self, name):  # float32: the test above.
    agg = FACTORIES[name][0]()
    updates = make_updates(dtype=jnp.bfloat16)
    out, _ = jax.jit(agg.update)(updates, agg.init(one_client(updates)),
                                 weights=jnp.ones(C))
    for leaf in jax.tree.leaves(out):
      self.assertEqual(leaf.dtype, jnp.bfloat16)
    test_utils.assert_tree_all_finite(out)

  @parameterized.named_parameters(*ALL)
  def test_client_order_invariance(self, name):
    agg = FACTORIES[name][0]()
    updates = make_updates(seed=5)
    weights = jnp.asarray(np.random.default_rng(1).uniform(1, 3, C),
                          jnp.float32)
    perm = np.random.default_rng(2).permutation(C)
    state = agg.init(one_client(updates))
    update = jax.jit(agg.update)
    out, _ = update(updates, state, weights=weights)
    out_perm, _ = update(jax.tree.map(lambda x: x[perm], updates), state,
                         weights=weights[perm])
    # Weiszfeld stops on a float32 objective test, so a permutation's
    # rounding can change its iteration count: GM agrees to the solver's
    # accuracy, every other rule to float rounding.
    atol = 1e-3 if name.endswith('gm') or 'geometric' in name else 1e-6
    test_utils.assert_trees_all_close(out, out_perm, rtol=1e-5, atol=atol)

  @parameterized.named_parameters(*ROBUST)
  def test_non_finite_clients_are_rejected(self, name):
    agg = FACTORIES[name][0]()
    updates = make_updates(seed=7)
    weights = jnp.ones(C)
    bad = jnp.array([1, 4, 6])
    poisoned = {'w': updates['w'].at[1, 0, 0].set(jnp.nan)
                                 .at[4].set(jnp.inf),
                'b': updates['b'].at[6].set(3e30)}  # Squared norm overflows.
    state = agg.init(one_client(updates))
    out, new_state = jax.jit(agg.update)(poisoned, state, weights=weights)
    test_utils.assert_tree_all_finite(out)
    test_utils.assert_tree_all_finite(
        [x for x in jax.tree.leaves(new_state)
         if jnp.issubdtype(x.dtype, jnp.floating)])
    # Rejected = absent: the same as zero rows of weight zero.
    absent = jax.tree.map(lambda x: x.at[bad].set(0.), updates)
    ref, _ = jax.jit(agg.update)(absent, state,
                                 weights=weights.at[bad].set(0.))
    test_utils.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)
    self.assertEqual(int(jnp.sum(aggregators.rejected_clients(
        poisoned, weights))), 3)
    # Every client rejected: zeros, not NaN.
    all_bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), updates)
    out, _ = jax.jit(agg.update)(all_bad, state, weights=weights)
    test_utils.assert_trees_all_close(
        out, jax.tree.map(jnp.zeros_like, one_client(updates)))

  def test_plain_mean_lets_nan_through(self):
    # The unguarded mean is the documented exception.
    updates = make_updates()
    updates['b'] = updates['b'].at[0, 0].set(jnp.nan)
    out, _ = aggregators.mean().update(updates, (), weights=jnp.ones(C))
    self.assertTrue(bool(jnp.isnan(out['b'][0])))


if __name__ == '__main__':
  absltest.main()
