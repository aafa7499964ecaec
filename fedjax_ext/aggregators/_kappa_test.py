"""Empirical (b, kappa)-robustness of the rules, alone and after NNM.

Allouah et al., "Fixing by Mixing", AISTATS 2023 (method spec, section
1.3): the rules stay within their kappa bounds on attack-like vector sets,
and NNM lowers the worst kappa.
"""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import aggregators
from fedjax_ext.aggregators import _testing as t

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
    out, _ = agg.update(t.as_tree(x), agg.init(None),
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
