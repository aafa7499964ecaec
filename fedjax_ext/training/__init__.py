"""Experiment plumbing: the one experiment loop, configs, composition by
name, evaluation, outputs, checkpoints and plots."""

from fedjax_ext.training._checkpoint import CheckpointError
from fedjax_ext.training._checkpoint import Checkpointer
from fedjax_ext.training._compose import AGGREGATORS
from fedjax_ext.training._compose import CLIENT_OPTIMIZERS
from fedjax_ext.training._compose import compose_algorithm
from fedjax_ext.training._compose import create_aggregator
from fedjax_ext.training._compose import create_attack
from fedjax_ext.training._compose import zo_optimizer
from fedjax_ext.training._config import ConfigError
from fedjax_ext.training._config import ExperimentConfig
from fedjax_ext.training._evaluation import classification_evaluator
from fedjax_ext.training._evaluation import EvalSet
from fedjax_ext.training._evaluation import make_eval_set
from fedjax_ext.training._evaluation import make_evaluate_fn
from fedjax_ext.training._loop import build_model_and_algorithm
from fedjax_ext.training._loop import Federation
from fedjax_ext.training._loop import load_federation
from fedjax_ext.training._loop import run_experiment
from fedjax_ext.training._loop import validate_config
from fedjax_ext.training._outputs import MetricsWriter
from fedjax_ext.training._outputs import read_metrics
from fedjax_ext.training._plots import mean_curve
from fedjax_ext.training._population import cohort_view
from fedjax_ext.training._population import HostClientStore
from fedjax_ext.training._population import run_round_with_host_store
from fedjax_ext.training._population import sample_population
from fedjax_ext.training._plots import plot_heatmaps
from fedjax_ext.training._plots import plot_metrics
from fedjax_ext.training._plots import plot_runs
from fedjax_ext.training._runner import Evaluator
from fedjax_ext.training._runner import NonFiniteError
from fedjax_ext.training._runner import Preempted
from fedjax_ext.training._runner import run_rounds
from fedjax_ext.training._runner import RunResult
from fedjax_ext.training._runner import training_alarms
