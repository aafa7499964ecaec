"""Host-side client stores and population sampling."""

import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import algorithms
from fedjax_ext import core
from fedjax_ext import training
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing
from fedjax_ext.training import _population as population

INIT = {'c': np.full((2, 3), 0.5, np.float32), 'n': np.int32(7)}


def rows_for(ids, offset=0.):
  ids = np.asarray(ids)
  return {'c': (ids[:, None, None] + offset
                + np.zeros((1, 2, 3))).astype(np.float32),
          'n': ids.astype(np.int32)}


class HostClientStoreTest(parameterized.TestCase):

  def tempdir(self) -> str:
    return self.enterContext(tempfile.TemporaryDirectory())

  def make(self, backend, num_clients=1000, init=INIT):
    path = (os.path.join(self.tempdir(), 'store')
            if backend == 'memmap' else None)
    return population.HostClientStore(init, num_clients, backend, path)

  @parameterized.parameters('sparse', 'memmap')
  def test_gather_scatter_round_trip_and_unvisited_rows(self, backend):
    store = self.make(backend)
    ids = np.array([5, 999, 0, 42])
    store.scatter(ids, rows_for(ids))
    got = store.gather([42, 1, 5, 999, 0, 500])
    want = rows_for([42, 1, 5, 999, 0, 500])
    for k in (1, 5):  # Never written: init_row.
      want['c'][k], want['n'][k] = INIT['c'], INIT['n']
    jax.tree.map(np.testing.assert_array_equal, got, want)
    self.assertEqual(got['n'].dtype, np.int32)
    store.scatter([5], rows_for([5], offset=10.))  # Overwrite.
    np.testing.assert_array_equal(store.gather([5])['c'], 15.)
    self.assertEqual(store.num_visited, 4)
    np.testing.assert_array_equal(store.visited_ids(), [0, 5, 42, 999])

  def test_sparse_memory_grows_with_visited_clients_only(self):
    store = self.make('sparse', num_clients=10**9)
    ids = population.sample_population(10**9, 100, 0, 0)
    store.scatter(ids, rows_for(ids))
    chunks = store._chunks  # pylint: disable=protected-access
    self.assertLen(chunks, 1)  # 100 rows of 28 bytes: one chunk.
    jax.tree.map(np.testing.assert_array_equal, store.gather(ids),
                 rows_for(ids))

  @parameterized.parameters(('sparse', 'sparse'), ('sparse', 'memmap'),
                            ('memmap', 'sparse'), ('memmap', 'memmap'))
  def test_save_restore_round_trip(self, backend, restored_backend):
    store = self.make(backend)
    for r in range(3):
      ids = population.sample_population(1000, 50, 1, r)
      store.scatter(ids, rows_for(ids, offset=r))
    directory = self.tempdir()
    store.save(directory)
    path = (os.path.join(directory, 'restored')
            if restored_backend == 'memmap' else None)
    restored = population.HostClientStore.restore(directory, INIT,
                                                  restored_backend, path)
    np.testing.assert_array_equal(restored.visited_ids(), store.visited_ids())
    everyone = np.arange(1000)
    jax.tree.map(np.testing.assert_array_equal, restored.gather(everyone),
                 store.gather(everyone))
    state = store.state_dict()
    self.assertEqual(len(state['ids']), store.num_visited)
    again = population.HostClientStore.from_state_dict(state, INIT)
    jax.tree.map(np.testing.assert_array_equal, again.gather(everyone),
                 store.gather(everyone))

  def test_memmap_equals_sparse(self):
    sparse, memmap = self.make('sparse'), self.make('memmap')
    rng = np.random.default_rng(0)
    for r in range(5):
      ids = population.sample_population(1000, 64, 3, r)
      rows = {'c': rng.normal(size=(64, 2, 3)).astype(np.float32),
              'n': rng.integers(0, 9, 64).astype(np.int32)}
      sparse.scatter(ids, rows)
      memmap.scatter(ids, rows)
      probe = rng.integers(0, 1000, 200)
      jax.tree.map(np.testing.assert_array_equal, sparse.gather(probe),
                   memmap.gather(probe))
    self.assertEqual(sparse.num_visited, memmap.num_visited)

  def test_sparse_rows_across_many_chunks(self):
    store = self.make('sparse', num_clients=10**6)
    store._chunk = 7  # pylint: disable=protected-access
    for r in range(4):
      ids = population.sample_population(10**6, 30, 2, r)
      store.scatter(ids, rows_for(ids, offset=r))
    self.assertLen(store._chunks, 18)  # pylint: disable=protected-access
    ids = population.sample_population(10**6, 30, 2, 3)
    probe = np.concatenate([ids, [3, 4]])
    want = rows_for(probe, offset=3)
    for k in (30, 31):
      want['c'][k], want['n'][k] = INIT['c'], INIT['n']
    jax.tree.map(np.testing.assert_array_equal, store.gather(probe), want)

  def test_memmap_files_are_not_written_up_front(self):
    store = self.make('memmap', num_clients=10**6)
    info = os.stat(os.path.join(store.path, 'leaf_0.bin'))
    self.assertEqual(info.st_size, 10**6 * 24)
    if hasattr(info, 'st_blocks'):  # A sparse file: few blocks on disk.
      self.assertLess(info.st_blocks * 512, info.st_size // 10)

  def test_bad_arguments(self):
    cases = [
        ('num_clients', lambda: population.HostClientStore(INIT, 0)),
        ('backend', lambda: population.HostClientStore(INIT, 5, 'disk')),
        ('path', lambda: population.HostClientStore(INIT, 5, 'memmap')),
        ('path', lambda: population.HostClientStore(INIT, 5, 'sparse',
                                                    tempfile.gettempdir())),
        ('ids', lambda: self.make('sparse', 5).gather([5])),
        ('ids', lambda: self.make('sparse', 5).gather([[1]])),
        ('rows', lambda: self.make('sparse', 5).scatter([1], {'c': 1})),
        ('rows', lambda: self.make('sparse', 5).scatter(
            [1, 2], rows_for([1]))),
    ]
    for name, call in cases:
      with self.subTest(name), self.assertRaisesRegex(ValueError, name):
        call()


class SamplePopulationTest(absltest.TestCase):

  def test_deterministic_distinct_and_in_range(self):
    a = population.sample_population(10**6, 1000, 7, 3)
    np.testing.assert_array_equal(a, population.sample_population(
        10**6, 1000, 7, 3))
    self.assertEqual(a.shape, (1000,))
    self.assertLen(np.unique(a), 1000)
    self.assertTrue(np.all((a >= 0) & (a < 10**6)))
    self.assertFalse(np.array_equal(
        np.sort(a), np.sort(population.sample_population(10**6, 1000, 7, 4))))
    self.assertFalse(np.array_equal(
        np.sort(a), np.sort(population.sample_population(10**6, 1000, 8, 3))))
    # O(C) whatever N: N = 10^15 would not fit as any per-client array.
    big = population.sample_population(10**15, 10, 0, 0)
    self.assertLen(np.unique(big), 10)
    everyone = population.sample_population(50, 50, 0, 0)
    np.testing.assert_array_equal(np.sort(everyone), np.arange(50))

  def test_roughly_uniform(self):
    counts = np.zeros(20)
    for r in range(2000):
      counts[population.sample_population(20, 5, 0, r)] += 1
    # Each client in 5/20 of 2000 cohorts: 500 +- ~3 sigma (sigma ~ 19).
    self.assertLess(np.abs(counts - 500).max(), 70)

  def test_bad_arguments(self):
    for name, args in (('num_clients', (0, 0)), ('cohort_size', (5, -1)),
                       ('cohort_size', (5, 6))):
      with self.subTest(name), self.assertRaisesRegex(ValueError, name):
        population.sample_population(*args, 0, 0)


class HostStoreRoundTest(absltest.TestCase):

  def test_scaffold_rounds_equal_the_in_device_store(self):
    num_clients, cohort_size = 12, 4

    def noisy_loss(params, batch, key):  # Uses each client's own key.
      loss, metrics = _testing.linear_loss(params, batch, key)
      return loss + 0.1 * jnp.vdot(jax.random.normal(key, (3,)),
                                   params['w']), metrics

    algorithm = algorithms.scaffold(noisy_loss, 0.05,
                                    optax.sgd(1.0), num_clients=num_clients)
    apply = jax.jit(algorithm.apply)
    params = _testing.linear_params()
    init_row = algorithm.init_client_state(params)
    device_store = core.tree_broadcast(init_row, num_clients)
    host = population.HostClientStore(jax.device_get(init_row), num_clients)
    state_device = state_host = algorithm.init(params)
    key = jax.random.key(0)
    for r in range(3):  # Overlapping cohorts: rows written, then re-read.
      ids = population.sample_population(num_clients, cohort_size, 0, r)
      cohort = _testing.random_cohort(cohort_size, 2, 3, seed=r)._replace(
          client_ids=jnp.asarray(ids, jnp.int32))
      state_device, device_store, m_device = apply(state_device,
                                                   device_store, cohort, key)
      state_host, m_host = population.run_round_with_host_store(
          apply, state_host, host, cohort, key)
      test_utils.assert_trees_all_close(state_host, state_device,
                                        rtol=1e-6, atol=1e-7)
      test_utils.assert_trees_all_close(m_host, m_device, rtol=1e-6,
                                        atol=1e-7)
    everyone = np.arange(num_clients)
    test_utils.assert_trees_all_close(host.gather(everyone),
                                      jax.device_get(device_store),
                                      rtol=1e-6, atol=1e-7)
    self.assertGreater(host.num_visited, cohort_size)

  def test_cohort_view_sets_store_rows_and_keeps_ids(self):
    cohort = _testing.random_cohort(3, 1, 2)._replace(
        client_ids=np.array([10, 4, 7], np.int32))
    view = population.cohort_view(cohort)
    np.testing.assert_array_equal(view.store_rows, [0, 1, 2])
    np.testing.assert_array_equal(view.rows(), [0, 1, 2])
    self.assertIs(view.client_ids, cohort.client_ids)
    self.assertIs(view.batches, cohort.batches)
    np.testing.assert_array_equal(cohort.rows(), [10, 4, 7])


class RunRoundsHostStoreTest(absltest.TestCase):

  def test_run_rounds_with_a_host_store_equals_the_device_store(self):
    num_clients, cohort_size = 10, 3
    algorithm = algorithms.scaffold(_testing.linear_loss, 0.05,
                                    optax.sgd(1.0), num_clients=num_clients)
    params = _testing.linear_params()

    def cohorts(r):
      ids = population.sample_population(num_clients, cohort_size, 0, r)
      return _testing.random_cohort(cohort_size, 2, 3, seed=r)._replace(
          client_ids=np.asarray(ids, np.int32))

    def run(workdir, rounds, host=None, resume=False):
      return training.run_rounds(
          algorithm, params, num_clients=num_clients, cohorts=cohorts,
          rounds=rounds, key=jax.random.key(0), workdir=workdir,
          eval_every=2, checkpoint_every=2, resume=resume,
          tensorboard=False, host_store=host, log=lambda _: None)

    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp, True)
    device = run(f'{tmp}/device', 5)
    new_store = lambda: population.HostClientStore(
        jax.device_get(algorithm.init_client_state(params)), num_clients)
    host = run(f'{tmp}/host', 5, new_store())
    test_utils.assert_trees_all_close(host.state, device.state, atol=1e-6)
    test_utils.assert_trees_all_close(
        host.client_store.gather(np.arange(num_clients)),
        jax.device_get(device.client_store), atol=1e-6)
    self.assertEqual([l['round'] for l in host.metrics], [2, 4, 5])
    # Stopped after round 4 (checkpointed with its visited rows), resumed
    # into a fresh store: the same as the uninterrupted run.
    run(f'{tmp}/resumed', 4, new_store())
    resumed = run(f'{tmp}/resumed', 5, new_store(), resume=True)
    test_utils.assert_trees_all_close(resumed.state, host.state, atol=0)
    test_utils.assert_trees_all_close(
        resumed.client_store.gather(np.arange(num_clients)),
        host.client_store.gather(np.arange(num_clients)), atol=0)
    with self.assertRaisesRegex(TypeError, 'host_store must be'):
      run(f'{tmp}/bad', 1, host={})
    untimed = lambda lines: [{k: v for k, v in l.items()
                              if k not in ('elapsed_s', 'round_time_s')}
                             for l in lines]
    self.assertEqual(untimed(resumed.metrics), untimed(host.metrics))


if __name__ == '__main__':
  absltest.main()
