"""Sorting networks and coordinate-wise order statistics (`_order`)."""

import itertools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext.aggregators import _order


def apply_network(comparators, values):
  values = list(values)
  for a, b in comparators:
    if values[a] > values[b]:
      values[a], values[b] = values[b], values[a]
  return values


class NetworkTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 3, 5, 8, 13, 20)
  def test_batcher_network_sorts_every_01_input(self, n):
    # The 0-1 principle: a comparator network sorts every input iff it
    # sorts every 0-1 input.
    network = _order.batcher_network(n)
    self.assertTrue(all(a < b < n for a, b in network))
    for bits in itertools.product((0, 1), repeat=n):
      self.assertEqual(apply_network(network, bits), sorted(bits))

  def test_batcher_network_sorts_100(self):
    network = _order.batcher_network(100)
    self.assertLen(network, 1104)
    rng = np.random.default_rng(0)
    for _ in range(50):
      values = list(rng.integers(0, 9, 100))
      self.assertEqual(apply_network(network, values), sorted(values))

  def test_pruned_network_keeps_the_requested_rows(self):
    pruned = _order.pruned_network(100, (49, 50))
    self.assertLess(len(pruned), len(_order.batcher_network(100)))
    rng = np.random.default_rng(1)
    for _ in range(50):
      values = list(rng.normal(size=100))
      out = apply_network(pruned, values)
      self.assertEqual(out[49:51], sorted(values)[49:51])

  def test_network_rows_lower_to_min_max_without_nan_handling(self):
    rows = [jnp.ones(8) * i for i in range(4)]
    hlo = jax.jit(lambda *r: _order.network_rows(list(r), (0,))[0]).lower(
        *rows).as_text()
    self.assertNotIn('minimum', hlo)  # select(a < b, a, b), not min.


# name -> (aggregator factory(method), numpy reference(x [k, d], b)).
def np_median(x, b):
  del b
  return np.median(x, axis=0)


def np_trimmed_mean(x, b):
  t = min(b, (len(x) - 1) // 2)
  return np.sort(x, axis=0)[t:len(x) - t].mean(axis=0)


RULES = {
    'median': (lambda b, m: aggregators.coordinate_median(method=m),
               np_median),
    'trimmed_mean': (lambda b, m: aggregators.trimmed_mean(b, method=m),
                     np_trimmed_mean),
}


class CoordinatewiseTest(parameterized.TestCase):

  @parameterized.product(rule=tuple(RULES), method=('network', 'sort'))
  def test_every_count_of_present_clients_with_ties(self, rule, method):
    # Integer values (many ties) and every k = 0..C: the traced k moves
    # the rows read, the +-inf padding of absent (NaN) clients must not.
    rng = np.random.default_rng(3)
    factory, reference = RULES[rule]
    for n, b in ((7, 2), (10, 3)):
      update = jax.jit(factory(b, method).update)
      for k in range(n + 1):
        x = rng.integers(-3, 4, size=(n, 6)).astype(np.float32)
        present = np.zeros(n, bool)
        present[rng.permutation(n)[:k]] = True
        x[~present] = np.nan  # Rejected clients: never read.
        out = np.asarray(update({'a': jnp.asarray(x)}, (),
                                weights=jnp.ones(n))[0]['a'])
        want = reference(x[present], b) if k else np.zeros(6)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7,
                                   err_msg=f'n={n} k={k}')

  @parameterized.parameters('median', 'trimmed_mean', 'bulyan')
  def test_tiled_network_equals_sort_on_a_multi_leaf_tree(self, rule):
    # Small TILE and SMALL_LEAF: leaves are tiled with an overlapping last
    # tile, small ones concatenated into a zero-padded block.
    rng = np.random.default_rng(4)
    tree = {'big': jnp.asarray(rng.normal(size=(9, 5, 7)), jnp.float32),
            'mid': jnp.asarray(rng.normal(size=(9, 11)), jnp.float32),
            'tiny': jnp.asarray(rng.normal(size=(9, 2)), jnp.float32),
            'one': jnp.asarray(rng.normal(size=(9,)), jnp.float32)}
    weights = jnp.asarray([1., 1., 0., 1., 1., 1., 1., 1., 1.])
    make = {'median': lambda m: aggregators.coordinate_median(method=m),
            'trimmed_mean': lambda m: aggregators.trimmed_mean(2, method=m),
            'bulyan': lambda m: aggregators.bulyan(1, method=m)}[rule]
    want, _ = jax.jit(make('sort').update)(tree, (), weights=weights)
    with mock.patch.object(_order, 'TILE', 8), mock.patch.object(
        _order, 'SMALL_LEAF', 12):
      got, _ = jax.jit(make('network').update)(tree, (), weights=weights)
    for key in tree:
      np.testing.assert_array_equal(np.asarray(got[key]),
                                    np.asarray(want[key]), err_msg=key)

  def test_auto_uses_no_sort_on_cpu(self):
    hlo = jax.jit(aggregators.trimmed_mean(2).update).lower(
        {'a': jnp.ones((9, 5))}, (), weights=jnp.ones(9)).compile().as_text()
    self.assertNotIn('sort(', hlo)

  def test_bad_method(self):
    with self.assertRaisesRegex(ValueError, 'valid choices'):
      aggregators.coordinate_median(method='bogus')


if __name__ == '__main__':
  absltest.main()
