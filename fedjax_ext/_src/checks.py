"""Argument checks whose errors name the argument and its allowed range.

Dependency-free (no JAX, no TFDS), so that every package can use them at
call time, before anything is traced or allocated.
"""

import math
import numbers


def _bounds(low, high, low_open=False, high_open=False) -> str:
  """'>= 1', '> 0', '<= 5' or 'in [1, 5]', '(0, 1]', ..."""
  if high is None:
    return f'{">" if low_open else ">="} {low}'
  if low is None:
    return f'{"<" if high_open else "<="} {high}'
  return (f'in {"(" if low_open else "["}{low}, {high}'
          f'{")" if high_open else "]"}')


def check_int(name: str, value, *, low: int | None = None,
              high: int | None = None) -> int:
  """`value` as an int in [low, high], else a ValueError naming `name`.

  Bools and non-integral numbers (2.5, NaN, and floats such as ``1e9``:
  write ``10**9``) are refused.
  """
  bounds = '' if low is None and high is None else ' ' + _bounds(low, high)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be an integer{bounds}, got {value!r}.')
  if (low is not None and value < low) or (high is not None and value > high):
    raise ValueError(f'{name} must be{bounds}, got {value!r}.')
  return int(value)


def check_number(name: str, value, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> float:
  """`value` as a finite float within the bounds, else a named ValueError.

  NaN and +-inf are refused whatever the bounds.
  """
  bounds = ('' if low is None and high is None else
            ' ' + _bounds(low, high, low_open, high_open))
  ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
  if ok:
    value = float(value)
    ok = math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    raise ValueError(f'{name} must be a finite number{bounds}, got '
                     f'{value!r}.')
  return value
