r"""Decentralized (serverless) federated learning on the round stages.

N nodes of a `topology.Topology` each hold a model in their row of the
client store (leaves [N, ...]); there is no server model. Each round every
node runs its local update (one `core.run_clients` call, any
`core.Execution`), nodes the round's graph marks inactive keep their rows,
and the nodes gossip with this round's mixing matrix :math:`W^{(t)}`
(`topology.mix`, or `topology.mix_dense` for small N). Every method is a
node update plus a mixing rule on `decentralized_algorithm`, returns a
`core.FederatedAlgorithm` that `training.run_rounds` runs unchanged (feed a
cohort of all N nodes, ``client_ids = arange(N)``, every round), and
evaluates the node-average model through ``model_params``.

================== ================================ =========================
algorithm          each node trains                 each node gossips
================== ================================ =========================
d_psgd             one SGD step (mean gradient of   x
                   its round's batches)
dfedavg            K local optimizer steps          x
dfedavgm           K local heavy-ball steps (beta)  x
gradient_tracking  one step along its tracker y     x and y (g stays local)
dec_lora           A and B (+ dense head)           A and B (+ dense)
rolora             B on even rounds, A on odd       the trained factor only
ffa_gossip         B (A frozen, shared)             B
tad_lora           B for T rounds, then A for T,    A and B, every round
                   ... (T fixed or from the graph)
================== ================================ =========================

References:

* D-PSGD: Lian et al., NeurIPS 2017, https://arxiv.org/abs/1705.09056;
  the unified local-update / changing-topology analysis: Koloskova et al.,
  ICML 2020, https://arxiv.org/abs/2003.10422.
* DFedAvg, DFedAvgM: Sun, Li and Wang, "Decentralized Federated Averaging",
  IEEE TPAMI 2022, https://arxiv.org/abs/2104.11375.
* Gradient tracking: Pu and Nedić, Math. Programming 2021,
  https://arxiv.org/abs/1805.11454; Koloskova, Lin and Stich, NeurIPS 2021,
  https://arxiv.org/abs/2202.03836.
* Dec-LoRA: arXiv 2501.15361. RoLoRA: Chen et al., arXiv 2502.01755.
  FFA-LoRA: Sun et al., ICLR 2024, https://arxiv.org/abs/2403.12313.
  TAD-LoRA: Wang et al., arXiv 2602.00451 (spec:
  shared/methods/omniisr_curvzo_florg_tadlora.md section 4).

Round metrics: the nodes' ``train_*`` averaged over active nodes,
``consensus_before_mix`` / ``consensus_after_mix`` (`consensus_distance`),
``gossip_bytes_per_node``, ``active_nodes``, ``mean_degree``, and for LoRA
``cross_term_error`` (`lora_cross_term_error`). Per-node test accuracy
(mean and spread) is an evaluator's: `node_accuracies`,
`node_accuracy_metrics`.
"""

from fedjax_ext.decentralized._algorithms import d_psgd
from fedjax_ext.decentralized._algorithms import dfedavg
from fedjax_ext.decentralized._algorithms import dfedavgm
from fedjax_ext.decentralized._algorithms import gradient_tracking
from fedjax_ext.decentralized._algorithms import round_gradient
from fedjax_ext.decentralized._lora import dec_lora
from fedjax_ext.decentralized._lora import ffa_gossip
from fedjax_ext.decentralized._lora import lora_node_params
from fedjax_ext.decentralized._lora import rolora
from fedjax_ext.decentralized._lora import tad_lora
from fedjax_ext.decentralized._lora import trains_b
from fedjax_ext.decentralized._metrics import consensus_distance
from fedjax_ext.decentralized._metrics import lora_cross_term_error
from fedjax_ext.decentralized._metrics import node_accuracies
from fedjax_ext.decentralized._metrics import node_accuracy_metrics
from fedjax_ext.decentralized._round import decentralized_algorithm
from fedjax_ext.decentralized._round import DecentralizedState
from fedjax_ext.decentralized._round import DENSE_MAX_NODES
from fedjax_ext.decentralized._round import mix_all
from fedjax_ext.decentralized._round import mix_fields
from fedjax_ext.decentralized._round import mix_function
from fedjax_ext.decentralized._round import MixFn
from fedjax_ext.decentralized._round import MIXINGS
from fedjax_ext.decentralized._round import MixRule
from fedjax_ext.decentralized._round import node_average
from fedjax_ext.decentralized._round import select_rows
