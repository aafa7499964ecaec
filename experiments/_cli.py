"""What every experiment script shares: one-line errors, exit status 2, and
JAX's persistent compilation cache.

Every script passes `parse_flags` to ``app.run``; it defines no flag of its
own except ``--compilation_cache_dir``, which every script thereby accepts.
"""

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


def parse_flags(argv):
  """absl's parser, with parse errors as one line and exit status 2.

  Pass it as ``app.run(main, flags_parser=parse_flags)``. It also turns on
  the compilation cache of ``--compilation_cache_dir``.
  """
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  enable_compilation_cache(flags.FLAGS.compilation_cache_dir)
  return remaining
