"""Aggregators: stacked client updates [C, ...] -> one update.

Robust rules by concept: `_presence` (which clients take part, cheap row
reads), `_coordinatewise` (mean, median, trimmed mean), `_distance` (Krum,
multi-Krum, Bulyan, geometric median, centered clipping) and
`_preaggregators` (NNM, clipping, ARC, bucketing and their chaining).
"""

from fedjax_ext.aggregators._coordinatewise import coordinate_median
from fedjax_ext.aggregators._coordinatewise import mean
from fedjax_ext.aggregators._coordinatewise import trimmed_mean
from fedjax_ext.aggregators._distance import bulyan
from fedjax_ext.aggregators._distance import centered_clipping
from fedjax_ext.aggregators._distance import CenteredClippingState
from fedjax_ext.aggregators._distance import geometric_median
from fedjax_ext.aggregators._distance import krum
from fedjax_ext.aggregators._distance import krum_scores
from fedjax_ext.aggregators._distance import multi_krum
from fedjax_ext.aggregators._distance import pairwise_sq_distances
from fedjax_ext.aggregators._mean import weighted_mean
from fedjax_ext.aggregators._preaggregators import arc
from fedjax_ext.aggregators._preaggregators import bucketing
from fedjax_ext.aggregators._preaggregators import BucketingState
from fedjax_ext.aggregators._preaggregators import chain
from fedjax_ext.aggregators._preaggregators import nnm
from fedjax_ext.aggregators._preaggregators import norm_clipping
from fedjax_ext.aggregators._preaggregators import PreAggregator
from fedjax_ext.aggregators._preaggregators import process
from fedjax_ext.aggregators._presence import client_sq_norms
from fedjax_ext.aggregators._presence import finite_rows
from fedjax_ext.aggregators._presence import mix_rows
from fedjax_ext.aggregators._presence import present_clients
from fedjax_ext.aggregators._presence import rejected_clients
