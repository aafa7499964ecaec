"""Validation: each problem is caught and its message names the field."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fedjax_ext.data import _validate


def good(n=6):
  return {'x': np.zeros((n, 2, 2, 1), np.float32),
          'y': np.arange(n, dtype=np.int32) % 3,
          'client_id': np.arange(n, dtype=np.int64)}


class ValidateExamplesTest(parameterized.TestCase):

  def test_good_examples_pass(self):
    _validate.validate_examples(good(), num_classes=3, where='toy/train')

  def test_error_is_a_value_error(self):
    self.assertTrue(issubclass(_validate.DataError, ValueError))

  def test_nan_and_inf_counted_with_first_index(self):
    examples = good()
    examples['x'][2, 0, 1, 0] = np.nan
    examples['x'][4, 1, 1, 0] = -np.inf
    with self.assertRaisesRegex(
        _validate.DataError,
        r"toy/train: column 'x' .*NaN or Inf.* in 2 example\(s\); first at "
        r'index 2'):
      _validate.validate_examples(examples, num_classes=3, where='toy/train')

  @parameterized.parameters(-1, 3, 99)
  def test_label_out_of_range_shows_value(self, bad):
    examples = good()
    examples['y'][4] = bad
    with self.assertRaisesRegex(
        _validate.DataError,
        rf"column 'y' has 1 label\(s\) outside \[0, 3\); first at index 4: "
        rf'value {bad}'):
      _validate.validate_examples(examples, num_classes=3, where='toy')

  def test_token_labels(self):
    examples = {'x': np.ones((4, 5), np.int32),
                'y': np.zeros((4, 5), np.int32)}
    _validate.validate_examples(examples, num_classes=3, where='text')
    examples['y'][2, 3] = 7
    with self.assertRaisesRegex(
        _validate.DataError,
        r"text: column 'y' has 1 label\(s\) outside \[0, 3\); first at "
        r'index \(2, 3\): value 7'):
      _validate.validate_examples(examples, num_classes=3, where='text')
    examples['y'] = np.zeros((4, 5, 2), np.int32)
    with self.assertRaisesRegex(_validate.DataError, r'\[N, T\].*\(4, 5, 2\)'):
      _validate.validate_examples(examples, num_classes=3, where='text')

  def test_float_labels_rejected(self):
    examples = dict(good(), y=np.zeros(6, np.float32))
    with self.assertRaisesRegex(_validate.DataError, "column 'y'.*float32"):
      _validate.validate_examples(examples, num_classes=3, where='toy')

  def test_mismatched_lengths_name_columns_and_lengths(self):
    examples = dict(good(), y=np.zeros(5, np.int32))
    with self.assertRaisesRegex(
        _validate.DataError,
        r"different lengths \('client_id': 6, 'x': 6, 'y': 5\)"):
      _validate.validate_examples(examples, num_classes=3, where='toy')

  @parameterized.parameters('x', 'y')
  def test_missing_column_named(self, column):
    examples = good()
    del examples[column]
    with self.assertRaisesRegex(_validate.DataError,
                                rf"missing column\(s\) \['{column}'\]"):
      _validate.validate_examples(examples, num_classes=3, where='toy')

  def test_empty_dataset(self):
    with self.assertRaisesRegex(_validate.DataError, 'toy/test: .*empty'):
      _validate.validate_examples(good(0), num_classes=3, where='toy/test')

  def test_integer_features_need_no_finiteness_check(self):
    examples = dict(good(), x=np.ones((6, 3), np.uint8))
    _validate.validate_examples(examples, num_classes=3, where='toy')
    with self.assertRaisesRegex(_validate.DataError, "column 'x'.*numeric"):
      _validate.validate_examples(dict(good(), x=np.array(['a'] * 6)),
                                  num_classes=3, where='toy')


class ValidatePartitionTest(parameterized.TestCase):

  def test_good_partition_passes_even_if_not_covering(self):
    _validate.validate_partition([np.array([0, 2]), np.array([5])], 6)

  def test_empty_client_named(self):
    with self.assertRaisesRegex(_validate.DataError, 'client 1 is empty'):
      _validate.validate_partition([np.array([0]), np.array([], np.int64)],
                                   3)

  def test_no_clients(self):
    with self.assertRaisesRegex(_validate.DataError, 'no clients'):
      _validate.validate_partition([], 3)

  @parameterized.parameters(-1, 3)
  def test_out_of_range_index(self, bad):
    with self.assertRaisesRegex(_validate.DataError,
                                rf'client 1 has index {bad} outside \[0, 3\)'):
      _validate.validate_partition([np.array([0]), np.array([1, bad])], 3)

  def test_duplicate_across_clients_names_both(self):
    with self.assertRaisesRegex(
        _validate.DataError, r'index 2 is held 2 times \(by client\(s\) '
        r'\[0, 2\]\)'):
      _validate.validate_partition(
          [np.array([0, 2]), np.array([1]), np.array([2, 3])], 4)

  def test_duplicate_within_client(self):
    with self.assertRaisesRegex(_validate.DataError,
                                r'index 1 is held 2 times \(by client\(s\) '
                                r'\[0\]\)'):
      _validate.validate_partition([np.array([1, 1])], 4)

  def test_float_indices_rejected(self):
    with self.assertRaisesRegex(_validate.DataError, 'non-integer'):
      _validate.validate_partition([np.array([0., 1.])], 4)


if __name__ == '__main__':
  absltest.main()
