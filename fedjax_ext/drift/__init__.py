"""Client drift, gradient dissimilarity and the local-SGD drift bound,
computed from the cohort's stacked client quantities inside the round."""

from fedjax_ext.drift._metrics import DISSIMILARITY_CONSTANT
from fedjax_ext.drift._metrics import drift_bound
from fedjax_ext.drift._metrics import flatten_clients
from fedjax_ext.drift._metrics import gradient_dissimilarity
from fedjax_ext.drift._metrics import NOISE_CONSTANT
from fedjax_ext.drift._metrics import normalized_weights
from fedjax_ext.drift._metrics import UPDATE_METRICS
from fedjax_ext.drift._metrics import update_metrics
from fedjax_ext.drift._round import client_gradient_stats
from fedjax_ext.drift._round import drift_metrics
from fedjax_ext.drift._round import GradientStats
from fedjax_ext.drift._round import instrument
