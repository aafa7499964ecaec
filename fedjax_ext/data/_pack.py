"""Client sampling and cohort packing into fixed shapes [C, S, B, ...].

XLA compiles one program per input shape, so a round whose clients hold
different amounts of data must still see the same shapes every round.
`pack_cohort` lays each sampled client's local example stream out as
S batches of B rows, pads with masked rows, and stacks the cohort:
every column becomes [C, S, B, ...] plus 'mask' [C, S, B]. S is fixed for
the whole run by `num_local_steps` from the largest client, so rounds never
retrace (FedJAX pads the same way in its `for_each_client` blocks).

Randomness is a pure function of (seed, round) for sampling and of (seed,
round, client) for a client's batch order: a resumed run replays an
uninterrupted one, and a process that packs only its own block of the
cohort packs it exactly as a single process would.
"""

import math
from typing import Sequence

import numpy as np

from fedjax_ext.core import Cohort, Examples
from fedjax_ext.data._validate import check_int
from fedjax_ext.data._validate import check_number

MASK = 'mask'
# Streams of `np.random.default_rng([seed, round, STREAM])`.
_SAMPLING_STREAM = 0
_SHUFFLE_STREAM = 1


def sample_clients(num_clients: int, clients_per_round: int, *, seed: int,
                   round_num: int, num_groups: int = 1) -> np.ndarray:
  """Client ids of one round, uniformly without replacement.

  With ``num_groups`` G > 1 the federation is split into G groups by
  ``client_id % G`` and each group contributes ``C / G`` clients, listed
  group after group (each group sorted). Multi-host runs use one group per
  process, so that every process trains only clients whose data it holds;
  a single-process run with the same G samples the very same cohort.

  Args:
    num_clients: N, the size of the federation.
    clients_per_round: C <= N, a multiple of `num_groups`.
    seed: the run's sampling seed.
    round_num: the round (0-based); with `seed` it fixes the draw.
    num_groups: G, see above.

  Returns:
    int32 [C] client ids.
  """
  check_int('num_clients', num_clients, low=1)
  check_int('clients_per_round', clients_per_round, low=1, high=num_clients)
  check_int('num_groups', num_groups, low=1)
  check_int('seed', seed, low=0)
  check_int('round_num', round_num, low=0)
  if clients_per_round % num_groups:
    raise ValueError(f'clients_per_round ({clients_per_round}) must be a '
                     f'multiple of num_groups ({num_groups}).')
  per_group = clients_per_round // num_groups
  blocks = []
  for group in range(num_groups):
    members = np.arange(group, num_clients, num_groups)
    if per_group > len(members):
      raise ValueError(f'group {group} has {len(members)} clients, fewer '
                       f'than the {per_group} it must contribute.')
    rng = np.random.default_rng([seed, round_num, _SAMPLING_STREAM, group]
                                if num_groups > 1 else
                                [seed, round_num, _SAMPLING_STREAM])
    blocks.append(np.sort(rng.choice(members, per_group, replace=False)))
  return np.concatenate(blocks).astype(np.int32)


def num_local_steps(client_sizes: Sequence[int], batch_size: int, *,
                    local_epochs: float | None = None,
                    local_steps: int | None = None) -> int:
  """S, the steps of the busiest client: the fixed step axis of a run.

  Exactly one of `local_epochs` (each client makes ``ceil(E * n_i / B)``
  steps over its ``n_i`` examples) and `local_steps` (every client makes
  that many full batches, cycling through its data) must be given.
  """
  if (local_epochs is None) == (local_steps is None):
    raise ValueError('Give exactly one of local_epochs and local_steps.')
  check_int('batch_size', batch_size, low=1)
  if local_steps is not None:
    return check_int('local_steps', local_steps, low=1)
  check_number('local_epochs', local_epochs, low=0, low_open=True)
  if not len(client_sizes):
    raise ValueError('client_sizes must list at least one client, got none.')
  return max(math.ceil(local_epochs * n / batch_size) for n in client_sizes)


def _example_stream(indices: np.ndarray, length: int,
                    rng: np.random.Generator) -> np.ndarray:
  """`length` rows drawn as consecutive shuffled passes over `indices`."""
  passes = -(-length // len(indices))
  stream = np.concatenate([rng.permutation(indices) for _ in range(passes)])
  return stream[:length]


def _check_pack_args(examples, client_indices, cohort_ids, *, batch_size,
                     num_steps, local_epochs) -> None:
  """Named errors for `pack_cohort`'s arguments (the cohort's clients only)."""
  check_int('batch_size', batch_size, low=1)
  check_int('num_steps', num_steps, low=1)
  if local_epochs is not None:
    check_number('local_epochs', local_epochs, low=0, low_open=True)
  if MASK in examples:
    raise ValueError(f"examples must not have a {MASK!r} column (pack_cohort "
                     'adds it).')
  lengths = {name: len(column) for name, column in examples.items()}
  if not lengths or len(set(lengths.values())) != 1:
    raise ValueError(f'examples must be non-empty columns of one length, got '
                     f'lengths {lengths}.')
  num_rows = next(iter(lengths.values()))
  ids = np.asarray(cohort_ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'cohort_ids must be a 1-D integer array, got shape '
                     f'{ids.shape} and dtype {ids.dtype}.')
  num_clients = len(client_indices)
  if ids.size and (ids.min() < 0 or ids.max() >= num_clients):
    raise ValueError(f'cohort_ids must be in [0, {num_clients}) (the '
                     f'clients of client_indices), got {ids.tolist()}.')
  for client in ids.tolist():
    indices = np.asarray(client_indices[client])
    if not indices.size:
      raise ValueError(f'client_indices[{client}] is empty.')
    if (not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0 or
        indices.max() >= num_rows):
      raise ValueError(f'client_indices[{client}] must be integer rows in '
                       f'[0, {num_rows}) of examples, got dtype '
                       f'{indices.dtype}, range [{indices.min()}, '
                       f'{indices.max()}].')


def pack_cohort(examples: Examples, client_indices: Sequence[np.ndarray],
                cohort_ids: np.ndarray, *, batch_size: int, num_steps: int,
                seed: int, round_num: int,
                local_epochs: float | None = None) -> Cohort:
  """Packs the sampled clients' local data into one fixed-shape `Cohort`.

  Args:
    examples: pooled training columns ('x', 'y', ...), length M.
    client_indices: for each of the N clients, its rows of `examples`.
    cohort_ids: int [C] ids of this round's clients.
    batch_size: B.
    num_steps: S, from `num_local_steps` (fixed for the run).
    seed, round_num: fix the shuffling, as in `sample_clients`.
    local_epochs: if given, client i processes ``ceil(E * n_i)`` examples
      (its remaining steps are masked padding); otherwise every client fills
      all S batches.

  Returns:
    A NumPy `Cohort`: columns [C, S, B, ...], 'mask' [C, S, B] float32,
    client ids and the clients' example counts.
  """
  _check_pack_args(examples, client_indices, cohort_ids,
                   batch_size=batch_size, num_steps=num_steps,
                   local_epochs=local_epochs)
  slots = num_steps * batch_size
  rows = np.zeros((len(cohort_ids), slots), np.int64)
  mask = np.zeros((len(cohort_ids), slots), np.float32)
  for row, client in enumerate(cohort_ids):
    indices = client_indices[client]
    length = slots
    if local_epochs is not None:
      length = min(slots, math.ceil(local_epochs * len(indices)))
    # Each client's order depends on (seed, round, client) only, not on
    # which other clients this process packs alongside it.
    rng = np.random.default_rng([seed, round_num, _SHUFFLE_STREAM, client])
    rows[row, :length] = _example_stream(indices, length, rng)
    mask[row, :length] = 1.
  shape = (len(cohort_ids), num_steps, batch_size)
  batches = {name: np.take(column, rows, axis=0).reshape(
      shape + column.shape[1:]) for name, column in examples.items()}
  batches[MASK] = mask.reshape(shape)
  sizes = np.array([len(client_indices[c]) for c in cohort_ids], np.float32)
  return Cohort(client_ids=np.asarray(cohort_ids, np.int32), batches=batches,
                num_examples=sizes)
