"""Partitioners: coverage, no empty client, determinism and skew statistics."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fedjax_ext.data import _partition
from fedjax_ext.data import _validate

NUM_CLASSES = 10


def balanced_labels(per_class=100, num_classes=NUM_CLASSES, seed=0):
  """A shuffled label column with `per_class` examples of each class."""
  labels = np.repeat(np.arange(num_classes), per_class)
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def label_histograms(labels, parts, num_classes=NUM_CLASSES):
  """[K, num_classes] per-client label fractions."""
  counts = np.stack([np.bincount(labels[p], minlength=num_classes)
                     for p in parts])
  return counts / counts.sum(axis=1, keepdims=True)


def mean_max_class_fraction(labels, parts):
  """Mean over clients of the share of the client's most common class."""
  return label_histograms(labels, parts).max(axis=1).mean()


def assert_covers_once(test, parts, num_examples):
  test.assertTrue(all(len(p) for p in parts), 'a client is empty')
  for p in parts:
    test.assertEqual(p.dtype, np.int64)
    np.testing.assert_array_equal(p, np.sort(p))
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                np.arange(num_examples))
  _validate.validate_partition(parts, num_examples)


LABELS = balanced_labels()
EXAMPLES = {'x': np.zeros((len(LABELS), 2), np.float32), 'y': LABELS}
METHODS = (('iid', {}), ('dirichlet', {'dirichlet_alpha': 0.3}),
           ('shards', {'classes_per_client': 2}),
           ('quantity_skew', {'quantity_alpha': 0.5}))


class PartitionTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(m, m, kw) for m, kw in METHODS])
  def test_covers_every_example_once_and_is_deterministic(self, method, kw):
    parts = _partition.partition(method, EXAMPLES, 20, seed=3, **kw)
    self.assertLen(parts, 20)
    assert_covers_once(self, parts, len(LABELS))
    again = _partition.partition(method, EXAMPLES, 20, seed=3, **kw)
    for a, b in zip(parts, again):
      np.testing.assert_array_equal(a, b)
    other = _partition.partition(method, EXAMPLES, 20, seed=4, **kw)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(parts, other)),
                     'seeds 3 and 4 gave the same partition')

  @parameterized.named_parameters(*[(m, m, kw) for m, kw in METHODS])
  def test_more_clients_than_examples_names_num_clients(self, method, kw):
    small = {'x': np.zeros((5, 2)), 'y': np.arange(5, dtype=np.int32)}
    with self.assertRaisesRegex(ValueError, 'num_clients'):
      _partition.partition(method, small, 6, seed=0, **kw)

  def test_unknown_method_lists_choices(self):
    with self.assertRaisesRegex(ValueError, 'iid, dirichlet, shards, '
                                'quantity_skew, natural'):
      _partition.partition('pathological', EXAMPLES, 4, seed=0)

  def test_iid_sizes_balanced(self):
    parts = _partition.iid_partition(1003, 10, seed=0)
    sizes = [len(p) for p in parts]
    self.assertEqual(sorted(set(sizes)), [100, 101])
    # Labels iid: each client's histogram close to the uniform one.
    hist = label_histograms(balanced_labels(per_class=1000),
                            _partition.iid_partition(10000, 10, seed=0))
    np.testing.assert_allclose(hist, 0.1, atol=0.04)

  def test_dirichlet_large_alpha_is_near_global(self):
    labels = balanced_labels(per_class=500)
    parts = _partition.dirichlet_partition(labels, 10, alpha=100., seed=0)
    assert_covers_once(self, parts, len(labels))
    # Expected |q - 0.1| ~ sqrt(0.1 * 0.9 / 1000) = 0.01 per entry.
    np.testing.assert_allclose(label_histograms(labels, parts), 0.1,
                               atol=0.05)
    self.assertLess(mean_max_class_fraction(labels, parts), 0.2)

  def test_dirichlet_small_alpha_is_dominated_by_few_classes(self):
    labels = balanced_labels(per_class=500)
    parts = _partition.dirichlet_partition(labels, 10, alpha=0.05, seed=0)
    assert_covers_once(self, parts, len(labels))
    # Iid clients would have ~0.11 and ~0.22; over seeds 0..19 these
    # statistics ranged over [0.60, 0.86] and [0.85, 0.96].
    self.assertGreater(mean_max_class_fraction(labels, parts), 0.5)
    top2 = np.sort(label_histograms(labels, parts), axis=1)[:, -2:].sum(1)
    self.assertGreater(top2.mean(), 0.8)

  def test_dirichlet_skew_decreases_with_alpha(self):
    labels = balanced_labels(per_class=300)
    skews = [mean_max_class_fraction(labels, _partition.dirichlet_partition(
        labels, 10, alpha=a, seed=1)) for a in (0.05, 0.5, 5., 500.)]
    self.assertEqual(skews, sorted(skews, reverse=True))

  def test_dirichlet_fallback_fills_empty_clients(self):
    # 200 clients, 10 classes, alpha 0.01: each draw leaves most clients
    # empty, so the fallback must fill them.
    labels = balanced_labels(per_class=30)
    parts = _partition.dirichlet_partition(labels, 200, alpha=0.01, seed=0)
    self.assertLen(parts, 200)
    assert_covers_once(self, parts, len(labels))

  def test_dirichlet_checks_alpha_and_labels(self):
    with self.assertRaisesRegex(ValueError, 'alpha'):
      _partition.dirichlet_partition(LABELS, 4, alpha=0., seed=0)
    with self.assertRaisesRegex(ValueError, 'num_classes'):
      _partition.dirichlet_partition(LABELS, 4, alpha=1., seed=0,
                                     num_classes=5)

  @parameterized.parameters(1, 2, 3)
  def test_shards_at_most_classes_per_client(self, classes_per_client):
    # Unequal class sizes, so naive equal cuts would straddle classes.
    labels = np.random.default_rng(0).permutation(
        np.repeat(np.arange(NUM_CLASSES), np.arange(50, 150, 10)))
    parts = _partition.shard_partition(
        labels, 20, classes_per_client=classes_per_client, seed=0)
    assert_covers_once(self, parts, len(labels))
    num_classes = [len(np.unique(labels[p])) for p in parts]
    self.assertLessEqual(max(num_classes), classes_per_client)

  def test_shards_deal_whole_classes_with_one_class_each(self):
    parts = _partition.shard_partition(LABELS, 10, classes_per_client=1,
                                       seed=0)
    self.assertEqual(sorted(int(LABELS[p][0]) for p in parts),
                     list(range(NUM_CLASSES)))
    self.assertEqual({len(p) for p in parts}, {100})

  def test_shards_too_few_shards_names_parameters(self):
    with self.assertRaisesRegex(ValueError, 'classes_per_client'):
      _partition.shard_partition(LABELS, 2, classes_per_client=2, seed=0)

  def test_quantity_skew_sizes_vary_labels_do_not(self):
    labels = balanced_labels(per_class=1000)
    parts = _partition.quantity_skew_partition(len(labels), 10, alpha=0.5,
                                               seed=0)
    assert_covers_once(self, parts, len(labels))
    sizes = np.array([len(p) for p in parts])
    self.assertGreater(sizes.max() / sizes.min(), 3.)
    big = [p for p in parts if len(p) >= 1000]
    np.testing.assert_allclose(label_histograms(labels, big), 0.1, atol=0.04)

  def test_quantity_skew_tiny_alpha_keeps_every_client(self):
    parts = _partition.quantity_skew_partition(50, 40, alpha=0.01, seed=0)
    assert_covers_once(self, parts, 50)

  def test_natural_groups_by_id_in_id_order(self):
    ids = np.array([7, 3, 7, 5, 3, 7])
    parts = _partition.natural_partition(ids)
    self.assertEqual([p.tolist() for p in parts], [[1, 4], [3], [0, 2, 5]])
    self.assertTrue(all(p.dtype == np.int64 for p in parts))

  def test_natural_through_partition_checks_column_and_count(self):
    examples = dict(EXAMPLES, client_id=np.arange(len(LABELS)) % 4)
    self.assertLen(_partition.partition('natural', examples, 4, seed=0), 4)
    with self.assertRaisesRegex(ValueError, 'num_clients'):
      _partition.partition('natural', examples, 5, seed=0)
    with self.assertRaisesRegex(ValueError, 'client_id'):
      _partition.partition('natural', EXAMPLES, 4, seed=0)

  @parameterized.parameters(0., 0.2, 0.5, 0.9)
  def test_split_clients_keeps_everything(self, fraction):
    parts = _partition.dirichlet_partition(LABELS, 30, alpha=0.5, seed=0)
    parts[0] = parts[0][:1]  # A one-example client must still train.
    train, held = _partition.split_clients(parts, test_fraction=fraction,
                                           seed=0)
    for p, t, h in zip(parts, train, held):
      self.assertGreaterEqual(len(t), 1)
      np.testing.assert_array_equal(np.sort(np.concatenate([t, h])), p)
      self.assertEqual(len(t), max(1, int(np.floor((1 - fraction) * len(p)
                                                     + 1e-9))))
    self.assertEqual(len(held[0]), 0)
    _validate.validate_partition(train + [h for h in held if len(h)],
                                 len(LABELS))

  def test_split_clients_rejects_bad_fraction(self):
    with self.assertRaisesRegex(ValueError, 'test_fraction'):
      _partition.split_clients([np.arange(3)], test_fraction=1., seed=0)


if __name__ == '__main__':
  absltest.main()
