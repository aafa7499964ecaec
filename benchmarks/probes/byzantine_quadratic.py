r"""Probe: the error floor of robust DSGD on a synthetic quadratic.

Usage: python -m benchmarks.probes.byzantine_quadratic [OUT_DIR] [--quick]

:math:`L_i(\theta) = \frac12 \|\theta - c_i\|^2`, d = 20, n = 10 workers of
which b = 2 send ALIE (Baruch et al.'s z_max): the floor of
:math:`\|\nabla L_H\|^2 = \|\theta - \bar c_H\|^2` against the honest
heterogeneity :math:`G^2` and the gradient noise :math:`\sigma^2`, with and
without worker momentum, for trimmed mean and NNM + trimmed mean (Ruan,
Wang and Liu, arXiv 2604.10179: the floor grows with both, and momentum
lowers only the noise part). No data, no model: the aggregator
(`training.create_aggregator`) and the attack (`training.create_attack`)
run on the workers' stacked momenta, all rounds in one ``lax.scan``, every
(G^2, sigma^2, beta, seed) point under one ``vmap``. Writes
``quadratic.jsonl`` and ``quadratic.png`` to OUT_DIR (default
/tmp/byzantine_quadratic). Moved here from ``experiments/byzantine.py``.
"""

import itertools
import json
import os
import sys

import jax
import jax.numpy as jnp
from matplotlib import figure
import numpy as np

from fedjax_ext import training

N, B, D, GAMMA = 10, 2, 20, 0.1
G2S = (0., 0.25, 1., 4., 16.)
S2S = (0., 0.25, 1., 4., 16.)


def floor(agg, g2, s2, beta, seed, rounds: int):
  """Mean of :math:`\\|\\theta - \\bar c_H\\|^2` over the last fifth."""
  k_c, k_run = jax.random.split(jax.random.key(seed))
  c = jax.random.normal(k_c, (N - B, D))
  c = c - c.mean(0)
  c = c * jnp.sqrt(g2 / jnp.maximum(jnp.mean(jnp.sum(c ** 2, 1)), 1e-12))
  c = jnp.concatenate([c, jnp.zeros((B, D))])  # Honest mean 0.
  byz, weights = jnp.arange(N) >= N - B, jnp.ones(N)
  attack = training.create_attack('alie', agg)

  def step(carry, t):
    theta, m, agg_state = carry
    k = jax.random.fold_in(k_run, t)
    g = theta[None] - c + jax.random.normal(k, (N, D)) * jnp.sqrt(s2 / D)
    m = beta * m + (1 - beta) * g
    sent = attack.corrupt(m, byz, weights, jax.random.fold_in(k, 1))
    r, agg_state = agg.update(sent, agg_state, weights=weights)
    theta = theta - GAMMA * r
    return (theta, m, agg_state), jnp.sum(theta ** 2)

  init = (jnp.full((D,), 5.), jnp.zeros((N, D)), agg.init(jnp.zeros(D)))
  _, errs = jax.lax.scan(step, init, jnp.arange(rounds))
  return jnp.mean(errs[-(rounds // 5):])


def run(out_dir: str, *, names=('trimmed_mean', 'nnm_trimmed_mean'),
        rounds: int = 1000, seeds: int = 4, momentum: float = 0.9):
  """Every point for every rule in `names`; returns the jsonl lines."""
  os.makedirs(out_dir, exist_ok=True)
  betas = (0., momentum)
  points = [(g2, 1.) for g2 in G2S] + [(1., s2) for s2 in S2S]
  grid = np.array([(g2, s2, beta, seed) for (g2, s2), beta, seed in
                   itertools.product(points, betas, range(seeds))],
                  np.float32)
  lines = []
  for name in names:
    agg = training.create_aggregator(name, B)
    fn = jax.jit(jax.vmap(lambda g2, s2, beta, seed: floor(
        agg, g2, s2, beta, seed.astype(jnp.int32), rounds)))
    floors = np.asarray(fn(*(jnp.asarray(grid[:, i]) for i in range(4))))
    for (g2, s2), beta in itertools.product(points, betas):
      sel = (grid[:, 0] == g2) & (grid[:, 1] == s2) & (
          grid[:, 2] == np.float32(beta))
      lines.append(dict(aggregator=name, G2=float(g2), sigma2=float(s2),
                        momentum=float(beta), floor=float(floors[sel].mean())))
  with open(os.path.join(out_dir, 'quadratic.jsonl'), 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
  fig = figure.Figure(figsize=(10, 4), layout='constrained')
  ax_g, ax_s = fig.subplots(1, 2)
  for name, beta in itertools.product(names, betas):
    sel = [l for l in lines if l['aggregator'] == name and
           l['momentum'] == float(beta)]
    for ax, key, other in ((ax_g, 'G2', 'sigma2'), (ax_s, 'sigma2', 'G2')):
      pts = sorted({(l[key], l['floor']) for l in sel if l[other] == 1.})
      ax.plot(*zip(*pts), '-' if beta else '--', marker='o',
              label=f'{name}, beta={beta:g}')
  ax_g.set(xlabel='heterogeneity G^2 (sigma^2 = 1)',
           ylabel='floor of ||grad L_H||^2', title='floor vs G^2')
  ax_s.set(xlabel='noise sigma^2 (G^2 = 1)', title='floor vs sigma^2')
  for ax in (ax_g, ax_s):
    ax.set_xscale('symlog', linthresh=0.25)
    ax.set_yscale('log')
    ax.legend(fontsize=7)
  fig.suptitle(f'Quadratic, n={N}, b={B} ALIE, d={D}, gamma={GAMMA}')
  fig.savefig(os.path.join(out_dir, 'quadratic.png'), dpi=110)
  return lines


if __name__ == '__main__':
  args = [a for a in sys.argv[1:] if a != '--quick']
  quick = '--quick' in sys.argv[1:]
  out = run(args[0] if args else '/tmp/byzantine_quadratic',
            **(dict(names=('trimmed_mean',), rounds=50, seeds=1) if quick
               else {}))
  for line in out:
    print(json.dumps(line))
