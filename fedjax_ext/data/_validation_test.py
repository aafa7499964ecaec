"""Bad arguments to `fedjax_ext.data`'s public functions: one named error each.

Every row is a call with one bad argument and a substring the message must
contain: the argument's name and, where there is one, its allowed range.
"""

import math

from absl.testing import absltest
import numpy as np

from fedjax_ext._src import test_utils
from fedjax_ext import data


def toy(num_examples=20, num_classes=4):
  return {'x': np.zeros((num_examples, 2), np.float32),
          'y': np.arange(num_examples, dtype=np.int32) % num_classes,
          'client_id': np.arange(num_examples) % 5}


CLIENTS = [np.arange(0, 10), np.arange(10, 20)]
LABELS = toy()['y']


def pack(**kwargs):
  args = dict(examples=toy(), client_indices=CLIENTS,
              cohort_ids=np.array([0, 1]), batch_size=4, num_steps=2, seed=0,
              round_num=0)
  args.update(kwargs)
  return data.pack_cohort(**args)


def partition(method='dirichlet', num_clients=4, **kwargs):
  return data.partition(method, toy(), num_clients, seed=0, **kwargs)


BAD_CALLS = (
    # partition and the partitioners.
    ('partition_unknown', lambda: partition('bogus'), 'partition method'),
    ('partition_clients_zero', lambda: partition(num_clients=0),
     'num_clients must be'),
    ('partition_clients_above_examples', lambda: partition(num_clients=21),
     'num_clients must be in [1, 20]'),
    ('partition_clients_float', lambda: partition('iid', num_clients=2.5),
     'num_clients must be an integer'),
    ('partition_alpha_nan',
     lambda: partition(dirichlet_alpha=math.nan), 'dirichlet_alpha'),
    ('partition_alpha_inf',
     lambda: partition(dirichlet_alpha=math.inf), 'dirichlet_alpha'),
    ('partition_alpha_negative',
     lambda: partition(dirichlet_alpha=-1.), 'dirichlet_alpha'),
    ('partition_quantity_alpha_zero',
     lambda: partition('quantity_skew', quantity_alpha=0.), 'quantity_alpha'),
    ('partition_classes_per_client_zero',
     lambda: partition('shards', classes_per_client=0), 'classes_per_client'),
    ('partition_classes_per_client_above_classes',
     lambda: partition('shards', num_clients=2, classes_per_client=50),
     'classes_per_client'),
    ('partition_natural_count',
     lambda: partition('natural', num_clients=3), 'num_clients must equal'),
    ('partition_no_labels',
     lambda: data.partition('iid', {'x': np.zeros(3)}, 1, seed=0),
     "examples must have a 'y' column"),
    ('iid_examples_zero',
     lambda: data.iid_partition(0, 1, seed=0), 'num_examples must be'),
    ('dirichlet_num_classes_zero',
     lambda: data.dirichlet_partition(LABELS, 2, alpha=1., seed=0,
                                      num_classes=0), 'num_classes must be'),
    ('dirichlet_labels_2d',
     lambda: data.dirichlet_partition(np.zeros((4, 2), np.int32), 2,
                                      alpha=1., seed=0), 'labels must be'),
    ('dirichlet_labels_float',
     lambda: data.dirichlet_partition(np.zeros(4), 2, alpha=1., seed=0),
     'labels must be'),
    ('dirichlet_labels_negative',
     lambda: data.dirichlet_partition(-np.ones(4, np.int32), 2, alpha=1.,
                                      seed=0), 'labels must be >= 0'),
    ('dirichlet_labels_empty',
     lambda: data.dirichlet_partition(np.zeros(0, np.int32), 1, alpha=1.,
                                      seed=0), 'num_clients must be'),
    ('quantity_alpha_nan',
     lambda: data.quantity_skew_partition(10, 2, alpha=math.nan, seed=0),
     'alpha must be'),
    ('natural_empty',
     lambda: data.natural_partition(np.zeros(0)), 'client_column'),
    ('split_fraction_one',
     lambda: data.split_clients(CLIENTS, test_fraction=1., seed=0),
     'test_fraction must be in [0, 1)'),
    ('split_fraction_nan',
     lambda: data.split_clients(CLIENTS, test_fraction=math.nan, seed=0),
     'test_fraction must be in [0, 1)'),
    # Sampling and packing.
    ('sample_fewer_clients_than_cohort',
     lambda: data.sample_clients(3, 5, seed=0, round_num=0),
     'clients_per_round must be in [1, 3]'),
    ('sample_cohort_zero',
     lambda: data.sample_clients(3, 0, seed=0, round_num=0),
     'clients_per_round must be in [1, 3]'),
    ('sample_num_clients_zero',
     lambda: data.sample_clients(0, 1, seed=0, round_num=0),
     'num_clients must be'),
    ('sample_groups_zero',
     lambda: data.sample_clients(4, 2, seed=0, round_num=0, num_groups=0),
     'num_groups'),
    ('sample_round_negative',
     lambda: data.sample_clients(4, 2, seed=0, round_num=-1),
     'round_num must be'),
    ('sample_seed_negative',
     lambda: data.sample_clients(4, 2, seed=-1, round_num=0), 'seed must be'),
    ('steps_batch_zero',
     lambda: data.num_local_steps([3], 0, local_epochs=1.),
     'batch_size must be'),
    ('steps_epochs_nan',
     lambda: data.num_local_steps([3], 2, local_epochs=math.nan),
     'local_epochs must be'),
    ('steps_epochs_inf',
     lambda: data.num_local_steps([3], 2, local_epochs=math.inf),
     'local_epochs must be'),
    ('steps_local_steps_zero',
     lambda: data.num_local_steps([3], 2, local_steps=0),
     'local_steps must be'),
    ('steps_local_steps_float',
     lambda: data.num_local_steps([3], 2, local_steps=1e9 + .5),
     'local_steps must be an integer'),
    ('steps_both', lambda: data.num_local_steps([3], 2, local_epochs=1.,
                                                local_steps=1),
     'exactly one of local_epochs and local_steps'),
    ('steps_no_clients',
     lambda: data.num_local_steps([], 2, local_epochs=1.), 'client_sizes'),
    ('pack_batch_zero', lambda: pack(batch_size=0), 'batch_size must be'),
    ('pack_steps_zero', lambda: pack(num_steps=0), 'num_steps must be'),
    ('pack_epochs_nan', lambda: pack(local_epochs=math.nan),
     'local_epochs must be'),
    ('pack_cohort_id_out_of_range', lambda: pack(cohort_ids=np.array([0, 2])),
     'cohort_ids must be in [0, 2)'),
    ('pack_cohort_ids_2d', lambda: pack(cohort_ids=np.zeros((1, 2), int)),
     'cohort_ids must be'),
    ('pack_empty_client',
     lambda: pack(client_indices=[np.arange(0, 10), np.zeros(0, int)]),
     'client_indices[1] is empty'),
    ('pack_ragged_columns',
     lambda: pack(examples={'x': np.zeros((5, 2)), 'y': np.zeros(20)}),
     'examples'),
    ('pack_mask_column', lambda: pack(examples={**toy(), 'mask': np.ones(20)}),
     "examples must not have a 'mask' column"),
    ('pack_index_out_of_range',
     lambda: pack(client_indices=[np.arange(0, 10), np.arange(15, 25)]),
     'client_indices[1]'),
    # Validation helpers and loading.
    ('validate_num_classes_zero',
     lambda: data.validate_examples(toy(), num_classes=0, where='t'),
     'num_classes must be'),
    ('validate_partition_num_examples_negative',
     lambda: data.validate_partition(CLIENTS, -1), 'num_examples must be'),
    ('load_unknown', lambda: data.load_dataset('bogus'), 'Unknown dataset'),
    ('load_unknown_config',
     lambda: data.load_dataset('leaf_synthetic/bogus', data_dir='/nonexistent'),
     'Unknown config'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
