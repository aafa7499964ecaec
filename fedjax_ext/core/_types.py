"""Type aliases shared across fedjax_ext, each with what it holds.

Axis letters used in shape comments throughout the library:
  N: all clients of the federation; C: clients in one round's cohort;
  S: local steps of one client in one round; B: examples in one batch.
"""

from typing import Any, Mapping

import jax
import numpy as np

# Any pytree of arrays.
PyTree = Any
# Model parameters: a pytree of arrays without a client axis.
Params = PyTree
# A pytree shaped like `Params`, read as an update or a gradient.
Updates = PyTree
# A `jax.random.key`.
PRNGKey = jax.Array
# One batch of examples: columns such as 'x' [B, ...], 'y' [B] and the
# padding mask 'mask' [B] (1. for a real example, 0. for padding).
Batch = Mapping[str, jax.Array]
# Examples held on the host as equal-length NumPy columns ('x', 'y', ...).
Examples = Mapping[str, np.ndarray]
# Per-client persistent state of ONE client (SCAFFOLD's control variate,
# worker momentum...). Stacked with a leading [N] or [C] axis when stored.
ClientState = PyTree
# Scalar metrics keyed by name.
Metrics = Mapping[str, jax.Array]
