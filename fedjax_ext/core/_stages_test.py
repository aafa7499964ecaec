"""The public stages: weighting, and two rounds of other shapes built on them.

The sketches prove the seams that the split-learning and decentralized
issues need: (a) a split model whose client and server halves exchange
activations and gradients inside one compiled step, and (b) a gossip round
with one model per node in the client store and no server model.
"""

import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import aggregators
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext._src import test_utils
from fedjax_ext.core import _testing

KEY = jax.random.key(0)


def unequal_cohort():
  """Two clients, two full local steps each, dataset sizes n = (2, 6)."""
  cohort = _testing.random_cohort(2, 2, 2, seed=3)
  return cohort._replace(num_examples=np.array([2., 6.], np.float32))


class WeightingTest(parameterized.TestCase):

  def test_fixed_steps_weigh_by_dataset_size(self):
    # Both clients process S * B = 4 examples; FedAvg (McMahan et al.) and
    # FedJAX weigh them by their dataset sizes 2 and 6, i.e. 1/4 and 3/4.
    cohort = unequal_cohort()
    params = _testing.linear_params()
    local = [_testing.sgd_steps(params, jax.tree.map(lambda v, i=i: v[i],
                                                     cohort.batches), 0.05)
             for i in range(2)]
    update = clients.local_sgd(_testing.linear_loss, optax.sgd(0.05))
    expected = {
        'num_examples': (0.25, 0.75),
        'examples_processed': (0.5, 0.5),
        'uniform': (0.5, 0.5),
    }
    for weighting, (p0, p1) in expected.items():
      algorithm = core.federated_algorithm(
          update, aggregators.weighted_mean(), optax.sgd(1.0),
          weighting=weighting)
      state, _, metrics = jax.jit(algorithm.apply)(
          algorithm.init(params), (), cohort, KEY)
      by_hand = jax.tree.map(lambda a, b: p0 * a + p1 * b, *local)
      test_utils.assert_trees_all_close(state.params, by_hand, atol=1e-6)
      self.assertAlmostEqual(float(metrics['cohort_weight']),
                             {'num_examples': 8., 'examples_processed': 8.,
                              'uniform': 2.}[weighting])

  def test_a_client_without_data_keeps_weight_zero(self):
    outputs = core.ClientOutput(update=jnp.zeros((3, 1)),
                                weight=jnp.array([4., 0., jnp.nan]),
                                client_state=(), metrics={})
    cohort = core.Cohort(np.arange(3), {}, np.array([10., 20., 30.]))
    weights = core.weigh_clients(outputs, cohort, 'num_examples').weight
    np.testing.assert_array_equal(weights[:2], [10., 0.])
    self.assertTrue(np.isnan(weights[2]))  # Rejected stays rejected.

  def test_unknown_weighting_names_the_choices(self):
    with self.assertRaisesRegex(ValueError, 'num_examples, '
                                'examples_processed, uniform'):
      core.federated_algorithm(
          clients.local_sgd(_testing.linear_loss, optax.sgd(0.1)),
          aggregators.weighted_mean(), optax.sgd(1.0), weighting='examples')


class ExtraArgsTest(absltest.TestCase):

  def test_aggregator_sees_key_state_and_info(self):
    seen = {}

    def init(params):
      del params
      return ()

    def update(updates, state, params=None, *, weights, key, server_state,
               client_info, **extra):
      del params, extra
      seen.update(round=server_state.round, info=client_info, key=key)
      return core.tree_weighted_mean(updates, weights), state

    cohort = _testing.random_cohort(3, 1, 2)
    cohort = cohort._replace(info={'rank': np.array([1., 2., 4.],
                                                    np.float32)})
    algorithm = core.federated_algorithm(
        clients.local_sgd(_testing.linear_loss, optax.sgd(0.1)),
        core.Aggregator(init, update), optax.sgd(1.0))
    algorithm.apply(algorithm.init(_testing.linear_params()), (), cohort,
                    KEY)
    np.testing.assert_array_equal(seen['info']['rank'], [1., 2., 4.])
    self.assertIn('num_examples', seen['info'])
    np.testing.assert_array_equal(
        jax.random.key_data(seen['key']),
        jax.random.key_data(core.stage_key(KEY, 0, 1)))


class CheckTest(absltest.TestCase):

  def test_bad_cohorts_and_mapped_arguments_name_the_field(self):
    good = _testing.random_cohort(3, 2, 4)
    update = clients.local_sgd(_testing.linear_loss, optax.sgd(0.1))
    algorithm = core.federated_algorithm(update, aggregators.weighted_mean(),
                                         optax.sgd(1.0))
    state = algorithm.init(_testing.linear_params())
    bad = {
        'num_examples': good._replace(num_examples=np.ones(2)),
        "info['rank']": good._replace(info={'rank': np.ones(4)}),
        "batches['mask']": good._replace(
            batches={**good.batches, 'mask': np.ones((3, 2))}),
        "batches['x']": good._replace(
            batches={**good.batches, 'x': np.ones((3, 1, 4, 3))}),
    }
    for field, cohort in bad.items():
      with self.assertRaisesRegex(ValueError, re.escape(field)):
        algorithm.apply(state, (), cohort, KEY)
    with self.assertRaisesRegex(ValueError, 'disagree on the number of '
                                r'clients: 3 \(argument 0\), 2'):
      core.map_clients(lambda a, b: a + b, jnp.ones(3), jnp.ones(2))
    with self.assertRaisesRegex(ValueError, 'weights must have shape'):
      core.tree_weighted_mean({'a': jnp.ones((3, 2))}, jnp.ones(2))


# (a) Split learning on the stages: a client-side bottom layer and a
# server-side top layer exchange activations and their gradients.


def mlp_params(key, dims=(4, 5, 3)):
  k1, k2 = jax.random.split(key)
  return {'bottom': {'w': jax.random.normal(k1, dims[:2]) * 0.5},
          'top': {'w': jax.random.normal(k2, dims[1:]) * 0.5}}


def bottom(params, x):
  return jnp.tanh(x @ params['w'])


def top_loss(params, activations, y, mask):
  logits = activations @ params['w']
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return clients.masked_mean(losses, mask)


def whole_loss(params, batch):
  return top_loss(params['top'], bottom(params['bottom'], batch['x']),
                  batch['y'], batch['mask'])


def split_step(state, cohort, lr, execution='vmap'):
  """One parallel split-learning step (PSL-style) from the stages.

  Client forward mapped over the cohort -> ONE batched server step on the
  stacked activations [C, B, h] -> client backward mapped with the
  returned activation gradients. The server loss is the sum of the
  clients' masked means, so each client's part gets its own gradient.
  """
  client_params, server_params = state
  batch = jax.tree.map(lambda v: v[:, 0], cohort.batches)  # Step 0: [C, B].

  def forward(p, x):
    return jax.vjp(lambda q: bottom(q, x), p)

  activations, pullbacks = core.map_clients(
      forward, client_params, batch['x'], execution=execution)

  def server_loss(sp, acts):
    return jnp.sum(jax.vmap(top_loss, in_axes=(None, 0, 0, 0))(
        sp, acts, batch['y'], batch['mask']))

  server_grads, act_grads = jax.grad(server_loss, argnums=(0, 1))(
      server_params, activations)
  client_grads = core.map_clients(lambda pull, g: pull(g)[0], pullbacks,
                                  act_grads, execution=execution)
  client_params = jax.tree.map(lambda p, g: p - lr * g, client_params,
                               client_grads)
  server_params = jax.tree.map(lambda p, g: p - lr * g, server_params,
                               server_grads)
  return client_params, server_params


class SplitSketchTest(parameterized.TestCase):

  @parameterized.parameters('vmap', 'sequential')
  def test_one_client_one_step_equals_sgd_on_the_whole_model(self, how):
    params = mlp_params(jax.random.key(1))
    rng = np.random.default_rng(0)
    batch = {'x': rng.normal(size=(1, 1, 6, 4)).astype(np.float32),
             'y': rng.integers(0, 3, size=(1, 1, 6)).astype(np.int32),
             'mask': np.array([[[1, 1, 1, 1, 0, 1]]], np.float32)}
    cohort = core.Cohort(np.zeros(1, np.int32), batch, np.ones(1))
    store = core.tree_broadcast(params['bottom'], 1)
    new_store, new_top = jax.jit(
        lambda s, c: split_step(s, c, 0.3, how))((store, params['top']),
                                                 cohort)
    grads = jax.grad(whole_loss)(params,
                                 jax.tree.map(lambda v: v[0, 0], batch))
    expected = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    test_utils.assert_trees_all_close(
        jax.tree.map(lambda v: v[0], new_store), expected['bottom'],
        atol=1e-6)
    test_utils.assert_trees_all_close(new_top, expected['top'], atol=1e-6)


# (b) Gossip on the stages: one model per node in the client store, local
# steps through `run_clients`, then mixing W @ rows; no server model.


def gossip_algorithm(mixing: jax.Array, lr: float) -> core.FederatedAlgorithm:
  """D-PSGD-style round: local SGD on every node, then x <- W x."""
  local = clients.local_sgd(_testing.linear_loss, optax.sgd(lr))

  def node_update(message, node_params, batches, key, info):
    del message
    out = local(node_params, (), batches, key, info)
    new = jax.tree.map(jnp.subtract, node_params, out.update)
    return out._replace(client_state=new)

  def init(params):
    del params
    return {'round': jnp.zeros((), jnp.int32)}

  def apply(state, store, cohort, key):
    keys = core.client_keys(key, state['round'], cohort.client_ids)
    rows = core.tree_gather(store, cohort.client_ids)
    outputs = core.run_clients(node_update, (), rows, cohort, keys, 'vmap')
    mixed = jax.tree.map(lambda x: jnp.tensordot(mixing, x, axes=1),
                         outputs.client_state)
    store = core.tree_scatter(store, cohort.client_ids, mixed)
    return ({'round': state['round'] + 1}, store,
            core.round_metrics(outputs, jax.tree.map(jnp.zeros_like,
                                                     rows)))

  def model_params(state, store):
    del state
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), store)

  return core.FederatedAlgorithm(init, lambda params: params, apply,
                                 model_params)


class GossipSketchTest(absltest.TestCase):

  def test_complete_graph_uniform_mixing_equals_fedavg(self):
    num_nodes = 4
    cohort = _testing.random_cohort(num_nodes, 3, 5, seed=2)
    params = _testing.linear_params()
    gossip = gossip_algorithm(jnp.full((num_nodes, num_nodes),
                                       1. / num_nodes), lr=0.05)
    fedavg = core.federated_algorithm(
        clients.local_sgd(_testing.linear_loss, optax.sgd(0.05)),
        aggregators.weighted_mean(), optax.sgd(1.0), weighting='uniform')
    g_state = gossip.init(params)
    g_store = core.tree_broadcast(gossip.init_client_state(params),
                                  num_nodes)
    f_state = fedavg.init(params)
    for _ in range(3):
      g_state, g_store, _ = jax.jit(gossip.apply)(g_state, g_store, cohort,
                                                  KEY)
      f_state, _, _ = jax.jit(fedavg.apply)(f_state, (), cohort, KEY)
    for node in range(num_nodes):
      test_utils.assert_trees_all_close(
          jax.tree.map(lambda v, n=node: v[n], g_store), f_state.params,
          atol=1e-6)
    test_utils.assert_trees_all_close(gossip.model_params(g_state, g_store),
                                      f_state.params, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
