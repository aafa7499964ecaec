"""Server optimizers: optax transforms on the aggregated pseudo-gradient."""

from fedjax_ext.server._optimizers import ADAPTIVE_VARIANTS
from fedjax_ext.server._optimizers import scale_by_fedopt
from fedjax_ext.server._optimizers import ScaleByFedOptState
from fedjax_ext.server._optimizers import server_optimizer
from fedjax_ext.server._optimizers import SERVER_OPTIMIZERS
