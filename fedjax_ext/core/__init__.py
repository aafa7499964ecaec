"""Core abstractions: the round's values, its stages, and client mapping.

The stages (`run_clients`, `weigh_clients`, `aggregate_outputs`,
`optax_server_update`, `tree_scatter`, `round_metrics`, ...) are public
pure functions; `federated_algorithm` is their FedAvg-shaped composition,
and methods of other shapes compose them in their own ``apply``.
"""

from fedjax_ext.core._algorithm import ExtraMetricsFn
from fedjax_ext.core._algorithm import federated_algorithm
from fedjax_ext.core._algorithm import TransformOutputsFn
from fedjax_ext.core._map import as_execution
from fedjax_ext.core._map import canonicalize_convs
from fedjax_ext.core._map import CLIENT_AXIS
from fedjax_ext.core._map import client_mesh
from fedjax_ext.core._map import CPU_VMAP_MAX_PARAMS
from fedjax_ext.core._map import Execution
from fedjax_ext.core._map import local_steps_unroll
from fedjax_ext.core._map import map_clients
from fedjax_ext.core._map import resolve_single_device
from fedjax_ext.core._map import resolve_strategy
from fedjax_ext.core._map import STRATEGIES
from fedjax_ext.core._stages import aggregate_outputs
from fedjax_ext.core._stages import as_server_update
from fedjax_ext.core._stages import check_weighting
from fedjax_ext.core._stages import client_keys
from fedjax_ext.core._stages import communication_metrics
from fedjax_ext.core._stages import optax_server_update
from fedjax_ext.core._stages import payload_bytes
from fedjax_ext.core._stages import round_key
from fedjax_ext.core._stages import round_metrics
from fedjax_ext.core._stages import run_clients
from fedjax_ext.core._stages import stage_key
from fedjax_ext.core._stages import weigh_clients
from fedjax_ext.core._stages import WEIGHTINGS
from fedjax_ext.core._stages import with_algorithm_state
from fedjax_ext.core._structures import Aggregator
from fedjax_ext.core._structures import ClientOutput
from fedjax_ext.core._structures import ClientUpdateFn
from fedjax_ext.core._structures import Cohort
from fedjax_ext.core._structures import FederatedAlgorithm
from fedjax_ext.core._structures import ServerState
from fedjax_ext.core._structures import ServerUpdate
from fedjax_ext.core._structures import state_params
from fedjax_ext.core._tree import tree_all_finite
from fedjax_ext.core._tree import tree_broadcast
from fedjax_ext.core._tree import tree_gather
from fedjax_ext.core._tree import tree_scatter
from fedjax_ext.core._tree import tree_weighted_mean
from fedjax_ext.core._types import Batch
from fedjax_ext.core._types import ClientState
from fedjax_ext.core._types import Examples
from fedjax_ext.core._types import Metrics
from fedjax_ext.core._types import Params
from fedjax_ext.core._types import PRNGKey
from fedjax_ext.core._types import PyTree
from fedjax_ext.core._types import Updates
