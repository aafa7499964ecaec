"""Split models: the parts compose to the unsplit model, params round-trip."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import models
from fedjax_ext import split
from fedjax_ext._src import test_utils

MLP = models.MLP(num_classes=3, hidden_sizes=(5, 4))
CNN = models.EmnistCNN(num_classes=4)


def _init(model, x):
  return model.init(jax.random.key(0), x)['params']


class SplitForwardTest(parameterized.TestCase):

  @parameterized.parameters(1, 2)
  def test_mlp_split_forward_equals_the_unsplit_model(self, cut):
    x = jax.random.normal(jax.random.key(1), (6, 2, 3))
    params = _init(MLP, x)
    model = split.split_model(MLP, cut)
    client, server = model.split_params(params)
    np.testing.assert_array_equal(
        model.server_apply(server, model.client_apply(client, x)),
        MLP.apply({'params': params}, x))
    self.assertEqual(model.client_apply(client, x).shape,
                     (6, (5, 4)[cut - 1]))
    self.assertEqual(model.cut_features, (5, 4)[cut - 1])

  def test_cnn_split_forward_equals_the_unsplit_model(self):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    params = _init(CNN, x)
    expected = CNN.apply({'params': params}, x)
    for cut in (1, 2, 3):
      model = split.split_model(CNN, cut)
      client, server = model.split_params(params)
      acts = model.client_apply(client, x)
      self.assertEqual(acts.shape[-1], model.cut_features)
      np.testing.assert_array_equal(model.server_apply(server, acts),
                                    expected)

  @parameterized.parameters((MLP, 1, 2), (CNN, 2, 3))
  def test_ushaped_forward_and_round_trip(self, full, cut, tail_cut):
    x = jnp.ones((2, 8, 8, 1))
    params = _init(full, x)
    model = split.split_model(full, cut, tail_cut=tail_cut)
    head, body, tail = model.split_params(params)
    np.testing.assert_array_equal(
        model.tail_apply(tail, model.server_apply(
            body, model.client_apply(head, x))),
        full.apply({'params': params}, x))
    test_utils.assert_trees_all_equal(model.merge_params(head, body, tail),
                                      params)

  @parameterized.parameters(1, 2)
  def test_merge_of_split_is_identity(self, cut):
    params = _init(MLP, jnp.ones((1, 3)))
    model = split.split_model(MLP, cut)
    merged = model.merge_params(*model.split_params(params))
    test_utils.assert_trees_all_equal(merged, params)
    self.assertEqual(list(merged), list(params))

  def test_aux_head_pools_conv_activations(self):
    model = split.split_model(CNN, 1)
    head = split.aux_head(model)
    logits = head.apply(head.init(), jnp.ones((2, 6, 6, 32)))
    self.assertEqual(logits.shape, (2, 4))


BAD_CALLS = (
    ('cut_zero', lambda: split.split_model(MLP, 0),
     'cut (layers hidden_0, hidden_1, logits) must be in [1, 2], got 0'),
    ('cut_too_deep', lambda: split.split_model(CNN, 4),
     'cut (layers conv1, conv2, dense, logits) must be in [1, 3], got 4'),
    ('cut_not_int', lambda: split.split_model(MLP, 1.5), 'must be an integer'),
    ('tail_cut', lambda: split.split_model(CNN, 2, tail_cut=2),
     'tail_cut must be in [3, 3], got 2'),
    ('ushaped_cut', lambda: split.split_model(CNN, 3, tail_cut=3),
     'must be in [1, 2], got 3'),
    ('logistic', lambda: split.split_model(
        models.LogisticRegression(num_classes=2), 1), 'MLP and models'),
    ('dropout', lambda: split.split_model(
        models.EmnistCNN(dropout_rate=0.5), 1), 'dropout_rate'),
    ('split_params', lambda: split.split_model(MLP, 1).split_params(
        {'hidden_0': {}}), 'expected the params of layers'),
    ('merge_count', lambda: split.split_model(MLP, 1).merge_params({}),
     'takes the 2 parts'),
)


class BadCallsTest(test_utils.bad_calls_test_case(BAD_CALLS)):
  pass


if __name__ == '__main__':
  absltest.main()
