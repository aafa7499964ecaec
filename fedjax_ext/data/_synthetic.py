r"""The LEAF / FedProx Synthetic(alpha, beta) federated classification data.

Device k (of K = 30) draws a softmax-regression model and an input mean

.. math::

  u_k \sim N(0, \alpha^2),\quad W_k \sim N(u_k, 1)^{10 \times 60},\quad
  b_k \sim N(u_k, 1)^{10},\qquad
  B_k \sim N(0, \beta^2),\quad v_k \sim N(B_k, 1)^{60},

then n_k examples :math:`x \sim N(v_k, \Sigma)`, :math:`\Sigma =
\mathrm{diag}(j^{-1.2})_{j=1..60}`, labelled :math:`y = \arg\max
\mathrm{softmax}(W_k x + b_k) = \arg\max (W_k x + b_k)`. Alpha controls how
much the local models differ, beta how much the local inputs differ.
``iid`` shares one :math:`W \sim N(0, 1)`, :math:`b \sim N(0, 1)` and
:math:`v = 0` across devices. Device sizes are
``lognormal(4, 2).astype(int) + 50`` (a power law, at least 50).

Reconstructed from the paper and the reference generators
(``litian96/FedProx`` ``data/synthetic_*/generate_synthetic.py``,
``generate_iid.py``), with these documented choices:

* the second parameter of N(., .) is a standard deviation, as in the
  reference code's ``np.random.normal(0, alpha, ...)``;
* each device keeps ``int(0.9 * n_k)`` shuffled examples for training and
  the rest for test, as the reference scripts do;
* the draws come from one ``np.random.default_rng(seed)`` stream (sizes,
  then priors, then per-device data), vectorised, so the data has the
  reference distribution but not its exact numbers (the reference scripts
  are unseeded). Sizes are drawn first, so every (alpha, beta) config with
  one seed has the same device sizes.

References:
  Li et al., `Federated Optimization in Heterogeneous Networks
  <https://arxiv.org/abs/1812.06127>`_, MLSys 2020.

  Caldas et al., `LEAF: A Benchmark for Federated Settings
  <https://arxiv.org/abs/1812.01097>`_, 2018.

  Shamir, Srebro and Zhang, `Communication-Efficient Distributed
  Optimization using an Approximate Newton-type Method
  <https://arxiv.org/abs/1312.7853>`_, ICML 2014 (the original setup).
"""

from typing import NamedTuple

import numpy as np

NUM_DEVICES = 30
NUM_FEATURES = 60
NUM_CLASSES = 10
TRAIN_FRACTION = 0.9
SEED = 0
# Sizes n_k = floor(lognormal(mean, sigma)) + min, as in the reference code.
SIZE_LOG_MEAN = 4.
SIZE_LOG_SIGMA = 2.
MIN_SIZE = 50
# Sigma_jj = j ** COVARIANCE_POWER, j = 1..NUM_FEATURES.
COVARIANCE_POWER = -1.2


class SyntheticSpec(NamedTuple):
  """Parameters of one Synthetic dataset; the defaults give Synthetic(1, 1)."""
  alpha: float = 1.  # Std of u_k, the mean of device k's W_k and b_k.
  beta: float = 1.  # Std of B_k, the mean of device k's input mean v_k.
  iid: bool = False  # One shared W, b and v = 0 (alpha, beta unused).
  num_devices: int = NUM_DEVICES
  num_features: int = NUM_FEATURES
  num_classes: int = NUM_CLASSES
  seed: int = SEED


def device_sizes(num_devices: int, rng: np.random.Generator) -> np.ndarray:
  """n_k = int(lognormal(4, 2)) + 50, as in the reference generator."""
  sizes = rng.lognormal(SIZE_LOG_MEAN, SIZE_LOG_SIGMA, num_devices)
  return sizes.astype(np.int64) + MIN_SIZE


def _device_models(spec: SyntheticSpec, rng: np.random.Generator):
  """W [K, C, D], b [K, C] and input means v [K, D] of every device."""
  k, c, d = spec.num_devices, spec.num_classes, spec.num_features
  if spec.iid:
    w = np.broadcast_to(rng.normal(0., 1., (c, d)), (k, c, d))
    b = np.broadcast_to(rng.normal(0., 1., c), (k, c))
    return w, b, np.zeros((k, d))
  u = rng.normal(0., spec.alpha, k)
  big_b = rng.normal(0., spec.beta, k)
  v = rng.normal(big_b[:, None], 1., (k, d))
  w = rng.normal(u[:, None, None], 1., (k, c, d))
  b = rng.normal(u[:, None], 1., (k, c))
  return w, b, v


DEFAULT_SPEC = SyntheticSpec()  # Synthetic(1, 1), the default config.


def generate(spec: SyntheticSpec = DEFAULT_SPEC
             ) -> dict[str, dict[str, np.ndarray]]:
  """Draws the dataset: {'train': columns, 'test': columns}.

  Args:
    spec: the generator's parameters.

  Returns:
    For each split, columns 'x' float32 [N, D], 'y' int64 [N] and
    'client_id' int64 [N] (the device), grouped by device in device order.
  """
  rng = np.random.default_rng(spec.seed)
  sizes = device_sizes(spec.num_devices, rng)
  w, b, v = _device_models(spec, rng)
  scale = np.arange(1, spec.num_features + 1) ** (COVARIANCE_POWER / 2)
  splits = {'train': [], 'test': []}
  for k, n in enumerate(sizes):
    x = v[k] + scale * rng.standard_normal((n, spec.num_features))
    y = np.argmax(x @ w[k].T + b[k], axis=1)
    order = rng.permutation(n)
    num_train = int(TRAIN_FRACTION * n)
    for split, rows in (('train', order[:num_train]),
                        ('test', order[num_train:])):
      splits[split].append((x[rows], y[rows], np.full(len(rows), k)))
  return {split: {'x': np.concatenate([p[0] for p in parts]).astype(
                      np.float32),
                  'y': np.concatenate([p[1] for p in parts]).astype(np.int64),
                  'client_id': np.concatenate([p[2] for p in parts]).astype(
                      np.int64)}
          for split, parts in splits.items()}
