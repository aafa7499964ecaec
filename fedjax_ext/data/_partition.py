r"""Splitting a pooled dataset over simulated clients.

A partition is a list with one sorted int64 index array per client. Every
partitioner here returns one that covers each example exactly once (nothing
is dropped silently) with no empty client, and is a pure function of its
arguments and `seed` (through ``np.random.default_rng(seed)``). When that is
impossible (more clients than examples, say) it raises a `ValueError` naming
the parameter.

* ``iid``: a uniform random split into near-equal parts.
* ``dirichlet``: label skew. For each class c, its examples are split over
  the K clients with proportions :math:`q_c \sim \mathrm{Dir}(\alpha 1_K)`
  (Yurochkin et al., 2019; the form used by NIID-Bench, Li et al., 2022).
  Small :math:`\alpha` gives each client few classes; large :math:`\alpha`
  approaches iid. Hsu et al. (2019) introduced Dirichlet label skew for FL
  (drawing a class mix per client instead).
* ``shards``: pathological label skew (McMahan et al., 2017): examples sorted
  by label are cut into ``num_clients * classes_per_client`` shards and each
  client is dealt ``classes_per_client`` shards at random.
* ``quantity_skew``: client sizes :math:`\propto p \sim \mathrm{Dir}(\alpha
  1_K)` with labels iid (NIID-Bench's quantity skew).
* ``natural``: one client per value of a per-example id column (LEAF's
  writers/devices).

References:
  McMahan et al., `Communication-Efficient Learning of Deep Networks from
  Decentralized Data <https://arxiv.org/abs/1602.05629>`_, AISTATS 2017.

  Hsu, Qi and Brown, `Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification
  <https://arxiv.org/abs/1909.06335>`_, 2019.

  Yurochkin et al., `Bayesian Nonparametric Federated Learning of Neural
  Networks <https://arxiv.org/abs/1905.12022>`_, ICML 2019.

  Li, Diao, Chen and He, `Federated Learning on Non-IID Data Silos: An
  Experimental Study <https://arxiv.org/abs/2102.02079>`_, ICDE 2022.
"""

import numbers
from typing import Mapping, Sequence

import numpy as np

from fedjax_ext.data._validate import check_int
from fedjax_ext.data._validate import check_number

PARTITIONS = ('iid', 'dirichlet', 'shards', 'quantity_skew', 'natural')
# Dirichlet label skew redraws all proportions up to this many times when a
# draw leaves a client empty, then fills empty clients by moving examples.
MAX_DIRICHLET_DRAWS = 10


def _group(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
  """Client k's sorted int64 rows, for an owner (client id) per row."""
  order = np.argsort(owner, kind='stable').astype(np.int64)
  bounds = np.cumsum(np.bincount(owner, minlength=num_clients))[:-1]
  return np.split(order, bounds)


def _check_num_clients(num_clients: int, num_examples: int) -> None:
  check_int('num_clients', num_clients, low=1)
  if not 1 <= num_clients <= num_examples:
    raise ValueError(f'num_clients must be in [1, {num_examples}] (the number '
                     f'of examples) so that no client is empty, got '
                     f'{num_clients}.')


def _check_positive(value: float, name: str) -> None:
  check_number(name, value, low=0, low_open=True)


def _as_labels(labels: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a 1-D integer array, got shape '
                     f'{labels.shape} and dtype {labels.dtype}.')
  if labels.size and labels.min() < 0:
    raise ValueError(f'labels must be >= 0, got {labels.min()}.')
  return labels


def iid_partition(num_examples: int, num_clients: int, *,
                  seed: int) -> list[np.ndarray]:
  """A uniformly random split; client sizes differ by at most one.

  Args:
    num_examples: N, the number of rows.
    num_clients: K in [1, N].
    seed: fixes the split.

  Returns:
    K sorted int64 index arrays covering ``range(N)`` exactly once.
  """
  check_int('num_examples', num_examples, low=1)
  _check_num_clients(num_clients, num_examples)
  rng = np.random.default_rng(seed)
  parts = np.array_split(rng.permutation(num_examples), num_clients)
  return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet_owners(labels: np.ndarray, num_clients: int, num_classes: int,
                      alpha: float, rng: np.random.Generator) -> np.ndarray:
  """One draw: each class split over clients with Dir(alpha) proportions."""
  owner = np.empty(len(labels), np.int64)
  for c in range(num_classes):
    rows = rng.permutation(np.flatnonzero(labels == c))
    shares = rng.dirichlet(np.full(num_clients, alpha))
    cuts = np.floor(np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
    owner[rows] = np.repeat(np.arange(num_clients),
                            np.diff(cuts, prepend=0, append=len(rows)))
  return owner


def _fill_empty_clients(owner: np.ndarray, num_clients: int,
                        rng: np.random.Generator) -> np.ndarray:
  """Moves one random example of the largest client to each empty client."""
  owner = owner.copy()
  for client in range(num_clients):
    counts = np.bincount(owner, minlength=num_clients)
    if counts[client] == 0:
      donor = np.argmax(counts)
      owner[rng.choice(np.flatnonzero(owner == donor))] = client
  return owner


def dirichlet_partition(labels: np.ndarray, num_clients: int, *, alpha: float,
                        seed: int,
                        num_classes: int | None = None) -> list[np.ndarray]:
  r"""Label skew: each class spread over clients by Dir(alpha) shares.

  For each class c the class's examples, shuffled, are cut into K
  consecutive runs of sizes :math:`\lfloor N_c \cdot \mathrm{cumsum}(q_c)
  \rfloor` differences, :math:`q_c \sim \mathrm{Dir}(\alpha 1_K)`.

  No client is left empty: a draw with an empty client is redrawn (up to
  `MAX_DIRICHLET_DRAWS` draws in all); if the last draw still leaves
  clients empty, each empty client receives one random example of the then
  largest client. The fallback changes at most K examples' owners.

  Args:
    labels: int [N] class ids >= 0.
    num_clients: K in [1, N].
    alpha: concentration > 0; 0.05 is near one class per client, 100 near
      iid.
    seed: fixes the split.
    num_classes: defaults to ``max(labels) + 1``.

  Returns:
    K sorted int64 index arrays covering ``range(N)`` exactly once.

  References:
    Hsu et al., 2019 (https://arxiv.org/abs/1909.06335); Yurochkin et al.,
    2019 (https://arxiv.org/abs/1905.12022).
  """
  labels = _as_labels(labels)
  _check_num_clients(num_clients, len(labels))
  _check_positive(alpha, 'alpha')
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  elif check_int('num_classes', num_classes, low=1) <= labels.max():
    raise ValueError(f'labels must be < num_classes={num_classes}, got '
                     f'{labels.max()}.')
  rng = np.random.default_rng(seed)
  for _ in range(MAX_DIRICHLET_DRAWS):
    owner = _dirichlet_owners(labels, num_clients, num_classes, alpha, rng)
    if np.bincount(owner, minlength=num_clients).min() > 0:
      break
  else:
    owner = _fill_empty_clients(owner, num_clients, rng)
  return _group(owner, num_clients)


def _shards_per_class(class_sizes: np.ndarray, num_shards: int) -> np.ndarray:
  """Largest-remainder split of `num_shards` over classes, each in [1, n_c]."""
  present = class_sizes > 0
  quota = num_shards * class_sizes / class_sizes.sum()
  shards = np.where(present, np.clip(np.floor(quota), 1, class_sizes), 0)
  shards = shards.astype(np.int64)
  while shards.sum() < num_shards:
    room = np.where(shards < class_sizes, quota - shards, -np.inf)
    shards[np.argmax(room)] += 1
  while shards.sum() > num_shards:
    excess = np.where(shards > 1, shards - quota, -np.inf)
    shards[np.argmax(excess)] -= 1
  return shards


def shard_partition(labels: np.ndarray, num_clients: int, *,
                    classes_per_client: int, seed: int) -> list[np.ndarray]:
  """Pathological label skew: each client gets `classes_per_client` shards.

  As in McMahan et al. (2017), examples sorted by label are cut into
  ``S = num_clients * classes_per_client`` shards that are dealt to clients
  at random, ``classes_per_client`` each. Unlike cutting the sorted array
  into equal runs, shards here never straddle two classes: each class gets
  a share of the S shards proportional to its size (largest remainder, at
  least one), so a client sees at most `classes_per_client` classes.

  Args:
    labels: int [N] class ids >= 0.
    num_clients: K.
    classes_per_client: shards per client, in [1, classes present].
    seed: fixes the shuffle within classes and the deal.

  Returns:
    K sorted int64 index arrays covering ``range(N)`` exactly once.

  Raises:
    ValueError: if S is below the number of classes present (some class
      would have no shard) or above N (some shard would be empty).
  """
  labels = _as_labels(labels)
  _check_num_clients(num_clients, len(labels))
  class_sizes = np.bincount(labels)
  num_present = int((class_sizes > 0).sum())
  # More shards per client than classes would only cut classes finer.
  check_int('classes_per_client', classes_per_client, low=1,
            high=num_present)
  num_shards = num_clients * classes_per_client
  if not num_present <= num_shards <= len(labels):
    raise ValueError(
        f'num_clients * classes_per_client = {num_shards} shards must be in '
        f'[{num_present}, {len(labels)}] (the classes present, the examples) '
        f'so that every class has a shard and no shard is empty.')
  rng = np.random.default_rng(seed)
  shards = []
  for c, count in enumerate(_shards_per_class(class_sizes, num_shards)):
    if count:
      rows = rng.permutation(np.flatnonzero(labels == c))
      shards.extend(np.array_split(rows, count))
  deal = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
  return [np.sort(np.concatenate([shards[s] for s in hand])).astype(np.int64)
          for hand in deal]


def quantity_skew_partition(num_examples: int, num_clients: int, *,
                            alpha: float, seed: int) -> list[np.ndarray]:
  r"""Quantity skew: sizes ~ Dirichlet shares, labels iid.

  Client k gets :math:`1 + m_k` examples, :math:`m \sim
  \mathrm{Multinomial}(N - K, p)`, :math:`p \sim \mathrm{Dir}(\alpha 1_K)`,
  drawn from one random permutation of the examples (so each client's
  labels follow the global distribution).

  Args:
    num_examples: N.
    num_clients: K in [1, N].
    alpha: concentration > 0; small values give very unequal sizes.
    seed: fixes the split.

  Returns:
    K sorted int64 index arrays covering ``range(N)`` exactly once.
  """
  check_int('num_examples', num_examples, low=1)
  _check_num_clients(num_clients, num_examples)
  _check_positive(alpha, 'alpha')
  rng = np.random.default_rng(seed)
  shares = rng.dirichlet(np.full(num_clients, alpha))
  sizes = 1 + rng.multinomial(num_examples - num_clients, shares / shares.sum())
  parts = np.split(rng.permutation(num_examples), np.cumsum(sizes)[:-1])
  return [np.sort(p).astype(np.int64) for p in parts]


def natural_partition(client_column: np.ndarray) -> list[np.ndarray]:
  """One client per distinct id, clients ordered by id.

  Args:
    client_column: [N] per-example client ids (ints or strings).

  Returns:
    One sorted int64 index array per distinct id, in increasing id order.
  """
  client_column = np.asarray(client_column)
  if client_column.ndim != 1 or not len(client_column):
    raise ValueError(f'client_column must be non-empty and 1-D, got shape '
                     f'{client_column.shape}.')
  ids, owner = np.unique(client_column, return_inverse=True)
  return _group(owner.reshape(-1), len(ids))


def partition(method: str, examples: Mapping[str, np.ndarray],
              num_clients: int, *, seed: int, dirichlet_alpha: float = 0.5,
              classes_per_client: int = 2,
              quantity_alpha: float = 1.0) -> list[np.ndarray]:
  """Splits `examples` over `num_clients` clients by the named method.

  Args:
    method: one of `PARTITIONS`.
    examples: columns 'y' (and 'client_id' for 'natural').
    num_clients: K; for 'natural' it must equal the number of distinct ids.
    seed: fixes the split.
    dirichlet_alpha: `alpha` of `dirichlet_partition`.
    classes_per_client: of `shard_partition`.
    quantity_alpha: `alpha` of `quantity_skew_partition`.

  Returns:
    K sorted int64 index arrays covering every example exactly once.
  """
  if method not in PARTITIONS:
    raise ValueError(f'Unknown partition method {method!r}; choose one of '
                     f'{", ".join(PARTITIONS)}.')
  if 'y' not in examples:
    raise ValueError("examples must have a 'y' column (labels); have "
                     f'{sorted(examples)}.')
  if method == 'dirichlet':
    _check_positive(dirichlet_alpha, 'dirichlet_alpha')
  elif method == 'quantity_skew':
    _check_positive(quantity_alpha, 'quantity_alpha')
  num_examples = len(examples['y'])
  if method == 'iid':
    return iid_partition(num_examples, num_clients, seed=seed)
  if method == 'dirichlet':
    return dirichlet_partition(examples['y'], num_clients,
                               alpha=dirichlet_alpha, seed=seed)
  if method == 'shards':
    return shard_partition(examples['y'], num_clients,
                           classes_per_client=classes_per_client, seed=seed)
  if method == 'quantity_skew':
    return quantity_skew_partition(num_examples, num_clients,
                                   alpha=quantity_alpha, seed=seed)
  if method == 'natural':
    if 'client_id' not in examples:
      raise ValueError("partition 'natural' needs a 'client_id' column; have "
                       f'{sorted(examples)}.')
    parts = natural_partition(examples['client_id'])
    if num_clients != len(parts):
      raise ValueError(f'num_clients must equal the {len(parts)} natural '
                       f'clients, got {num_clients}.')
    return parts
  raise ValueError(f'Unknown partition method {method!r}; choose one of '
                   f'{", ".join(PARTITIONS)}.')


def split_clients(
    client_indices: Sequence[np.ndarray], *, test_fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Holds out a random fraction of each client's examples.

  Client k with n_k examples keeps ``max(1, floor((1 - f) n_k))`` for
  training (as FedProx's ``int(0.9 * n)``), so every client trains on at
  least one example; the rest is its held-out set (possibly empty).

  Args:
    client_indices: per-client index arrays.
    test_fraction: f in [0, 1).
    seed: fixes which examples are held out.

  Returns:
    (train, held_out): per-client sorted int64 arrays; client k's two arrays
    are disjoint and together equal ``client_indices[k]``.
  """
  if not (isinstance(test_fraction, numbers.Real) and
          0 <= test_fraction < 1):
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction}.')
  rng = np.random.default_rng(seed)
  train, held_out = [], []
  for client, indices in enumerate(client_indices):
    indices = np.asarray(indices, np.int64)
    if not len(indices):
      raise ValueError(f'client_indices[{client}] is empty.')
    shuffled = rng.permutation(indices)
    num_train = max(1, int(np.floor((1 - test_fraction) * len(indices)
                                    + 1e-9)))
    train.append(np.sort(shuffled[:num_train]))
    held_out.append(np.sort(shuffled[num_train:]))
  return train, held_out
