"""The Synthetic(alpha, beta) generator, checked against its definition."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fedjax_ext.data import _synthetic

SPEC = _synthetic.SyntheticSpec()


def per_device(columns, column):
  return [columns[column][columns['client_id'] == k]
          for k in range(SPEC.num_devices)]


class SyntheticTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = _synthetic.generate(SPEC)

  def test_shapes_dtypes_and_sizes(self):
    train, test = self.data['train'], self.data['test']
    self.assertEqual(train['x'].shape[1:], (60,))
    self.assertEqual(train['x'].dtype, np.float32)
    self.assertEqual(train['y'].dtype, np.int64)
    sizes = _synthetic.device_sizes(30, np.random.default_rng(SPEC.seed))
    self.assertGreaterEqual(sizes.min(), 50)
    np.testing.assert_array_equal(
        np.bincount(train['client_id'], minlength=30), (0.9 * sizes).astype(
            int))
    np.testing.assert_array_equal(
        np.bincount(train['client_id']) + np.bincount(test['client_id']),
        sizes)
    self.assertEqual(set(np.unique(train['y'])), set(range(10)))

  def test_deterministic(self):
    again = _synthetic.generate(SPEC)
    for split in ('train', 'test'):
      for column, values in self.data[split].items():
        np.testing.assert_array_equal(values, again[split][column])

  def test_feature_variance_decays_as_power_law(self):
    # Within a device x - v_k ~ N(0, diag(j^-1.2)); pool centred features.
    centred = np.concatenate([x - x.mean(0) for x in
                              per_device(self.data['train'], 'x')])
    expected = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(centred.var(0), expected, rtol=0.1)

  def test_labels_are_argmax_of_a_linear_model_per_device(self):
    # A device's labels are a linear argmax of x: a 10-class linear program
    # separates them, so least squares on one-hot targets fits most.
    xs, ys = per_device(self.data['train'], 'x'), per_device(
        self.data['train'], 'y')
    biggest = int(np.argmax([len(y) for y in ys]))
    x = np.c_[xs[biggest], np.ones(len(ys[biggest]))]
    onehot = np.eye(10)[ys[biggest]]
    fit = np.linalg.lstsq(x, onehot, rcond=None)[0]
    self.assertGreater(np.mean(np.argmax(x @ fit, 1) == ys[biggest]), 0.7)

  def test_heterogeneity_grows_with_beta(self):
    # beta is the std of the per-device input means' centres B_k.
    def spread(alpha_beta):
      data = _synthetic.generate(SPEC._replace(alpha=alpha_beta,
                                               beta=alpha_beta))
      means = [x.mean() for x in per_device(data['train'], 'x')]
      return np.std(means)
    self.assertLess(spread(0.), 0.5)  # v_k ~ N(0, 1): mean over 60 ~ 0.13.
    self.assertGreater(spread(3.), 1.5)

  def test_iid_devices_share_the_input_distribution_and_model(self):
    data = _synthetic.generate(SPEC._replace(alpha=0., beta=0., iid=True))
    xs = per_device(data['train'], 'x')
    ys = per_device(data['train'], 'y')
    for x in xs:
      np.testing.assert_allclose(x.mean(0)[:5], 0., atol=0.5)
    # One shared model: every device's label histogram is close to the
    # pooled one; non-iid devices differ a lot.
    def max_tv(ys):
      pooled = np.bincount(np.concatenate(ys), minlength=10) / sum(map(len,
                                                                       ys))
      big = [y for y in ys if len(y) >= 200]
      return max(0.5 * np.abs(np.bincount(y, minlength=10) / len(y)
                              - pooled).sum() for y in big)
    self.assertLess(max_tv(ys), 0.2)
    self.assertGreater(max_tv(per_device(self.data['train'], 'y')), 0.4)


if __name__ == '__main__':
  absltest.main()
