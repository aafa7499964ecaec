"""Experiment plumbing: configs, the training loop, evaluation, plots."""

from fedjax_ext.training._checkpoint import Checkpointer
from fedjax_ext.training._config import ConfigError
from fedjax_ext.training._config import ExperimentConfig
from fedjax_ext.training._evaluation import EvalSet
from fedjax_ext.training._evaluation import make_eval_set
from fedjax_ext.training._evaluation import make_evaluate_fn
from fedjax_ext.training._loop import Federation
from fedjax_ext.training._loop import load_federation
from fedjax_ext.training._loop import NonFiniteError
from fedjax_ext.training._loop import run_experiment
from fedjax_ext.training._loop import RunResult
from fedjax_ext.training._loop import validate_config
from fedjax_ext.training._plots import plot_metrics
