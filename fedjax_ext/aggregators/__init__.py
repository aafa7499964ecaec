"""Aggregators: stacked client updates [C, ...] -> one update."""

from fedjax_ext.aggregators._mean import weighted_mean
from fedjax_ext.aggregators._preaggregators import arc
from fedjax_ext.aggregators._preaggregators import bucketing
from fedjax_ext.aggregators._preaggregators import BucketingState
from fedjax_ext.aggregators._preaggregators import chain
from fedjax_ext.aggregators._preaggregators import nnm
from fedjax_ext.aggregators._preaggregators import norm_clipping
from fedjax_ext.aggregators._preaggregators import PreAggregator
from fedjax_ext.aggregators._preaggregators import process
from fedjax_ext.aggregators._robust import bulyan
from fedjax_ext.aggregators._robust import centered_clipping
from fedjax_ext.aggregators._robust import CenteredClippingState
from fedjax_ext.aggregators._robust import client_sq_norms
from fedjax_ext.aggregators._robust import coordinate_median
from fedjax_ext.aggregators._robust import finite_rows
from fedjax_ext.aggregators._robust import geometric_median
from fedjax_ext.aggregators._robust import krum
from fedjax_ext.aggregators._robust import krum_scores
from fedjax_ext.aggregators._robust import mean
from fedjax_ext.aggregators._robust import mix_rows
from fedjax_ext.aggregators._robust import multi_krum
from fedjax_ext.aggregators._robust import pairwise_sq_distances
from fedjax_ext.aggregators._robust import present_clients
from fedjax_ext.aggregators._robust import rejected_clients
from fedjax_ext.aggregators._robust import trimmed_mean
