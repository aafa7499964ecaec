"""Byzantine robustness: attacks, worker momentum, robust training."""

from fedjax_ext.byzantine._algorithm import attack_outputs
from fedjax_ext.byzantine._algorithm import byzantine_ids
from fedjax_ext.byzantine._algorithm import mark_cohort
from fedjax_ext.byzantine._algorithm import MODES
from fedjax_ext.byzantine._algorithm import robust_algorithm
from fedjax_ext.byzantine._algorithm import robustness_metrics
from fedjax_ext.byzantine._attacks import alie
from fedjax_ext.byzantine._attacks import alie_z
from fedjax_ext.byzantine._attacks import Attack
from fedjax_ext.byzantine._attacks import ATTACKS
from fedjax_ext.byzantine._attacks import create_attack
from fedjax_ext.byzantine._attacks import gaussian
from fedjax_ext.byzantine._attacks import honest_mean_std
from fedjax_ext.byzantine._attacks import inner_product_manipulation
from fedjax_ext.byzantine._attacks import label_flip
from fedjax_ext.byzantine._attacks import mimic
from fedjax_ext.byzantine._attacks import no_attack
from fedjax_ext.byzantine._attacks import non_finite
from fedjax_ext.byzantine._attacks import sign_flip
from fedjax_ext.byzantine._clients import BYZANTINE
from fedjax_ext.byzantine._clients import byzantine_client
from fedjax_ext.byzantine._clients import MOMENTUM_INITS
from fedjax_ext.byzantine._clients import sgd_gradient
from fedjax_ext.byzantine._clients import worker_momentum
