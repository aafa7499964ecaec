"""FedIT, FFA-LoRA, FedSA-LoRA and the reference rows on a tiny MLP."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_ext import core
from fedjax_ext import lora
from fedjax_ext._src import test_utils
from fedjax_ext.lora import _testing

KEY = jax.random.key(0)
PATH = 'params/layer_1/kernel'
LR = 0.2


def config(rank=2, dense=None):
  return lora.LoRAConfig(PATH, rank, 4., jax.random.key(1),
                         dense_targets=dense)


def one_round(algorithm, cohort, rounds=1):
  base = _testing.base_params()
  state = algorithm.init(base)
  store = core.tree_broadcast(algorithm.init_client_state(base),
                              len(cohort.client_ids))
  apply = jax.jit(algorithm.apply)
  for _ in range(rounds):
    state, store, metrics = apply(state, store, cohort, KEY)
  return base, state, store, metrics


def client_locals(algorithm, cohort, names, state=None):
  """Each client's trained factors, trained one by one (no vmap)."""
  base = _testing.base_params()
  state = state or algorithm.init(base)
  keys = core.client_keys(KEY, state.round, cohort.client_ids)
  out = []
  for i in range(len(cohort.client_ids)):
    batches = jax.tree.map(lambda v, i=i: v[i], cohort.batches)
    _, local, _ = lora.train_lora(
        _testing.loss_fn, optax.sgd(LR), state.algorithm_state['base'],
        state.params, names, batches, keys[i], alpha=4.)
    out.append(local)
  return state, out


def delta(model, base):
  return model['params']['layer_1']['kernel'] - base['params']['layer_1'][
      'kernel']


class FFATest(absltest.TestCase):

  def test_aggregate_is_exactly_the_mean_delta_w(self):
    cohort = _testing.cohort(3)
    algorithm = lora.ffa_lora(_testing.loss_fn, optax.sgd(LR), config())
    base, state, store, metrics = one_round(algorithm, cohort)
    start, locals_ = client_locals(algorithm, cohort, ('B',))
    a0 = start.params.adapters[PATH]['A']
    client_deltas = [2. * (l.adapters[PATH]['B'] @ a0).T for l in locals_]
    np.testing.assert_allclose(
        delta(algorithm.model_params(state, store), base),
        np.mean(client_deltas, axis=0), atol=1e-6)
    # A never moves.
    np.testing.assert_array_equal(state.params.adapters[PATH]['A'], a0)
    # Uploads B only: [4, 2] float32; A is not re-sent each round.
    self.assertEqual(float(metrics['upload_bytes_per_client']), 4 * 2 * 4)
    self.assertEqual(float(metrics['downlink_bytes_per_client']), 4 * 2 * 4)


class FedITTest(absltest.TestCase):

  def test_product_of_means_error_by_hand(self):
    # Two equal clients: mean(B) mean(A) - mean(B A)
    #   = -(1/4) (B1 - B2)(A1 - A2).
    cohort = _testing.cohort(2)
    algorithm = lora.fed_it(_testing.loss_fn, optax.sgd(LR), config())
    # Round 2, so that A's are trained too (B = 0 in round 1 freezes A).
    base, state, store, _ = one_round(algorithm, cohort)
    _, locals_ = client_locals(algorithm, cohort, ('A', 'B'), state)
    new_state, _, metrics = jax.jit(algorithm.apply)(state, store, cohort,
                                                     KEY)
    (a1, b1), (a2, b2) = [(l.adapters[PATH]['A'], l.adapters[PATH]['B'])
                          for l in locals_]
    self.assertGreater(float(jnp.linalg.norm(a1 - a2)), 1e-4)
    mean_delta = 2. * (b1 @ a1 + b2 @ a2) / 2.
    fedit = delta(algorithm.model_params(new_state, store), base).T
    by_hand = -2. * 0.25 * (b1 - b2) @ (a1 - a2)
    np.testing.assert_allclose(fedit - mean_delta, by_hand, atol=1e-6)
    self.assertGreater(float(jnp.linalg.norm(by_hand)), 1e-6)
    # Uploads A [2, 5] and B [4, 2].
    self.assertEqual(float(metrics['upload_bytes_per_client']),
                     (10 + 8) * 4)


class FedSATest(absltest.TestCase):

  def test_a_shared_b_personal(self):
    cohort = _testing.cohort(3)
    algorithm = lora.fed_sa_lora(_testing.loss_fn, optax.sgd(LR), config())
    base, state, store, metrics = one_round(algorithm, cohort, rounds=2)
    # Round 2 from round 1's state, one client at a time.
    algorithm2 = lora.fed_sa_lora(_testing.loss_fn, optax.sgd(LR), config())
    s1, st1, _ = jax.jit(algorithm2.apply)(
        algorithm2.init(base),
        core.tree_broadcast(algorithm2.init_client_state(base), 3), cohort,
        KEY)
    keys = core.client_keys(KEY, s1.round, cohort.client_ids)
    locals_ = []
    for i in range(3):
      own = jax.tree.map(lambda v, i=i: v[i], st1)
      params = s1.params._replace(adapters=lora.join_factors(
          s1.params.adapters, own))
      _, local, _ = lora.train_lora(
          _testing.loss_fn, optax.sgd(LR), s1.algorithm_state['base'],
          params, ('A', 'B'), jax.tree.map(lambda v, i=i: v[i],
                                           cohort.batches), keys[i],
          alpha=4.)
      locals_.append(local)
    for i, local in enumerate(locals_):
      np.testing.assert_allclose(store[PATH]['B'][i],
                                 local.adapters[PATH]['B'], atol=1e-6)
    np.testing.assert_allclose(
        state.params.adapters[PATH]['A'],
        np.mean([l.adapters[PATH]['A'] for l in locals_], axis=0),
        atol=1e-6)
    # The server's B is never trained or sent; B's differ per client.
    np.testing.assert_array_equal(state.params.adapters[PATH]['B'], 0.)
    self.assertGreater(float(jnp.linalg.norm(store[PATH]['B'][0]
                                             - store[PATH]['B'][1])), 1e-4)
    self.assertEqual(float(metrics['upload_bytes_per_client']), 2 * 5 * 4)
    personal = lora.fed_sa_personal_params(state, store, 1, alpha=4.)
    np.testing.assert_allclose(
        delta(personal, base).T,
        2. * store[PATH]['B'][1] @ state.params.adapters[PATH]['A'],
        atol=1e-6)


class FrozenBaseTest(absltest.TestCase):

  def test_base_is_bit_identical_and_never_uploaded(self):
    cohort = _testing.cohort(3)
    cfg = config(dense='params/head/.*')
    builders = {
        'fed_it': lora.fed_it, 'ffa_lora': lora.ffa_lora,
        'fed_sa_lora': lora.fed_sa_lora,
        'local_only': lora.local_only_lora}
    for name, build in builders.items():
      with self.subTest(name):
        base, state, store, _ = one_round(
            build(_testing.loss_fn, optax.sgd(LR), cfg), cohort, rounds=3)
        test_utils.assert_trees_all_equal(state.algorithm_state['base'],
                                          base)
    captured = {}

    def capture(outputs, state, cohort, key):
      del state, cohort, key
      captured['paths'] = set(lora.flat_params(outputs.update))
      return outputs

    algorithm = lora.fed_it(_testing.loss_fn, optax.sgd(LR), cfg,
                            transform_outputs=capture)
    one_round(algorithm, cohort)
    self.assertEqual(captured['paths'], {
        f'adapters/{PATH}/A', f'adapters/{PATH}/B',
        'dense/params/head/bias', 'dense/params/head/kernel'})

  def test_vmap_broadcasts_the_base(self):
    # Under vmap, no value shaped [C, ...] of an unadapted base leaf
    # exists: the base is one un-batched operand. (Batch size 7 keeps the
    # data's shapes apart from the kernels'.)
    cohort = _testing.cohort(3, batch_size=7)
    algorithm = lora.fed_it(_testing.loss_fn, optax.sgd(LR), config(),
                            execution='vmap')
    state = algorithm.init(_testing.base_params())
    jaxpr = jax.make_jaxpr(algorithm.apply)(state, (), cohort, KEY)
    shapes = set()

    def walk(jp):
      for eqn in jp.eqns:
        shapes.update(tuple(v.aval.shape) for v in eqn.outvars
                      if hasattr(v.aval, 'shape'))
        for param in eqn.params.values():
          for sub in (param if isinstance(param, (list, tuple))
                      else [param]):
            if hasattr(sub, 'eqns'):
              walk(sub)
            elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
              walk(sub.jaxpr)

    walk(jaxpr.jaxpr)
    self.assertIn((3, 5, 4), shapes)  # The adapted kernel, per client.
    for unadapted in ((3, 6, 5), (3, 4, 3)):  # layer_0 and head kernels.
      self.assertNotIn(unadapted, shapes)


class ReferenceRowsTest(absltest.TestCase):

  def test_local_only_uploads_nothing_and_personalises(self):
    cohort = _testing.cohort(3)
    algorithm = lora.local_only_lora(_testing.loss_fn, optax.sgd(LR),
                                     config())
    base, state, store, metrics = one_round(algorithm, cohort, rounds=2)
    self.assertEqual(float(metrics['upload_bytes_per_client']), 0.)
    self.assertEqual(float(metrics['downlink_bytes_per_client']), 0.)
    self.assertGreater(float(jnp.linalg.norm(
        store.adapters[PATH]['B'][0] - store.adapters[PATH]['B'][2])), 1e-4)
    test_utils.assert_trees_all_equal(state.params,
                                      algorithm.init(base).params)
    own = lora.local_only_personal_params(state, store, 2, alpha=4.)
    np.testing.assert_allclose(
        delta(own, base).T, 2. * store.adapters[PATH]['B'][2]
        @ store.adapters[PATH]['A'][2], atol=1e-6)

  def test_centralized_is_one_client_with_all_data(self):
    cohort = _testing.cohort(3)
    central = lora.centralized_cohort(cohort)
    self.assertEqual(central.batches['x'].shape, (1, 6, 4, 6))
    algorithm = lora.centralized_lora(_testing.loss_fn, optax.sgd(LR),
                                      config())
    base, state, store, _ = one_round(algorithm, central)
    start = algorithm.init(base)
    key = core.client_keys(KEY, 0, central.client_ids)[0]
    _, local, _ = lora.train_lora(
        _testing.loss_fn, optax.sgd(LR), base, start.params, ('A', 'B'),
        jax.tree.map(lambda v: v[0], central.batches), key, alpha=4.)
    test_utils.assert_trees_all_close(state.params, local, atol=1e-6)


class BytesTest(absltest.TestCase):

  def test_rank8_on_two_of_six_modules_and_florg_half_of_fedit(self):
    dim, layers = 256, 6
    rng = np.random.default_rng(0)
    base = {f'layer_{i}': {'kernel': jnp.asarray(
        rng.normal(size=(dim, dim)) / dim, jnp.float32)}
            for i in range(layers)}

    def loss_fn(params, batch, key):
      del key
      h = batch['x']
      for i in range(layers):
        h = jnp.tanh(h @ params[f'layer_{i}']['kernel'])
      err = jnp.sum(jnp.square(h - batch['y']), -1) * batch['mask']
      return jnp.sum(err) / jnp.maximum(jnp.sum(batch['mask']), 1.), {}

    x = rng.normal(size=(2, 1, 2, dim)).astype(np.float32)
    cohort = core.Cohort(np.arange(2, dtype=np.int32),
                         {'x': x, 'y': x, 'mask': np.ones((2, 1, 2),
                                                          np.float32)},
                         np.full(2, 2., np.float32))
    targets = r'layer_[45]/kernel'
    fedit = lora.fed_it(loss_fn, optax.sgd(0.1), lora.LoRAConfig(
        targets, 8, 16., KEY))
    florg = lora.florg(loss_fn, optax.sgd(0.1), lora.FLoRGConfig(
        targets, 8, 8., KEY))
    up = {}
    for name, algorithm in (('fedit', fedit), ('florg', florg)):
      _, _, metrics = jax.jit(algorithm.apply)(algorithm.init(base), (),
                                               cohort, KEY)
      up[name] = float(metrics['upload_bytes_per_client'])
      self.assertEqual(float(metrics['downlink_bytes_per_client']),
                       up[name])
    full = lora.full_update_bytes(base)
    self.assertEqual(up['fedit'], 2 * 8 * (dim + dim) * 4)
    # 2 r (d + d) / (6 d^2) = 2 * 8 * 512 / 393216 = 1/48 = 2.1% of full.
    self.assertAlmostEqual(up['fedit'] / full, 1 / 48)
    self.assertEqual(up['florg'], up['fedit'] / 2)


if __name__ == '__main__':
  absltest.main()
