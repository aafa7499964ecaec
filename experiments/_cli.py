"""What every experiment script shares: one-line errors, exit status 2,
JAX's persistent compilation cache and the CPU device count.

Every script passes `parse_flags` to ``app.run``; the two flags defined here,
``--compilation_cache_dir`` and ``--cpu_devices``, are thereby accepted by
every script.
"""

import glob
import math
import os
import sys
from typing import NoReturn

from absl import flags

DEFAULT_COMPILATION_CACHE = os.path.join('~', '.cache', 'fedjax_ext', 'xla')

flags.DEFINE_string(
    'compilation_cache_dir',
    os.environ.get('FEDJAX_EXT_COMPILATION_CACHE', DEFAULT_COMPILATION_CACHE),
    "JAX's persistent compilation cache: a run whose round program was "
    'compiled before (same shapes, model, flags and jaxlib) loads it '
    "instead of compiling again. '' disables it. Default: "
    '$FEDJAX_EXT_COMPILATION_CACHE, else ' + DEFAULT_COMPILATION_CACHE + '.')
flags.DEFINE_integer(
    'cpu_devices', 1,
    'Split the CPU into this many JAX devices (>= 1); with more than one, '
    "--execution=auto shards the cohort over them ('sharded'), one thread "
    'pool per device, so a model too small to use several cores in one '
    'program uses them all. Clients per round must be a multiple of it. '
    'Ignored when JAX runs on an accelerator.')


# Range checks of numeric flags by the text the error shows (`--name must
# be <text>.`); every one refuses NaN and infinities.
CHECKS = {
    '>= 0': lambda v: math.isfinite(v) and v >= 0,
    '>= 1': lambda v: math.isfinite(v) and v >= 1,
    '> 0': lambda v: math.isfinite(v) and v > 0,
    'in [0, 1]': lambda v: 0 <= v <= 1,
    'in [1, 5]': lambda v: 1 <= v <= 5,
    'in [1, 100000]': lambda v: 1 <= v <= 100_000,
}


def define_checked(fv: flags.FlagValues, kind: str, name: str, default,
                   help_: str, want: str | None = None, ok=None) -> None:
  """``flags.DEFINE_<kind>`` plus a validator checked at parse time.

  A value failing ``ok`` (default: ``CHECKS[want]``) exits 2 with the one
  line ``--name must be <want>.`` (through `parse_flags`).
  """
  getattr(flags, 'DEFINE_' + kind)(name, default, help_, flag_values=fv)
  if want:
    flags.register_validator(name, ok or CHECKS[want],
                             f'--{name} must be {want}.', flag_values=fv)


def numbers(kind: str, want: str):
  """``(want text, validator)`` of a list flag: ``kind`` ('int' or
  'float') values, each passing ``CHECKS[want]``; for `define_checked`."""
  parse = int if kind == 'int' else float

  def parses(text) -> bool:
    try:
      parse(text)
    except ValueError:
      return False
    return True

  return (f'{kind}s {want}', lambda v: bool(v) and all(
      parses(x) and CHECKS[want](float(x)) for x in v))


def check_fresh_sweep(s, pattern: str = '*/checkpoints/[0-9]*') -> None:
  """Refuses a --workdir holding a previous sweep's runs unless --resume."""
  from fedjax_ext import training  # Heavy: after flag parsing.
  if not s.resume and glob.glob(os.path.join(s.workdir, pattern)):
    raise training.ConfigError(f'--workdir={s.workdir} holds runs of a '
                               'previous sweep; pass --resume to reuse them.')


def sweep_run(s, algorithm, params, *, name: str, config: dict, title: str,
              may_differ, **run_args) -> list[dict]:
  """One run of a sweep: `training.run_rounds` into ``s.workdir/name``.

  The sweep conventions: ``s.rounds`` rounds, evaluated every
  ``s.eval_every``, one checkpoint at the end, resumed when ``s.resume``
  and the run has checkpoints, ``config`` (plus the sweep's settings)
  recorded with the keys ``may_differ`` free to change on resume, no
  TensorBoard, no per-round log. Returns the run's metrics lines.
  """
  from fedjax_ext import training  # Heavy: after flag parsing.
  workdir = os.path.join(s.workdir, name)
  return training.run_rounds(
      algorithm, params, rounds=s.rounds, workdir=workdir,
      eval_every=s.eval_every, checkpoint_every=s.rounds,
      resume=s.resume and os.path.isdir(os.path.join(workdir, 'checkpoints')),
      config=dict(vars(s), **config), config_may_differ=may_differ,
      tensorboard=False, log=lambda _: None, title=title, **run_args).metrics


def sweep_main(argv, run) -> None:
  """A sweep script's ``main``: ``run()``, its errors as one line.

  Bad settings, data or checkpoints exit 2; a non-finite run 1; a
  preempted run (checkpointed: rerun with --resume) 128 + the signal.
  """
  from fedjax_ext import data, training  # Heavy: after flag parsing.
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    run()
  except (training.ConfigError, training.CheckpointError, data.DataError,
          data.DatasetNotFoundError, FileNotFoundError) as e:
    fail(str(e))
  except training.NonFiniteError as e:
    fail(str(e), status=1)
  except training.Preempted as e:
    fail(str(e), status=e.exit_status)


def fail(message: str, status: int = 2) -> NoReturn:
  """Prints ``error: message`` as one line on stderr and exits."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def enable_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at `path` ('' : off).

  Only programs that took at least a second to compile are written (JAX's
  ``jax_persistent_cache_min_compile_time_secs``), so the cache holds the
  round and evaluation programs, not the many small eager ones. Measured on
  the 2-core CPU (BUILD_NOTES.md): the W1 CNN round compiles in 38 s cold
  and loads in 4-8 s from the cache.
  """
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    fail(f'--compilation_cache_dir={path!r} cannot be created: {e}')
  jax.config.update('jax_compilation_cache_dir', path)


def set_cpu_devices(count: int) -> None:
  """Makes the CPU backend expose `count` devices (before it starts)."""
  if count < 1:
    fail(f'--cpu_devices must be an integer >= 1, got {count}.')
  if count == 1:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', count)


HELP_FLAGS = ('--help', '-h', '-?', '--helpshort')

_JSON_CONFIG_MODULE = """import json
import ml_collections


def get_config():
  with open({path!r}) as f:
    return ml_collections.ConfigDict(json.load(f))
"""


def _json_configs_as_modules(argv):
  """``--config=run/config.json`` -> a config module that loads that JSON.

  ml_collections config files are Python; a run's ``config.json`` (every
  resolved value) is JSON. A two-line module in a temporary file bridges
  them, so ``--config=<workdir>/config.json`` reproduces a run and
  ``--config.<field>=...`` still overrides one field.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  out = []
  for arg in argv:
    if arg.startswith('--config=') and arg.endswith('.json'):
      path = os.path.abspath(os.path.expanduser(arg.split('=', 1)[1]))
      if not os.path.isfile(path):
        fail(f'--config={path}: no such file.')
      module = tempfile.NamedTemporaryFile('w', suffix='_config.py',
                                           delete=False)
      module.write(_JSON_CONFIG_MODULE.format(path=path))
      module.close()
      arg = f'--config={module.name}'
    out.append(arg)
  return out


class _DropTfdsNoise:
  """A logging filter for TFDS's harmless warnings about local builds."""

  _NOISE = ('has no dataset_info.json',)

  def filter(self, record) -> bool:
    return not any(text in record.getMessage() for text in self._NOISE)


def quiet_third_party_output() -> None:
  """The same quiet output in every script: warnings and errors only.

  absl's INFO lines (TFDS, orbax, JAX) are hidden unless ``--verbosity``
  is given, TFDS's progress bars are off, and TFDS's warning that a
  locally built dataset has no dataset_info.json is dropped.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  py_logging.getLogger('absl').addFilter(_DropTfdsNoise())
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  except ImportError:
    pass


def parse_flags(argv):
  """absl's parser, with parse errors as one line and exit status 2.

  Pass it as ``app.run(main, flags_parser=parse_flags)``. ``--help`` prints
  the script's flags, including the two shared ones defined here, and exits
  0 (``--helpfull``: every module's flags). It also applies
  ``--compilation_cache_dir`` and ``--cpu_devices``, before JAX starts a
  backend.
  """
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(flags.FLAGS.main_module_help())
    sys.exit(0)
  if '--helpfull' in argv[1:]:
    print(flags.FLAGS.get_help())
    sys.exit(0)
  argv = _json_configs_as_modules(argv)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (OSError, ValueError, SyntaxError) as e:  # e.g. a --config file.
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  enable_compilation_cache(flags.FLAGS.compilation_cache_dir)
  set_cpu_devices(flags.FLAGS.cpu_devices)
  quiet_third_party_output()
  return remaining
