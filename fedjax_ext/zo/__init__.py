"""Zeroth-order (forward-only) estimators as optax transforms, centralized
and federated: MeZO, Horvitz-Thompson sparse ZO, CurvZO, seed replay.

Modules: `_two_point` (the SPSA core and seed replay of a step), `_mezo`
(the dense estimator), `_sparse` (Horvitz-Thompson sparse ZO and CurvZO),
`_sampling` (block probabilities and budget), `_states` (the estimator and
sampler states inside an optax chain), `_federated` (ZO clients, the
server-carried sampler in ``ServerState.algorithm_state`` and seed replay
as the round's output-transform stage).
"""

from fedjax_ext.zo._federated import init_sampler
from fedjax_ext.zo._federated import LocalResult
from fedjax_ext.zo._federated import replay
from fedjax_ext.zo._federated import replay_step
from fedjax_ext.zo._federated import sampler_bytes
from fedjax_ext.zo._federated import sampler_server_update
from fedjax_ext.zo._federated import seed_replay_outputs
from fedjax_ext.zo._federated import seed_upload_bytes
from fedjax_ext.zo._federated import SeedUpload
from fedjax_ext.zo._federated import upload_bytes
from fedjax_ext.zo._federated import UPLOADS
from fedjax_ext.zo._federated import zo_fed_avg
from fedjax_ext.zo._federated import zo_local
from fedjax_ext.zo._federated import zo_message
from fedjax_ext.zo._federated import zo_step
from fedjax_ext.zo._federated import zo_train_locally
from fedjax_ext.zo._federated import ZOMessage
from fedjax_ext.zo._mezo import mezo
from fedjax_ext.zo._mezo import MeZOState
from fedjax_ext.zo._sampling import adapt_budget
from fedjax_ext.zo._sampling import effective_support
from fedjax_ext.zo._sampling import poisson_pps_probs
from fedjax_ext.zo._sparse import curvzo
from fedjax_ext.zo._sparse import SamplerState
from fedjax_ext.zo._sparse import SAMPLINGS
from fedjax_ext.zo._sparse import SCORE_RULES
from fedjax_ext.zo._sparse import sparse_zo
from fedjax_ext.zo._sparse import SparseZOState
from fedjax_ext.zo._states import mean_sampler_state
from fedjax_ext.zo._states import num_blocks
from fedjax_ext.zo._states import num_parameters
from fedjax_ext.zo._states import projected_grads
from fedjax_ext.zo._states import reseed
from fedjax_ext.zo._states import sampler_state
from fedjax_ext.zo._states import with_sampler_state
from fedjax_ext.zo._states import zo_loss
from fedjax_ext.zo._states import zo_states
from fedjax_ext.zo._two_point import direction
from fedjax_ext.zo._two_point import DISTRIBUTIONS
