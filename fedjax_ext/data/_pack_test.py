"""Cohort packing: fixed shapes, masks, no data lost, (seed, round) replay."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fedjax_ext.data import _pack


def toy(num_examples=23):
  return {'x': np.arange(num_examples, dtype=np.float32)[:, None] * [1., -1.],
          'y': np.arange(num_examples, dtype=np.int32)}


CLIENTS = [np.arange(0, 3), np.arange(3, 13), np.arange(13, 23)]


class PackTest(parameterized.TestCase):

  def test_shapes_and_masks_with_epochs(self):
    steps = _pack.num_local_steps([3, 10, 10], 4, local_epochs=1)
    self.assertEqual(steps, 3)
    cohort = _pack.pack_cohort(toy(), CLIENTS, np.array([0, 1]),
                               batch_size=4, num_steps=steps, seed=0,
                               round_num=0, local_epochs=1)
    self.assertEqual(cohort.batches['x'].shape, (2, 3, 4, 2))
    self.assertEqual(cohort.batches['y'].shape, (2, 3, 4))
    np.testing.assert_array_equal(cohort.batches['mask'].sum(axis=(1, 2)),
                                  [3, 10])
    np.testing.assert_array_equal(cohort.num_examples, [3, 10])
    # One epoch sees each of the client's examples exactly once.
    real = cohort.batches['y'][1][cohort.batches['mask'][1] > 0]
    np.testing.assert_array_equal(np.sort(real), CLIENTS[1])
    # Features travel with their labels.
    np.testing.assert_array_equal(cohort.batches['x'][..., 0],
                                  cohort.batches['y'])

  @parameterized.parameters(1.5, 2.0)
  def test_fractional_and_multiple_epochs(self, epochs):
    steps = _pack.num_local_steps([3, 10, 10], 4, local_epochs=epochs)
    cohort = _pack.pack_cohort(toy(), CLIENTS, np.array([1]), batch_size=4,
                               num_steps=steps, seed=0, round_num=0,
                               local_epochs=epochs)
    real = cohort.batches['y'][0][cohort.batches['mask'][0] > 0]
    self.assertLen(real, math.ceil(epochs * 10))
    counts = np.bincount(real - 3, minlength=10)
    self.assertLessEqual(counts.max() - counts.min(), 1)

  def test_local_steps_fill_every_batch(self):
    cohort = _pack.pack_cohort(toy(), CLIENTS, np.array([0, 2]),
                               batch_size=4, num_steps=5, seed=0, round_num=0)
    self.assertTrue(np.all(cohort.batches['mask'] == 1))
    self.assertTrue(set(cohort.batches['y'][0].ravel()) <= set(CLIENTS[0]))

  def test_same_seed_and_round_replay_exactly(self):
    pack = lambda seed, r: _pack.pack_cohort(
        toy(), CLIENTS, np.array([1, 2]), batch_size=4, num_steps=3,
        seed=seed, round_num=r, local_epochs=1)
    np.testing.assert_array_equal(pack(0, 7).batches['y'],
                                  pack(0, 7).batches['y'])
    self.assertFalse(np.array_equal(pack(0, 7).batches['y'],
                                    pack(0, 8).batches['y']))

  def test_a_block_packs_as_within_the_whole_cohort(self):
    pack = lambda ids: _pack.pack_cohort(
        toy(), CLIENTS, np.array(ids), batch_size=4, num_steps=3, seed=0,
        round_num=1, local_epochs=1)
    whole, block = pack([0, 1, 2]), pack([1, 2])
    np.testing.assert_array_equal(whole.batches['y'][1:], block.batches['y'])

  def test_sample_clients(self):
    ids = _pack.sample_clients(100, 10, seed=3, round_num=5)
    self.assertLen(set(ids.tolist()), 10)
    np.testing.assert_array_equal(
        ids, _pack.sample_clients(100, 10, seed=3, round_num=5))
    self.assertFalse(np.array_equal(
        ids, _pack.sample_clients(100, 10, seed=3, round_num=6)))
    with self.assertRaisesRegex(ValueError, r'\[1, 100\]'):
      _pack.sample_clients(100, 101, seed=0, round_num=0)

  def test_grouped_sampling_takes_each_block_from_its_group(self):
    ids = _pack.sample_clients(20, 6, seed=1, round_num=2, num_groups=2)
    self.assertTrue(np.all(ids[:3] % 2 == 0))
    self.assertTrue(np.all(ids[3:] % 2 == 1))
    self.assertLen(set(ids.tolist()), 6)
    with self.assertRaisesRegex(ValueError, 'multiple of num_groups'):
      _pack.sample_clients(20, 5, seed=1, round_num=2, num_groups=2)

  def test_num_local_steps_errors(self):
    with self.assertRaisesRegex(ValueError, 'exactly one'):
      _pack.num_local_steps([3], 2)
    with self.assertRaisesRegex(ValueError,
                                'local_epochs must be a finite number > 0'):
      _pack.num_local_steps([3], 2, local_epochs=0)


if __name__ == '__main__':
  absltest.main()
