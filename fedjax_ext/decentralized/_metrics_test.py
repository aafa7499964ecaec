"""Consensus distance, LoRA cross-term error and per-node accuracies."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from fedjax_ext import decentralized
from fedjax_ext._src import test_utils


class MetricsTest(absltest.TestCase):

  def test_consensus_distance_by_hand(self):
    # Leaf 'a': rows (0, 0) and (2, 0) -> mean (1, 0), squared distances
    # 1 and 1; leaf 'b': 1 and 3 -> mean 2, distances 1 and 1. Mean over
    # nodes, summed over leaves: 1 + 1.
    rows = {'a': jnp.array([[0., 0.], [2., 0.]]), 'b': jnp.array([1., 3.])}
    np.testing.assert_allclose(decentralized.consensus_distance(rows), 2.)
    self.assertEqual(float(decentralized.consensus_distance(
        {'a': jnp.ones((3, 2))})), 0.)
    self.assertEqual(float(decentralized.consensus_distance({})), 0.)

  def test_cross_term_error_by_hand(self):
    # N = 2, r = 1, in = 2, out = 1: B1 A1 = [1, 0], B2 A2 = [0, 0]; mean
    # [.5, 0]. mean B = .5, mean A = [.5, .5]: product [.25, .25].
    # || [.25, -.25] || = sqrt(.125).
    adapters = {'k': {'A': jnp.array([[[1., 0.]], [[0., 1.]]]),
                      'B': jnp.array([[[1.]], [[0.]]])}}
    np.testing.assert_allclose(
        decentralized.lora_cross_term_error(adapters), np.sqrt(.125),
        rtol=1e-6)
    np.testing.assert_allclose(
        decentralized.lora_cross_term_error(adapters, scale=2.),
        2 * np.sqrt(.125), rtol=1e-6)
    # Equal A's (or equal B's): no cross term; targets add up.
    same_a = {'k': {'A': jnp.ones((3, 2, 4)),
                    'B': jnp.arange(18.).reshape(3, 3, 2)}}
    self.assertLess(float(decentralized.lora_cross_term_error(same_a)), 1e-5)
    np.testing.assert_allclose(
        decentralized.lora_cross_term_error({**adapters, 'j': adapters['k']}),
        2 * np.sqrt(.125), rtol=1e-6)

  def test_node_accuracies(self):
    # Node i predicts class i for everything: accuracy = share of label i.
    store = {'bias': jnp.eye(3) * 10.}
    x = jnp.zeros((4, 2))
    y = jnp.array([0, 0, 1, 2])

    def predict(row, inputs):
      return jnp.zeros((inputs.shape[0], 3)) + row['bias']

    accs = decentralized.node_accuracies(predict, store, {'x': x, 'y': y})
    np.testing.assert_allclose(accs, [.5, .25, .25])
    masked = decentralized.node_accuracies(
        predict, store, {'x': x, 'y': y, 'mask': jnp.array([1, 0, 1, 1])})
    np.testing.assert_allclose(masked, [1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    # Per-node test sets: node i's own labels are all i.
    own = decentralized.node_accuracies(
        predict, store, {'x': jnp.zeros((3, 2, 2)),
                         'y': jnp.repeat(jnp.arange(3)[:, None], 2, 1)},
        per_node=True)
    np.testing.assert_allclose(own, np.ones(3))
    summary = decentralized.node_accuracy_metrics(
        predict, store, {'x': x, 'y': y})
    np.testing.assert_allclose(summary['node_accuracy_mean'], 1 / 3,
                               rtol=1e-6)
    np.testing.assert_allclose(summary['node_accuracy_std'],
                               np.std([.5, .25, .25]), rtol=1e-5)
    self.assertEqual(float(summary['node_accuracy_max']), .5)


BAD_CALLS = (
    ('cross_term_factor', lambda: decentralized.lora_cross_term_error(
        {'k': {'A': jnp.ones((2, 1, 2))}}), "needs both 'A' and 'B'"),
    ('cross_term_stacked', lambda: decentralized.lora_cross_term_error(
        {'k': {'A': jnp.ones((1, 2)), 'B': jnp.ones((2, 1))}}),
     'stacked over nodes'),
    ('consensus_rows', lambda: decentralized.consensus_distance(
        {'a': jnp.ones((2, 3)), 'b': jnp.ones((3,))}), 'stacked over nodes'),
    ('examples', lambda: decentralized.node_accuracies(
        lambda r, x: x, {'w': jnp.ones((2, 1))}, {'x': jnp.ones((2, 1))}),
     "'x' and 'y'"),
)

BadCallsTest = test_utils.bad_calls_test_case(BAD_CALLS)

if __name__ == '__main__':
  absltest.main()
