"""`prefetch` keeps order and passes errors through."""

from absl.testing import absltest

from fedjax_ext.training._prefetch import prefetch


class PrefetchTest(absltest.TestCase):

  def test_order_and_completeness(self):
    self.assertEqual(list(prefetch(iter(range(50)), size=3)), list(range(50)))

  def test_producer_errors_reach_the_consumer(self):

    def broken():
      yield 1
      raise ValueError('bad cohort')

    items = prefetch(broken())
    self.assertEqual(next(items), 1)
    with self.assertRaisesRegex(ValueError, 'bad cohort'):
      next(items)


if __name__ == '__main__':
  absltest.main()
