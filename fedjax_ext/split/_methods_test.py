"""GAPSL's aligned server (the other variants are tested in _round_test)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import optax

from fedjax_ext import split
from fedjax_ext._src import test_utils
from fedjax_ext.split import _round_test

MLP = _round_test.MLP
PARAMS = _round_test.PARAMS


class GapslTest(parameterized.TestCase):

  def test_lam_zero_is_psl(self):
    model = split.split_model(MLP, 1)
    got = _round_test.run(
        split.gapsl(model, optax.sgd(0.1), optax.adam(0.01), lam=0.,
                    aggregate_clients=True), _round_test.cohort(), rounds=2)
    expected = _round_test.psl_reference()
    test_utils.assert_trees_all_close(got[0].client_params,
                                      expected[0].client_params, atol=1e-6)
    test_utils.assert_trees_all_close(got[0].server_params,
                                      expected[0].server_params, atol=1e-6)
    self.assertIn('gapsl_mean_cosine', got[2])

  def test_leader_and_regularizer_train(self):
    leader, alignment = 'top_fraction', 'regularize'
    data = _round_test.cohort()
    model = split.split_model(MLP, 1)
    algorithm = split.gapsl(model, optax.sgd(0.1), optax.sgd(0.1),
                            leader=leader, alignment=alignment, lam=1.)
    state, store, metrics = _round_test.run(algorithm, data)
    test_utils.assert_tree_all_finite((state, store))
    self.assertGreater(float(metrics['gapsl_leaders']), 0.)
    self.assertGreater(
        float(np.abs(jax.tree.leaves(state.algorithm_state)[0]).sum()), 0.)


BAD_CALLS = (
    ('leader', lambda: split.gapsl_server(optax.sgd(1.), leader='x'),
     'leader'),
    ('alignment', lambda: split.gapsl_server(optax.sgd(1.), alignment='x'),
     'alignment'),
    ('rho', lambda: split.gapsl_server(optax.sgd(1.), rho=0.), 'rho'),
    ('zeta', lambda: split.gapsl_server(optax.sgd(1.), zeta=1.), 'zeta'),
    ('lam', lambda: split.gapsl_server(optax.sgd(1.), lam=-1.), 'lam'),
)


class BadCallsTest(test_utils.bad_calls_test_case(BAD_CALLS)):
  pass


if __name__ == '__main__':
  absltest.main()
