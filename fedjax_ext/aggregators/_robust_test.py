"""Robust rules vs direct NumPy implementations, and empirical kappa."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext._src import test_utils

# ---------------------------------------------------------------------------
# Direct NumPy implementations on [n, d] float64 arrays (all present).
# ---------------------------------------------------------------------------


def np_median(x):
  return np.median(x, axis=0)


def np_trimmed_mean(x, b):
  s = np.sort(x, axis=0)
  return s[b:len(x) - b].mean(axis=0)


def np_sq_dists(x):
  return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def np_krum_scores(x, b):
  d = np_sq_dists(x)
  n = len(x)
  return np.array([np.sort(np.delete(d[i], i))[:n - b - 2].sum()
                   for i in range(n)])


def np_multi_krum(x, b, m):
  return x[np.argsort(np_krum_scores(x, b), kind='stable')[:m]].mean(0)


def np_geometric_median(x, nu=1e-6, iters=2000):
  z = x.mean(0)
  for _ in range(iters):
    beta = 1. / np.maximum(nu, np.linalg.norm(x - z, axis=1))
    z = (beta[:, None] * x).sum(0) / beta.sum()
  return z


def np_centered_clipping(x, v, tau, iters):
  for _ in range(iters):
    diff = x - v
    norms = np.linalg.norm(diff, axis=1)
    scale = np.minimum(1., tau / np.where(norms > 0, norms, 1.))
    v = v + (scale[:, None] * diff).mean(0)
  return v


def np_nnm(x, b):
  d = np_sq_dists(x)
  m = len(x) - b
  return np.stack([x[np.argsort(d[i], kind='stable')[:m]].mean(0)
                   for i in range(len(x))])


def np_clip(x, tau):
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x * np.minimum(1., tau / norms)


def np_arc(x, b):
  n = len(x)
  norms = np.linalg.norm(x, axis=1)
  clipped = int(2 * b * (n - b) // n)
  threshold = np.sort(norms)[n - clipped - 1]
  return x * np.minimum(1., threshold / norms)[:, None]


def np_bulyan(x, b):
  """El Mhamdi et al. 2018, written out: iterated Krum, then per
  coordinate the mean of the beta values closest to the median (the
  lowest window on ties)."""
  n = len(x)
  d = np_sq_dists(x)
  theta = max(n - 2 * b, 1)
  remaining, selected = list(range(n)), []
  for _ in range(theta):
    m = max(len(remaining) - b - 2, 1)
    scores = [np.sort([d[i, j] for j in remaining if j != i])[:m].sum()
              for i in remaining]
    best = min(range(len(remaining)), key=lambda i: (
        scores[i], np.sum(x[remaining[i]] ** 2)))
    selected.append(remaining.pop(best))
  beta = max(theta - 2 * b, 1)
  xs = np.sort(x[selected], axis=0)
  med = np.median(xs, axis=0)
  out = np.zeros(x.shape[1])
  for j in range(x.shape[1]):
    costs = [max(med[j] - xs[w, j], xs[w + beta - 1, j] - med[j])
             for w in range(theta - beta + 1)]
    w = int(np.argmin(costs))
    out[j] = xs[w:w + beta, j].mean()
  return out


def as_tree(x):
  """[n, d] -> a two-leaf pytree (tests the leaf-wise flattening)."""
  x = jnp.asarray(x, jnp.float32)
  return {'a': x[:, :3].reshape(len(x), 3, 1), 'b': x[:, 3:]}


def from_tree(tree):
  return np.concatenate([np.asarray(tree['a']).reshape(-1),
                         np.asarray(tree['b'])])


def run(agg, x, weights=None, state=None):
  tree = as_tree(x)
  weights = jnp.ones(len(x)) if weights is None else weights
  if state is None:
    state = agg.init(jax.tree.map(lambda leaf: leaf[0], tree))
  out, state = jax.jit(agg.update)(tree, state, weights=weights)
  return from_tree(out), state


class NumpyReferenceTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)

  def sample(self, n):
    return self.rng.normal(size=(n, 7)) * self.rng.uniform(0.5, 2, (n, 1))

  @parameterized.parameters(7, 8)
  def test_coordinate_median(self, n):
    x = self.sample(n)
    out, _ = run(aggregators.coordinate_median(), x)
    np.testing.assert_allclose(out, np_median(x), rtol=1e-5, atol=1e-6)

  @parameterized.parameters(0, 1, 3)
  def test_trimmed_mean(self, b):
    x = self.sample(9)
    out, _ = run(aggregators.trimmed_mean(b), x)
    np.testing.assert_allclose(out, np_trimmed_mean(x, b), rtol=1e-5,
                               atol=1e-6)

  @parameterized.parameters((1, 1), (2, 1), (2, 4), (2, None))
  def test_multi_krum(self, b, m):
    x = self.sample(10)
    out, _ = run(aggregators.multi_krum(b, m), x)
    scores = jax.jit(aggregators.krum_scores, static_argnums=2)(
        aggregators.pairwise_sq_distances(as_tree(x), jnp.ones(10, bool)),
        jnp.ones(10, bool), b)
    np.testing.assert_allclose(scores, np_krum_scores(x, b), rtol=1e-4)
    np.testing.assert_allclose(out, np_multi_krum(x, b, m or 10 - b),
                               rtol=1e-5, atol=1e-6)

  def test_geometric_median(self):
    x = self.sample(9)
    x[0] += 50.  # An outlier the median must resist.
    out, _ = run(aggregators.geometric_median(max_iterations=500), x)
    ref = np_geometric_median(x)
    # Weiszfeld stops once the float32 objective stalls: compare the
    # objective it reaches (the quantity minimised), and the point loosely.
    objective = lambda z: np.linalg.norm(x - z, axis=1).sum()
    self.assertLess(objective(out), objective(ref) * (1 + 1e-5))
    np.testing.assert_allclose(out, ref, atol=1e-2)
    self.assertLess(objective(out), objective(x.mean(0)))

  def test_centered_clipping_two_rounds(self):
    x1, x2 = self.sample(8), self.sample(8) + 1.
    agg = aggregators.centered_clipping(0.7, num_iterations=3)
    out1, state = run(agg, x1)
    out2, _ = run(agg, x2, state=state)
    ref1 = np_centered_clipping(x1, np.zeros(7), 0.7, 3)
    np.testing.assert_allclose(out1, ref1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out2, np_centered_clipping(x2, ref1, 0.7, 3), rtol=1e-5, atol=1e-6)

  @parameterized.parameters(1, 3)
  def test_nnm(self, b):
    x = self.sample(9)
    (mixed, _), _ = jax.jit(aggregators.nnm(b).update)(
        as_tree(x), (), weights=jnp.ones(9))
    got = np.stack([from_tree(jax.tree.map(lambda l, i=i: l[i], mixed))
                    for i in range(9)])
    np.testing.assert_allclose(got, np_nnm(x, b), rtol=1e-5, atol=1e-6)

  @parameterized.parameters((11, 2), (9, 2), (15, 3), (7, 1), (5, 2))
  def test_bulyan(self, n, b):
    x = self.sample(n)
    x[:b] += 4.  # Attack-like outliers, so Krum's picks are not ties.
    out, _ = run(aggregators.bulyan(b), x)
    np.testing.assert_allclose(out, np_bulyan(x, b), rtol=1e-5, atol=1e-6)

  @parameterized.parameters(1, 2, 4)
  def test_arc(self, b):
    x = self.sample(10)
    (clipped, w), _ = jax.jit(aggregators.arc(b).update)(
        as_tree(x), (), weights=jnp.ones(10))
    got = np.stack([from_tree(jax.tree.map(lambda l, i=i: l[i], clipped))
                    for i in range(10)])
    np.testing.assert_allclose(got, np_arc(x, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(w, np.ones(10))

  def test_norm_clipping(self):
    x = self.sample(6)
    (clipped, _), _ = jax.jit(aggregators.norm_clipping(1.5).update)(
        as_tree(x), (), weights=jnp.ones(6))
    got = np.stack([from_tree(jax.tree.map(lambda l, i=i: l[i], clipped))
                    for i in range(6)])
    np.testing.assert_allclose(got, np_clip(x, 1.5), rtol=1e-5, atol=1e-6)

  def test_bucketing_partitions_clients(self):
    x = self.sample(7)
    bucket = aggregators.bucketing(3, key=jax.random.key(0))
    state = bucket.init(None)
    (means, counts), state2 = jax.jit(bucket.update)(
        as_tree(x), state, weights=jnp.ones(7))
    np.testing.assert_array_equal(counts, [3., 3., 1.])
    got = np.stack([from_tree(jax.tree.map(lambda l, i=i: l[i], means))
                    for i in range(3)])
    # Each bucket is the mean of a distinct group; weighted by size they
    # sum to the total, and the singleton bucket is one client exactly.
    np.testing.assert_allclose((got * [[3], [3], [1]]).sum(0), x.sum(0),
                               rtol=1e-5, atol=1e-5)
    self.assertTrue(np.any(np.all(np.isclose(x, got[2], atol=1e-6), 1)))
    # The state's key advances: the next round buckets differently.
    self.assertFalse(np.array_equal(jax.random.key_data(state.rng_key),
                                    jax.random.key_data(state2.rng_key)))

  def test_absent_clients_are_ignored(self):
    x = self.sample(9)
    weights = jnp.array([1., 0., 1., 1., 0., 1., 1., 1., 1.])
    keep = np.asarray(weights) > 0
    out, _ = run(aggregators.trimmed_mean(2), x, weights)
    np.testing.assert_allclose(out, np_trimmed_mean(x[keep], 2), rtol=1e-5,
                               atol=1e-6)
    out, _ = run(aggregators.krum(1), x, weights)
    np.testing.assert_allclose(out, np_multi_krum(x[keep], 1, 1), rtol=1e-5,
                               atol=1e-6)
    out, _ = run(aggregators.bulyan(1), x, weights)
    np.testing.assert_allclose(out, np_bulyan(x[keep], 1), rtol=1e-5,
                               atol=1e-6)
    (clipped, _), _ = jax.jit(aggregators.arc(2).update)(
        as_tree(x), (), weights=weights)
    got = np.stack([from_tree(jax.tree.map(lambda l, i=i: l[i], clipped))
                    for i in range(9)])
    np.testing.assert_allclose(got[keep], np_arc(x[keep], 2), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(got[~keep], 0.)


# ---------------------------------------------------------------------------
# Empirical kappa (method spec, section 1.3).
# ---------------------------------------------------------------------------

N = 10


def kappa_bounds(b):
  r = b / (N - 2 * b)
  return {'trimmed_mean': 6 * r * (1 + r),
          'coordinate_median': 4 * (1 + r) ** 2,
          'geometric_median': 4 * (1 + r) ** 2,
          'krum': 6 * (1 + r)}


def rule(name, b):
  return {'trimmed_mean': lambda: aggregators.trimmed_mean(b),
          'coordinate_median': aggregators.coordinate_median,
          'geometric_median': aggregators.geometric_median,
          'krum': lambda: aggregators.krum(b)}[name]()


def vector_sets(b, rng, num_sets=20, d=5):
  """Honest Gaussian clouds plus b attack-like vectors of several kinds."""
  sets = []
  for t in range(num_sets):
    honest = rng.normal(size=(N - b, d)) * rng.uniform(0.1, 3, d)
    mu, sd = honest.mean(0), honest.std(0)
    kind = t % 5
    if kind == 0:
      bad = rng.normal(size=(b, d)) * 30
    elif kind == 1:
      bad = np.repeat((mu + 1.5 * sd)[None], b, 0)  # ALIE.
    elif kind == 2:
      bad = np.repeat((-mu)[None], b, 0)  # Sign flip.
    elif kind == 3:
      bad = np.repeat(honest[:1], b, 0)  # Mimic.
    else:
      bad = rng.normal(size=(b, d))  # Just more honest-looking points.
    sets.append(np.concatenate([honest, bad]))
  return np.stack(sets)


def empirical_kappa(agg, sets, b):
  """max over sets and every S with |S| = n - b of the kappa ratio."""
  def f(x):
    out, _ = agg.update(as_tree(x), agg.init(None),
                        weights=jnp.ones(N))
    return out
  outs = jax.jit(jax.vmap(f))(jnp.asarray(sets, jnp.float32))
  outs = np.concatenate([np.asarray(outs['a']).reshape(len(sets), -1),
                         np.asarray(outs['b'])], axis=1)
  worst = 0.
  for subset in itertools.combinations(range(N), N - b):
    xs = sets[:, list(subset)]
    centre = xs.mean(1)
    spread = ((xs - centre[:, None]) ** 2).sum(-1).mean(1)
    ratio = ((outs - centre) ** 2).sum(-1) / spread
    worst = max(worst, float(ratio.max()))
  return worst


RULES = ('trimmed_mean', 'coordinate_median', 'geometric_median', 'krum')


class KappaTest(parameterized.TestCase):

  @parameterized.parameters(1, 3)
  def test_within_bounds_and_nnm_lowers_the_worst(self, b):
    sets = vector_sets(b, np.random.default_rng(b))
    plain = {r: empirical_kappa(rule(r, b), sets, b) for r in RULES}
    mixed = {r: empirical_kappa(aggregators.process(aggregators.nnm(b),
                                                    rule(r, b)), sets, b)
             for r in RULES}
    for r in RULES:
      with self.subTest(r):
        self.assertLessEqual(plain[r], kappa_bounds(b)[r])
        # Allouah et al. 2023: F o NNM is (b, 8b/(n-b) (kappa + 1))-robust.
        self.assertLessEqual(mixed[r],
                             8 * b / (N - b) * (kappa_bounds(b)[r] + 1))
    # NNM lowers Krum's kappa (the largest) and the worst over all rules.
    # On these small random sets it does NOT lower every coordinate-wise
    # rule's (see notes/6.md): their empirical kappa is already far below
    # the bound.
    self.assertLess(mixed['krum'], plain['krum'])
    self.assertLess(max(mixed.values()), max(plain.values()))


if __name__ == '__main__':
  absltest.main()
