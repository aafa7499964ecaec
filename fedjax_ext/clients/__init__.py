"""One client's local update: pure functions mapped by `core.map_clients`."""

from fedjax_ext.clients._local import check_batches
from fedjax_ext.clients._local import check_prox_mu
from fedjax_ext.clients._local import check_update_args
from fedjax_ext.clients._local import local_sgd
from fedjax_ext.clients._local import LocalRun
from fedjax_ext.clients._local import LocalStats
from fedjax_ext.clients._local import run_local_steps
from fedjax_ext.clients._local import stats_metrics
from fedjax_ext.clients._local import StepFn
from fedjax_ext.clients._local import train_locally
from fedjax_ext.clients._objectives import classification_loss
from fedjax_ext.clients._objectives import LossFn
from fedjax_ext.clients._objectives import masked_mean
from fedjax_ext.clients._objectives import per_example_cross_entropy
from fedjax_ext.clients._objectives import predict_fn
