"""Split learning in the compiled round: SL, SFL, PSL, EPSL, local-loss SL,
GAPSL, U-shaped PSL and unstable participation, with a cost model.

* `split_model` cuts a flax classifier (`models.MLP`, `models.EmnistCNN`)
  into client and server parts (U-shaped: client head, server body, client
  tail); `SplitModel.split_params` / `merge_params` map a centralized
  checkpoint to the parts and back.
* `split_algorithm` is the one step builder (client forward mapped over the
  cohort, one batched server step on the stacked activations, client
  backward mapped; a `lax.scan` over local steps in the compiled round);
  the variants (`vanilla_sl`, `sfl_v1`, `sfl_v2`, `psl`, `epsl`,
  `local_loss_sl`, `gapsl`, `ushaped_psl`, `unstable_sfl`) are short
  functions on it, each a `core.FederatedAlgorithm` that
  `training.run_rounds` runs unchanged.
* `split_lora` (SplitLoRA, arXiv 2407.00952, spec 5b): MiniLM cut with LoRA
  adapters on both sides; SFL-V2 server, the client LoRA FedAvg'd every
  round (N = local steps per round).
* `step_costs` / `simulated_latency`: FLOPs from the compiled programs'
  cost analysis, bytes from shapes, latency under per-client profiles; the
  rounds report their bytes as metrics.
"""

from fedjax_ext.split._cost import Profile
from fedjax_ext.split._cost import round_bytes
from fedjax_ext.split._cost import simulated_latency
from fedjax_ext.split._cost import step_bytes
from fedjax_ext.split._cost import step_costs
from fedjax_ext.split._cost import StepCosts
from fedjax_ext.split._lora import split_lora
from fedjax_ext.split._lora import split_lora_model
from fedjax_ext.split._lora import split_minilm_params
from fedjax_ext.split._lora import top_params
from fedjax_ext.split._methods import epsl
from fedjax_ext.split._methods import gapsl
from fedjax_ext.split._methods import GAPSL_ALIGNMENTS
from fedjax_ext.split._methods import GAPSL_LEADERS
from fedjax_ext.split._methods import gapsl_server
from fedjax_ext.split._methods import local_loss_sl
from fedjax_ext.split._methods import psl
from fedjax_ext.split._methods import sfl_v1
from fedjax_ext.split._methods import sfl_v2
from fedjax_ext.split._methods import unstable_sfl
from fedjax_ext.split._methods import ushaped_psl
from fedjax_ext.split._methods import vanilla_sl
from fedjax_ext.split._models import aux_head
from fedjax_ext.split._models import AuxHead
from fedjax_ext.split._models import Layer
from fedjax_ext.split._models import model_layers
from fedjax_ext.split._models import split_model
from fedjax_ext.split._models import SplitModel
from fedjax_ext.split._round import CLIENT_SIDES
from fedjax_ext.split._round import COMPENSATIONS
from fedjax_ext.split._round import copies_server
from fedjax_ext.split._round import Failures
from fedjax_ext.split._round import joint_server
from fedjax_ext.split._round import label_loss
from fedjax_ext.split._round import SCHEDULES
from fedjax_ext.split._round import sequential_server
from fedjax_ext.split._round import ServerCarry
from fedjax_ext.split._round import ServerRule
from fedjax_ext.split._round import split_algorithm
from fedjax_ext.split._round import SplitState
from fedjax_ext.split._round import step_weights
from fedjax_ext.split._round import StepContext
