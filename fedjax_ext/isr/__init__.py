"""OmniISR: intermediate supervision and regularization as a change of
loss, and the PureCL / PureFL / Hybrid CL-FL modes (arXiv 2605.20276)."""

from fedjax_ext.isr._loss import aux_logits
from fedjax_ext.isr._loss import backbone
from fedjax_ext.isr._loss import capture_features
from fedjax_ext.isr._loss import init_isr
from fedjax_ext.isr._loss import isr_loss
from fedjax_ext.isr._loss import isr_points
from fedjax_ext.isr._loss import isr_terms
from fedjax_ext.isr._loss import IsrPoint
from fedjax_ext.isr._loss import NE_OVER
from fedjax_ext.isr._loss import negative_entropy
from fedjax_ext.isr._loss import pool
from fedjax_ext.isr._loss import predict_fn
from fedjax_ext.isr._modes import centralized
from fedjax_ext.isr._modes import CLOUD_SEED_OFFSET
from fedjax_ext.isr._modes import hybrid
from fedjax_ext.isr._modes import hybrid_cohort
from fedjax_ext.isr._modes import HybridCohort
from fedjax_ext.isr._modes import pooled_cohort
