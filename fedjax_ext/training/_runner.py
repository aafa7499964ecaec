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
* orbax checkpoints every `checkpoint_every` rounds and at the end,
  verified by checksums on restore (`Checkpointer`), and resume: the state,
  the client store, the metrics lines up to the checkpoint's round and the
  per-round metrics since the last evaluation come back, later lines are
  dropped explicitly, and round keys and cohorts depend only on (seed,
  round), so a resumed run's metrics equal an uninterrupted one's;
* one owner per workdir: an advisory lock (pid and host in
  ``<workdir>/.lock``) refuses a second run in the same workdir, and a
  workdir whose ``config.json`` differs from this run's refuses it too;
* preemption: SIGTERM or SIGINT (how TPU pods, SLURM and Ctrl-C stop a
  job) finish the current round, save a checkpoint and raise `Preempted`,
  whose ``exit_status`` (128 + signal) the scripts exit with.
"""

import contextlib
import json
import os
import signal
import socket
import statistics
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_ext import core
from fedjax_ext.training import _distributed
from fedjax_ext.training import _outputs
from fedjax_ext.training import _population
from fedjax_ext.training import _plots
from fedjax_ext.training import _prefetch
from fedjax_ext.training._checkpoint import CheckpointError
from fedjax_ext.training._checkpoint import Checkpointer
from fedjax_ext.training._config import ConfigError

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = '.lock'


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or model."""


class Preempted(RuntimeError):
  """SIGTERM / SIGINT stopped the run after saving a checkpoint."""

  def __init__(self, message: str, exit_status: int):
    super().__init__(message)
    self.exit_status = exit_status


@contextlib.contextmanager
def workdir_lock(workdir: epath.Path):
  """Holds ``<workdir>/.lock`` (fcntl advisory lock with pid and host).

  Raises:
    ConfigError: naming the holder when another process holds it.
  """
  if '://' in os.fspath(workdir):  # Object stores have no file locks.
    yield
    return
  import fcntl  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.fspath(workdir), LOCK_FILE)
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise ConfigError(f'--workdir={workdir} is in use by {holder}; wait '
                        'for it to finish or choose another --workdir.') \
          from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _config_differences(saved: Mapping[str, Any], config: Mapping[str, Any],
                        may_differ: Sequence[str]) -> list[str]:
  now = json.loads(json.dumps(config))
  return sorted(k for k in set(now) | set(saved)
                if k not in may_differ and now.get(k) != saved.get(k))


class _StopRequests:
  """Records SIGTERM / SIGINT instead of dying mid-round (main thread)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self) -> '_StopRequests':
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C stops at once.
    self.signum = signum

  def requested(self) -> bool:
    stop = self.signum is not None
    if _distributed.is_multiprocess():  # Every process stops together.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      stop = bool(np.max(multihost_utils.process_allgather(
          np.int32(stop))))
    return stop

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class Evaluator(Protocol):

  def __call__(self, params: core.Params, state: Any,
               client_store: core.PyTree) -> Mapping[str, float]:
    """Named scalar metrics of the model (and, if needed, of the state)."""


class RunResult(NamedTuple):
  state: Any  # The algorithm's final state.
  client_store: core.PyTree
  metrics: list[dict[str, Any]]  # The metrics.jsonl lines of the run.


def training_alarms(num_classes: int | None = None, *, patience: int = 3
                   ) -> Callable[[list[Mapping[str, Any]]], str | None]:
  """A `run_rounds` alarm: the loss keeps growing, or accuracy is chance.

  Returns ``fn(lines) -> warning or None`` over the metrics lines so far:
  a warning when ``train_loss`` grew at each of the last `patience`
  evaluations, or when ``test_accuracy`` has stayed within 2 points of
  chance (1 / num_classes) for `patience` evaluations.
  """

  def check(lines):
    losses = [l.get('train_loss') for l in lines[-patience - 1:]]
    if len(losses) == patience + 1 and all(
        isinstance(a, float) and isinstance(b, float) and b > a
        for a, b in zip(losses, losses[1:])):
      return (f'warning: train_loss grew at each of the last {patience} '
              f'evaluations ({losses[0]:.4g} -> {losses[-1]:.4g}); the '
              'learning rates may be too large.')
    if num_classes:
      recent = [l.get('test_accuracy') for l in lines[-patience:]]
      chance = 1. / num_classes
      if len(recent) == patience and all(
          isinstance(a, float) and a <= chance + 0.02 for a in recent):
        return (f'warning: test_accuracy has stayed at chance ({chance:.2f})'
                f' for {patience} evaluations; check the learning rates.')
    return None

  return check


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
               resume_from: int | None = None,
               config: Mapping[str, Any] | None = None,
               config_may_differ: Sequence[str] = (),
               title: str | None = None,
               tensorboard: bool = True,
               alarms: Sequence[Callable[[list], str | None]] = (),
               description: str | None = None,
               host_store: _population.HostClientStore | None = None,
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
    resume_from: continue from the checkpoint of this round instead (an
      earlier one, e.g. when the latest is corrupted); later checkpoints
      and metrics lines are deleted.
    config: written to ``config.json``; a workdir whose config.json
      differs (outside `config_may_differ`) is refused.
    config_may_differ: config keys that may change between a run and its
      resumption (e.g. ``rounds``).
    title: title of the plot.
    tensorboard: also write TensorBoard event files.
    alarms: each ``fn(lines) -> warning or None`` runs after every
      evaluation; each distinct warning is logged once (`training_alarms`).
    description: what the round is (model, strategy, cohort), announced
      before its first compilation, which can take minutes.
    host_store: keep the client store on the host (`HostClientStore`, for
      populations of up to millions of clients) instead of an [N, ...]
      device store: each round gathers the cohort's rows, runs the round
      on them (`Cohort.store_rows`) and scatters them back; checkpointed
      with the run (its visited rows). Evaluators get it as their
      ``client_store``. One process only.
    log: progress lines (process 0 only).

  Returns:
    A `RunResult`.

  Raises:
    ConfigError: a workdir held by another run or holding a different
      config, checkpoints without `resume`, `resume` without checkpoints,
      or `rounds` below the checkpoint's round.
    CheckpointError: the checkpoint to resume from is unreadable or fails
      its checksums.
    NonFiniteError: a round produced a non-finite loss or model.
    Preempted: SIGTERM or SIGINT; a checkpoint of the last round is saved.
  """
  lead = jax.process_index() == 0
  if not lead:
    log = lambda message: None
  workdir = epath.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f'--workdir={workdir} is a file, not a directory.')
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir_lock(workdir) if lead else contextlib.nullcontext()
  with lock:
    return _run_locked(
        algorithm, params, num_clients=num_clients, cohorts=cohorts,
        rounds=rounds, key=key, workdir=workdir, evaluators=evaluators,
        eval_every=eval_every, checkpoint_every=checkpoint_every,
        resume=resume or resume_from is not None, resume_from=resume_from,
        config=config, config_may_differ=config_may_differ, title=title,
        tensorboard=tensorboard, alarms=alarms, description=description,
        host_store=host_store, log=log, lead=lead)


def _run_locked(algorithm, params, *, num_clients, cohorts, rounds, key,
                workdir, evaluators, eval_every, checkpoint_every, resume,
                resume_from, config, config_may_differ, title, tensorboard,
                alarms, description, host_store, log, lead) -> RunResult:
  """`run_rounds` once the workdir is this run's."""
  ckpt_dir = workdir / CHECKPOINT_DIR
  metrics_path = workdir / _outputs.METRICS_FILE
  config_path = workdir / CONFIG_FILE
  if config is not None and config_path.exists():
    try:
      saved = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise ConfigError(f'{config_path} is not valid JSON; choose another '
                        '--workdir or remove it.') from None
    changed = _config_differences(saved, config, config_may_differ)
    if changed:
      raise ConfigError(
          f'--workdir={workdir} holds a run with other settings ('
          f'{", ".join("--" + k for k in changed)} differ); use the same '
          'values or another --workdir.')
  # A copy: the round donates its state, which must not delete the
  # caller's arrays.
  params = jax.tree.map(jnp.array, params)
  state = algorithm.init(params)
  if host_store is None:
    store = core.tree_broadcast(algorithm.init_client_state(params),
                                num_clients)
  else:
    if not isinstance(host_store, _population.HostClientStore):
      raise TypeError('host_store must be a training.HostClientStore, got '
                      f'{type(host_store).__name__}.')
    if jax.process_count() > 1:
      raise ConfigError('host_store runs in a single process; '
                        f'this job has {jax.process_count()}.')
    if host_store.num_clients != num_clients:
      raise ConfigError(f'host_store holds {host_store.num_clients} clients '
                        f'but num_clients={num_clients}.')
    store = ()  # The rows of each round's cohort travel instead.

  with Checkpointer(os.fspath(ckpt_dir)) as checkpointer:
    start = checkpointer.latest_round()
    if start is not None and not resume:
      raise ConfigError(
          f'--workdir={workdir} already holds checkpoints up to round '
          f'{start}; pass --resume to continue it or choose another '
          '--workdir.')
    if start is None and resume:
      raise ConfigError(f'--resume: no checkpoint in {ckpt_dir}; run '
                        'without --resume to start this workdir.')
    if resume_from is not None:
      if resume_from not in checkpointer.all_rounds():
        raise ConfigError(
            f'--resume_from={resume_from}: no such checkpoint in {ckpt_dir}'
            f'; saved rounds: {checkpointer.all_rounds()}.')
      start = resume_from
    if start is not None and start > rounds:
      raise ConfigError(f'--rounds={rounds} is below the round of the '
                        f'checkpoint to resume ({start}) in {ckpt_dir}.')
    state, store = _distributed.to_global((state, store), sharded=False)
    lines, interval = [], []
    if start is None:
      start = 0
    else:
      try:
        store_like = store if host_store is None else _host_store_like(
            host_store, checkpointer.loop_state(start))
        state, store, loop_state = checkpointer.restore(start, state,
                                                        store_like)
        if host_store is not None:
          host_store.load_state_dict(store)
          store = ()
      except CheckpointError as e:
        earlier = [r for r in checkpointer.all_rounds() if r < start]
        hint = (f'; resume from an earlier one with --resume_from='
                f'{earlier[-1]}' if earlier else '')
        raise CheckpointError(f'{e}{hint}') from None
      if resume_from is not None:
        for later in [r for r in checkpointer.all_rounds() if r > start]:
          checkpointer.delete(later)
      interval = loop_state.get('interval', [])
      try:
        history = _outputs.read_metrics(metrics_path)
      except ValueError as e:
        raise ConfigError(f'{e} Repair or remove it to resume.') from None
      lines = [line for line in history if line['round'] <= start]
      dropped = len(history) - len(lines)
      log(f'Resumed from the checkpoint of round {start} in {ckpt_dir}'
          + (f'; dropped {dropped} metrics lines after it.' if dropped
             else '.'))
    if lead:
      _outputs.rewrite_metrics(metrics_path, lines)
      if config is not None:
        _outputs.write_atomically(
            config_path, json.dumps(config, indent=2, sort_keys=True))

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

    def save(done):
      if host_store is None:
        checkpointer.save(done, state, store, {'interval': interval})
      else:
        checkpointer.save(done, state, _host_checkpoint(host_store), {
            'interval': interval, 'host_visited': host_store.num_visited})

    def run_round(state, store, cohort):
      if host_store is None:
        return train_round(state, store, cohort)
      state, metrics = _population.run_round_with_host_store(
          lambda st, rows, c, _: train_round(st, rows, c), state, host_store,
          cohort, None)
      return state, store, metrics

    writer = (_outputs.MetricsWriter(workdir, tensorboard=tensorboard,
                                     lines=lines) if lead else None)
    t_start = time.perf_counter()
    round_times = []
    last_saved = start or None
    warned = set()
    if start < rounds:
      log(f'Compiling the round{f" ({description})" if description else ""}'
          '; the first round includes the compilation.')
    try:
      with _StopRequests() as stop:
        for r, cohort in _prefetch.prefetch(packed()):
          cohort = _distributed.to_global(cohort, sharded=True)
          t0 = time.perf_counter()
          state, store, metrics = run_round(state, store, cohort)
          metrics = jax.device_get(metrics)
          seconds = time.perf_counter() - t0
          if r == start:
            log(f'Round {r + 1} compiled and ran in {seconds:.2f} s.')
          else:
            round_times.append(seconds)
          if not metrics.pop('finite'):
            saved = (f'the latest checkpoint is of round {last_saved}, in '
                     f'{ckpt_dir}' if last_saved
                     else 'no checkpoint was saved')
            raise NonFiniteError(
                f'Round {r + 1}: non-finite training loss or model '
                f'(train_loss={metrics.get("train_loss")}); stopping; '
                f'{saved}. Try smaller learning rates.')
          interval.append({name: float(value)
                           for name, value in metrics.items()
                           if np.ndim(value) == 0})
          done = r + 1
          if done % eval_every == 0 or done == rounds:
            line = {'round': done}
            model = _distributed.local_copy(
                algorithm.model_params(state, store))
            for evaluate in evaluators:
              line.update(evaluate(model, state, store if host_store is None
                                   else host_store))
            for name in interval[0]:
              line[name] = float(np.mean([m[name] for m in interval]))
            line['elapsed_s'] = time.perf_counter() - t_start
            recent = round_times[-len(interval):]
            if recent:
              line['round_time_s'] = statistics.median(recent)
            lines.append(line)
            if writer is not None:
              writer.write(line)
            log(_progress(done, rounds, recent, line))
            for alarm in alarms:
              warning = alarm(lines)
              if warning and warning not in warned:
                warned.add(warning)
                log(warning)
            interval = []
          if done % checkpoint_every == 0 or done == rounds:
            save(done)
            last_saved = done
          if stop.requested():
            if last_saved != done:
              save(done)
            name = signal.Signals(stop.signum or signal.SIGTERM).name
            raise Preempted(
                f'{name}: stopped after round {done}/{rounds}; its '
                f'checkpoint is in {ckpt_dir}; rerun with --resume to '
                'continue.', 128 + (stop.signum or signal.SIGTERM))
    finally:
      if writer is not None:
        writer.close()
  plot_path = workdir / _outputs.PLOT_FILE
  if lines and lead:
    _plots.plot_metrics(os.fspath(metrics_path), os.fspath(plot_path),
                        title=title)
    log(_summary(lines, time.perf_counter() - t_start, metrics_path,
                 plot_path, ckpt_dir))
  return RunResult(state, store if host_store is None else host_store,
                   [_outputs.json_safe(l) for l in lines])


def _host_checkpoint(host_store) -> dict:
  """`HostClientStore.state_dict` with int32 ids (what JAX restores)."""
  saved = host_store.state_dict()
  return dict(saved, num_clients=np.int32(saved['num_clients']),
              ids=saved['ids'].astype(np.int32))


def _host_store_like(host_store, loop_state: dict) -> dict:
  """The shapes of a saved `HostClientStore.state_dict` (its V rows)."""
  visited = int(loop_state.get('host_visited', 0))
  rows = jax.tree.map(lambda v: np.zeros((visited,) + np.shape(v),
                                         np.asarray(v).dtype),
                      host_store.init_row)
  return {'num_clients': np.int32(0), 'ids': np.zeros(visited, np.int32),
          'rows': rows}


def _summary(lines, seconds, metrics_path, plot_path, ckpt_dir) -> str:
  """The closing lines: final accuracy, its tail, rounds, time, paths."""
  last = lines[-1]
  parts = [f'Done: {last["round"]} rounds in {seconds:.1f} s']
  for key, label in (('test_accuracy', 'test accuracy'),
                     ('client_accuracy_p10', 'per-client accuracy p10'),
                     ('train_loss', 'train loss')):
    if isinstance(last.get(key), float):
      parts.append(f'{label} {last[key]:.4f}')
  return ('; '.join(parts) + f'.\n  metrics: {metrics_path}\n  plot: '
          f'{plot_path}\n  checkpoints: {ckpt_dir}')
