"""What every experiment script shares: one-line errors, exit status 2."""

import sys
from typing import NoReturn

from absl import flags


def fail(message: str, status: int = 2) -> NoReturn:
  """Prints ``error: message`` as one line on stderr and exits."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl's parser, with parse errors as one line and exit status 2.

  Pass it as ``app.run(main, flags_parser=parse_flags)``.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
