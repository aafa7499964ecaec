"""Test assertions, wrapped so that tests do not depend on chex directly.

Optax dropped chex in 2026 (STYLE_ANCHORS.md, finding 1); keeping the one
dependency here means swapping it out touches one file.
"""

import chex

assert_trees_all_close = chex.assert_trees_all_close
assert_trees_all_equal = chex.assert_trees_all_equal
assert_tree_all_finite = chex.assert_tree_all_finite
assert_shape = chex.assert_shape
assert_max_traces = chex.assert_max_traces
clear_trace_counter = chex.clear_trace_counter


def bad_calls_test_case(bad_calls):
  """A test case over ``(name, call, expected)`` rows of bad calls.

  Each row's ``call()`` must raise a ValueError or TypeError whose message
  contains ``expected`` (the argument's name and its allowed values).
  """
  from absl.testing import parameterized  # pylint: disable=g-import-not-at-top

  class BadCallsTest(parameterized.TestCase):

    @parameterized.named_parameters(*bad_calls)
    def test_bad_argument_is_named(self, call, expected):
      with self.assertRaises((ValueError, TypeError)) as caught:
        call()
      self.assertIn(expected, str(caught.exception))

  return BadCallsTest
