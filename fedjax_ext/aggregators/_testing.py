"""NumPy references and helpers shared by the aggregator tests.

Direct float64 implementations of the rules on [n, d] arrays (every client
present), and the round trip between such arrays and a two-leaf pytree, so
that the tests exercise the leaf-wise flattening.
"""

import jax
import jax.numpy as jnp
import numpy as np


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


def rows(stacked):
  """A stacked two-leaf pytree [n, ...] -> [n, d] NumPy rows."""
  num = len(stacked['b'])
  return np.stack([from_tree(jax.tree.map(lambda leaf, i=i: leaf[i],
                                          stacked)) for i in range(num)])
