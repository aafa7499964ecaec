"""`run_rounds`: the one experiment loop, for ANY `core.FederatedAlgorithm`.

Every experiment script (`experiments.train`, `omniisr`, `byzantine`,
`zo_finetune`) runs its algorithms through this loop; what differs between
them is the algorithm, the cohorts and the evaluators, which are
arguments. The loop owns the host-side plumbing, written once:

* the round: ``algorithm.apply`` jitted once (state and store donated),
  with a finiteness check of the model and of ``train_loss`` compiled in;
  a non-finite round stops the run with its number;
* cohorts: ``cohorts(round_num)`` on a background thread (`prefetch`),
  made global across processes in a multi-process job;
* evaluation every `eval_every` rounds and at the end: each evaluator maps
  ``(model_params, state, client_store)`` to named scalars, and the line
  also holds the mean of every scalar round metric over the rounds since
  the previous evaluation, the elapsed time and the median round time;
* outputs (process 0 only): append-only ``metrics.jsonl``, TensorBoard
  event files, ``metrics.png`` at the end, ``config.json``;
* orbax checkpoints every `checkpoint_every` rounds and at the end, and
  resume: the state, the client store and the metrics lines up to the
  checkpoint's round come back, later lines are dropped, and round keys
  and cohorts depend only on (seed, round), so a resumed run equals an
  uninterrupted one.
"""

import json
import os
import statistics
import time
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import jax
import numpy as np

from fedjax_ext import core
from fedjax_ext.training import _distributed
from fedjax_ext.training import _outputs
from fedjax_ext.training import _plots
from fedjax_ext.training import _prefetch
from fedjax_ext.training._checkpoint import Checkpointer
from fedjax_ext.training._config import ConfigError

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or model."""


class Evaluator(Protocol):

  def __call__(self, params: core.Params, state: Any,
               client_store: core.PyTree) -> Mapping[str, float]:
    """Named scalar metrics of the model (and, if needed, of the state)."""


class RunResult(NamedTuple):
  state: Any  # The algorithm's final state.
  client_store: core.PyTree
  metrics: list[dict[str, Any]]  # The metrics.jsonl lines of the run.


def _progress(done: int, rounds: int, recent: list[float],
              line: Mapping[str, Any]) -> str:
  parts = [f'round {done}/{rounds}']
  if recent:
    seconds = sum(recent) / len(recent)
    parts.append(f'{1 / seconds:.1f} rounds/s' if seconds < 10
                 else f'{seconds:.0f} s/round')
  for key in ('train_loss', 'test_accuracy'):
    if isinstance(line.get(key), float):
      parts.append(f'{key} {line[key]:.4f}')
  parts.append(f'elapsed {line["elapsed_s"]:.1f}s')
  return ' | '.join(parts)


def run_rounds(algorithm: core.FederatedAlgorithm, params: core.Params, *,
               num_clients: int,
               cohorts: Callable[[int], Any],
               rounds: int,
               key: core.PRNGKey,
               workdir: str,
               evaluators: Sequence[Evaluator] = (),
               eval_every: int = 10,
               checkpoint_every: int = 50,
               resume: bool = False,
               config: Mapping[str, Any] | None = None,
               title: str | None = None,
               tensorboard: bool = True,
               log: Callable[[str], None] = print) -> RunResult:
  """Trains `algorithm` for `rounds` rounds (module docstring).

  Args:
    algorithm: any `core.FederatedAlgorithm`.
    params: the initial model parameters.
    num_clients: N, rows of the client store.
    cohorts: ``fn(round_num) -> cohort`` (host-side arrays), the
      ``cohort`` argument of ``algorithm.apply`` for that round; in a
      multi-process job, this process's block of it.
    rounds: total rounds (also when resuming).
    key: the run's key; round r's randomness is derived from it and r.
    workdir: where outputs and checkpoints go (made if missing).
    evaluators: each ``fn(params, state, client_store) -> {name: value}``.
    eval_every: evaluate and write a line every this many rounds.
    checkpoint_every: save a checkpoint every this many rounds.
    resume: continue from the latest checkpoint in `workdir`.
    config: written to ``config.json`` (and compared on resume).
    title: title of the plot.
    tensorboard: also write TensorBoard event files.
    log: progress lines (process 0 only).

  Returns:
    A `RunResult`.

  Raises:
    ConfigError: a workdir with checkpoints without `resume`, `resume`
      without checkpoints, or `rounds` below the checkpoint's round.
    NonFiniteError: a round produced a non-finite loss or model.
  """
  lead = jax.process_index() == 0
  if not lead:
    log = lambda message: None
  os.makedirs(workdir, exist_ok=True)
  ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  metrics_path = os.path.join(workdir, _outputs.METRICS_FILE)
  state = algorithm.init(params)
  store = core.tree_broadcast(algorithm.init_client_state(params),
                              num_clients)

  with Checkpointer(ckpt_dir) as checkpointer:
    start = checkpointer.latest_round()
    if start is not None and not resume:
      raise ConfigError(
          f'--workdir={workdir} already holds checkpoints up to round '
          f'{start}; pass --resume to continue it or choose another '
          '--workdir.')
    if start is None and resume:
      raise ConfigError(f'--resume: no checkpoint in {ckpt_dir}; run '
                        'without --resume to start this workdir.')
    if start is not None and start > rounds:
      raise ConfigError(f'--rounds={rounds} is below the round of the '
                        f'latest checkpoint ({start}) in {ckpt_dir}.')
    state, store = _distributed.to_global((state, store), sharded=False)
    lines = []
    if start is None:
      start = 0
    else:
      state, store = checkpointer.restore(start, state, store)
      lines = [line for line in _outputs.read_metrics(metrics_path)
               if line['round'] <= start]
      log(f'Resumed from the checkpoint of round {start} in {ckpt_dir}.')
    if lead:
      _outputs.rewrite_metrics(metrics_path, lines)
      if config is not None:
        with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
          json.dump(config, f, indent=2, sort_keys=True)

    def train_round(state, store, cohort):
      state, store, metrics = algorithm.apply(state, store, cohort, key)
      metrics = dict(metrics)
      finite = core.tree_all_finite(algorithm.model_params(state, store))
      if 'train_loss' in metrics:
        finite &= core.tree_all_finite(metrics['train_loss'])
      metrics['finite'] = finite
      return state, store, metrics

    train_round = jax.jit(train_round, donate_argnums=(0, 1))

    def packed():
      for r in range(start, rounds):
        yield r, cohorts(r)

    writer = _outputs.MetricsWriter(workdir, tensorboard=tensorboard) \
        if lead else None
    t_start = time.perf_counter()
    round_times, interval = [], []
    last_saved = start or None
    try:
      for r, cohort in _prefetch.prefetch(packed()):
        cohort = _distributed.to_global(cohort, sharded=True)
        t0 = time.perf_counter()
        state, store, metrics = train_round(state, store, cohort)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - t0
        if r == start:
          log(f'Round {r + 1} compiled and ran in {seconds:.2f} s.')
        else:
          round_times.append(seconds)
        if not metrics.pop('finite'):
          saved = (f'the latest checkpoint is of round {last_saved}, in '
                   f'{ckpt_dir}' if last_saved else 'no checkpoint was saved')
          raise NonFiniteError(
              f'Round {r + 1}: non-finite training loss or model '
              f'(train_loss={metrics.get("train_loss")}); stopping; '
              f'{saved}. Try smaller learning rates.')
        interval.append(metrics)
        done = r + 1
        if done % eval_every == 0 or done == rounds:
          line = {'round': done}
          model = _distributed.local_copy(algorithm.model_params(state,
                                                                 store))
          for evaluate in evaluators:
            line.update(evaluate(model, state, store))
          for name in interval[0]:
            values = [m[name] for m in interval]
            if np.ndim(values[0]) == 0:
              line[name] = float(np.mean(values))
          line['elapsed_s'] = time.perf_counter() - t_start
          recent = round_times[-len(interval):]
          if recent:
            line['round_time_s'] = statistics.median(recent)
          lines.append(line)
          if writer is not None:
            writer.write(line)
          log(_progress(done, rounds, recent, line))
          interval = []
        if done % checkpoint_every == 0 or done == rounds:
          checkpointer.save(done, state, store)
          last_saved = done
    finally:
      if writer is not None:
        writer.close()
  if lines and lead:
    _plots.plot_metrics(metrics_path,
                        os.path.join(workdir, _outputs.PLOT_FILE),
                        title=title)
  return RunResult(state, store, [_outputs.json_safe(l) for l in lines])
