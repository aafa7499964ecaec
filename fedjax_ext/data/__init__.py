"""Datasets, client partitions and cohort packing.

TFDS (array_record, no TensorFlow) -> NumPy columns -> `partition` ->
per-client index arrays -> `pack_cohort` -> fixed-shape [C, S, B, ...]
arrays with masks. Federated datasets with natural clients (TFF's
federated EMNIST, Shakespeare, Stack Overflow) are prepared once with
``python -m fedjax_ext.data.prepare --dataset=NAME --data_dir=DIR``.
"""

from fedjax_ext.data._bbc_news import tokenize_examples
from fedjax_ext.data._datasets import DATASETS
from fedjax_ext.data._datasets import TEXT_DATASETS
from fedjax_ext.data._datasets import default_partition
from fedjax_ext.data._datasets import NATURAL_CLIENTS
from fedjax_ext.data._datasets import Dataset
from fedjax_ext.data._datasets import load_dataset
from fedjax_ext.data._pack import MASK
from fedjax_ext.data._pack import num_local_steps
from fedjax_ext.data._pack import pack_cohort
from fedjax_ext.data._pack import sample_clients
from fedjax_ext.data._partition import dirichlet_partition
from fedjax_ext.data._partition import iid_partition
from fedjax_ext.data._partition import natural_partition
from fedjax_ext.data._partition import partition
from fedjax_ext.data._partition import PARTITIONS
from fedjax_ext.data._partition import quantity_skew_partition
from fedjax_ext.data._partition import shard_partition
from fedjax_ext.data._partition import split_clients
from fedjax_ext.data._tfds import DATA_DIR_ENV
from fedjax_ext.data._tfds import DatasetNotFoundError
from fedjax_ext.data._validate import DataError
from fedjax_ext.data._validate import validate_examples
from fedjax_ext.data._validate import validate_partition
