"""The split round: equivalences with SGD, FedAvg and between variants."""

import functools
import inspect

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext import split
from fedjax_ext._src import test_utils

KEY = jax.random.key(0)
MLP = models.MLP(num_classes=3, hidden_sizes=(5, 4))
PARAMS = MLP.init(jax.random.key(1), jnp.ones((1, 3)))['params']


def cohort(num_clients=3, num_steps=2, batch_size=4, seed=0, pad=True):
  """Random MLP data; client 1 has a padded row and (S > 1) a padded step."""
  rng = np.random.default_rng(seed)
  shape = (num_clients, num_steps, batch_size)
  mask = np.ones(shape, np.float32)
  if pad and num_clients > 1:
    mask[1, 0, -1] = 0.
    if num_steps > 1:
      mask[1, -1] = 0.
  return core.Cohort(
      np.arange(num_clients, dtype=np.int32),
      {'x': rng.normal(size=shape + (3,)).astype(np.float32),
       'y': rng.integers(0, 3, size=shape).astype(np.int32), 'mask': mask},
      (np.arange(num_clients) + 2.).astype(np.float32))


def run(algorithm, data, params=PARAMS, rounds=1, state=None):
  state = algorithm.init(params) if state is None else state
  store = core.tree_broadcast(algorithm.init_client_state(params),
                              data.client_ids.shape[0])
  for _ in range(rounds):
    state, store, metrics = jax.jit(algorithm.apply)(state, store, data, KEY)
  return state, store, metrics


@functools.cache
def psl_reference():
  """PSL (client parts FedAvg'd), 2 rounds: the run several variants match."""
  model = split.split_model(MLP, 1)
  return run(split.psl(model, optax.sgd(0.1), optax.adam(0.01),
                       aggregate_clients=True), cohort(), rounds=2)


def rows(store, i):
  return jax.tree.map(lambda v: v[i], store)


class EquivalenceTest(parameterized.TestCase):

  def test_psl_one_client_one_step_equals_sgd_on_the_whole_model(self):
    how = 'sequential'  # The sketch's vmap path is what the others run.
    data = cohort(1, 1, 5)
    model = split.split_model(MLP, 1)
    state, store, _ = run(split.psl(model, optax.sgd(0.3), optax.sgd(0.3),
                                    execution=how), data)
    loss = clients.classification_loss(MLP)
    grads = jax.grad(lambda p: loss(p, jax.tree.map(
        lambda v: v[0, 0], data.batches), KEY)[0])(PARAMS)
    expected = jax.tree.map(lambda p, g: p - 0.3 * g, PARAMS, grads)
    client, server = model.split_params(expected)
    test_utils.assert_trees_all_close(rows(store, 0), client, atol=1e-6)
    test_utils.assert_trees_all_close(state.server_params, server, atol=1e-6)
    test_utils.assert_trees_all_close(
        split.psl(model, optax.sgd(0.3), optax.sgd(0.3)).model_params(
            state, store), expected, atol=1e-6)

  def test_sfl_v1_with_one_local_step_equals_fedavg(self):
    data = cohort(3, 1, 4)
    model = split.split_model(MLP, 2)
    sfl = split.sfl_v1(model, optax.sgd(0.2), optax.sgd(0.2))
    state, store, _ = run(sfl, data, rounds=2)
    fedavg = core.federated_algorithm(
        clients.local_sgd(clients.classification_loss(MLP), optax.sgd(0.2)),
        aggregators.weighted_mean(), optax.sgd(1.0))
    f_state = fedavg.init(PARAMS)
    for _ in range(2):
      f_state, _, _ = jax.jit(fedavg.apply)(f_state, (), data, KEY)
    test_utils.assert_trees_all_close(sfl.model_params(state, store),
                                      f_state.params, atol=1e-5)

  def test_epsl_with_phi_zero_equals_psl(self):
    model = split.split_model(MLP, 1)
    got = run(split.epsl(model, optax.sgd(0.1), optax.adam(0.01), phi=0.,
                         aggregate_clients=True), cohort(), rounds=2)
    test_utils.assert_trees_all_equal(got[:2], psl_reference()[:2])

  def test_unstable_with_drop_probability_zero_equals_psl(self):
    data = cohort()
    data = data._replace(info={'drop_prob': np.zeros(3, np.float32)})
    model = split.split_model(MLP, 1)
    got = run(split.unstable_sfl(model, optax.sgd(0.1), optax.adam(0.01)),
              data, rounds=2)
    test_utils.assert_trees_all_equal(got[:2], psl_reference()[:2])
    self.assertEqual(float(got[2]['participation']), 1.)

  def test_vanilla_sl_with_one_client_equals_psl_with_one_client(self):
    data = cohort(1, 3, 4)
    model = split.split_model(MLP, 2)
    args = (model, optax.sgd(0.1), optax.sgd(0.05))
    psl = split.psl(*args)
    p_state, p_store, _ = run(psl, data, rounds=2)
    sl = split.vanilla_sl(*args)
    s_state, s_store, _ = run(sl, data, rounds=2)
    test_utils.assert_trees_all_equal(s_state.client_params,
                                      rows(p_store, 0))
    test_utils.assert_trees_all_equal(s_state.server_params,
                                      p_state.server_params)
    test_utils.assert_trees_all_equal(sl.model_params(s_state, s_store),
                                      psl.model_params(p_state, p_store))

  def test_ushaped_one_client_one_step_equals_sgd(self):
    data = cohort(1, 1, 5)
    model = split.split_model(MLP, 1, tail_cut=2)
    state, store, _ = run(split.ushaped_psl(model, optax.sgd(0.3),
                                            optax.sgd(0.3)), data)
    loss = clients.classification_loss(MLP)
    grads = jax.grad(lambda p: loss(p, jax.tree.map(
        lambda v: v[0, 0], data.batches), KEY)[0])(PARAMS)
    expected = jax.tree.map(lambda p, g: p - 0.3 * g, PARAMS, grads)
    head, body, tail = model.split_params(expected)
    test_utils.assert_trees_all_close(rows(store, 0), (head, tail),
                                      atol=1e-6)
    test_utils.assert_trees_all_close(state.server_params, body, atol=1e-6)


class ProtocolTest(absltest.TestCase):

  def test_local_loss_sends_no_gradients_and_ignores_server_params(self):
    data = cohort()
    model = split.split_model(MLP, 1)
    algorithm = split.local_loss_sl(model, optax.sgd(0.1), optax.sgd(0.1),
                                    aggregate_clients=False)
    other = jax.tree.map(lambda v: v + 1., PARAMS)
    other = model.merge_params(model.split_params(PARAMS)[0],
                               model.split_params(other)[1])
    state, store, metrics = run(algorithm, data)
    state2, store2, _ = run(algorithm, data, params=other)
    self.assertEqual(float(metrics['gradient_download_bytes_per_client']),
                     0.)
    self.assertGreater(float(metrics['activation_upload_bytes_per_client']),
                       0.)
    test_utils.assert_trees_all_equal(store, store2)  # Client parts + heads.
    self.assertFalse(np.allclose(state.server_params['logits']['kernel'],
                                 state2.server_params['logits']['kernel']))


  def test_ushaped_server_never_sees_labels(self):
    data = cohort()
    model = split.split_model(MLP, 1, tail_cut=2)
    seen = []

    def recording_server(params, activations):
      seen.append([jnp.result_type(v) for v in
                   jax.tree.leaves((params, activations))])
      seen[-1].append(jnp.shape(activations))
      return model.server_apply(params, activations)

    recorded = model._replace(server_apply=recording_server)
    self.assertEqual(list(inspect.signature(model.server_apply).parameters),
                     ['params', 'x'])
    algorithm = split.ushaped_psl(recorded, optax.sgd(0.1), optax.sgd(0.1))
    _, _, metrics = run(algorithm, data)
    self.assertTrue(seen)
    for call in seen:
      self.assertTrue(all(jnp.issubdtype(t, jnp.floating)
                          for t in call[:-1]))
      self.assertEqual(call[-1][-1], 5)  # Activations [..., 5], not y.
    self.assertEqual(float(metrics['label_upload_bytes_per_client']), 0.)

  def test_a_dropped_client_keeps_its_params(self):
    data = cohort(pad=False)
    data = data._replace(info={'drop_prob': np.array([1 - 1e-7, 0., 0.],
                                                     np.float32)})
    model = split.split_model(MLP, 1)
    algorithm = split.unstable_sfl(model, optax.sgd(0.1), optax.sgd(0.1),
                                   compensation='none',
                                   aggregate_clients=False)
    _, store, metrics = run(algorithm, data)
    test_utils.assert_trees_all_equal(rows(store, 0),
                                      model.split_params(PARAMS)[0])
    self.assertFalse(np.allclose(rows(store, 1)['hidden_0']['kernel'],
                                 PARAMS['hidden_0']['kernel']))
    np.testing.assert_allclose(metrics['participation'], 2 / 3)


BAD_CALLS = (
    ('client_side', lambda: split.split_algorithm(
        split.split_model(MLP, 1), optax.sgd(1.), optax.sgd(1.),
        client_side='x'), 'client_side'),
    ('schedule', lambda: split.split_algorithm(
        split.split_model(MLP, 1), optax.sgd(1.), optax.sgd(1.),
        schedule='x'), 'schedule'),
    ('tail_needs_ushaped', lambda: split.ushaped_psl(
        split.split_model(MLP, 1), optax.sgd(1.), optax.sgd(1.)),
     'tail_cut'),
    ('phi', lambda: split.epsl(split.split_model(MLP, 1), optax.sgd(1.),
                               optax.sgd(1.), phi=2.), 'phi'),
    ('drop_prob', lambda: split.unstable_sfl(
        split.split_model(MLP, 1), optax.sgd(1.), optax.sgd(1.),
        drop_prob=1.), 'Failures.upload'),
    ('compensation', lambda: split.unstable_sfl(
        split.split_model(MLP, 1), optax.sgd(1.), optax.sgd(1.),
        compensation='x'), 'compensation'),
    ('weighting', lambda: split.psl(split.split_model(MLP, 1),
                                    optax.sgd(1.), optax.sgd(1.),
                                    weighting='x'), 'weighting'),
)


class BadCallsTest(test_utils.bad_calls_test_case(BAD_CALLS)):
  pass


if __name__ == '__main__':
  absltest.main()
