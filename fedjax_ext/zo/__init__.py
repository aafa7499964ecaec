"""Zeroth-order (forward-only) estimators as optax transforms, centralized
and federated: MeZO, Horvitz-Thompson sparse ZO, CurvZO, seed replay."""

from fedjax_ext.zo._estimators import curvzo
from fedjax_ext.zo._estimators import direction
from fedjax_ext.zo._estimators import DISTRIBUTIONS
from fedjax_ext.zo._estimators import mezo
from fedjax_ext.zo._estimators import MeZOState
from fedjax_ext.zo._estimators import num_blocks
from fedjax_ext.zo._estimators import num_parameters
from fedjax_ext.zo._estimators import projected_grads
from fedjax_ext.zo._estimators import reseed
from fedjax_ext.zo._estimators import SAMPLINGS
from fedjax_ext.zo._estimators import SCORE_RULES
from fedjax_ext.zo._estimators import sparse_zo
from fedjax_ext.zo._estimators import SparseZOState
from fedjax_ext.zo._estimators import zo_loss
from fedjax_ext.zo._estimators import zo_states
from fedjax_ext.zo._federated import replay
from fedjax_ext.zo._federated import replay_step
from fedjax_ext.zo._federated import seed_replay
from fedjax_ext.zo._federated import seed_upload_bytes
from fedjax_ext.zo._federated import SeedUpload
from fedjax_ext.zo._federated import upload_bytes
from fedjax_ext.zo._federated import UPLOADS
from fedjax_ext.zo._federated import zo_fed_avg
from fedjax_ext.zo._federated import zo_local
from fedjax_ext.zo._federated import zo_step
from fedjax_ext.zo._federated import zo_train_locally
from fedjax_ext.zo._sampling import adapt_budget
from fedjax_ext.zo._sampling import effective_support
from fedjax_ext.zo._sampling import poisson_pps_probs
