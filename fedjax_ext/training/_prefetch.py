"""Host-side prefetching: produce the next items while the device works."""

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar('T')
_DONE = object()


def prefetch(items: Iterable[T], size: int = 2) -> Iterator[T]:
  """Iterates `items` on a background thread, up to `size` ahead.

  The round's cohort is packed with NumPy on the host; with dispatch being
  asynchronous, packing round r+1 here overlaps the device's round r.
  Exceptions raised by the producer are re-raised in the consumer.
  """
  buffer: queue.Queue = queue.Queue(maxsize=size)

  def produce():
    try:
      for item in items:
        buffer.put(item)
      buffer.put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      buffer.put(e)

  threading.Thread(target=produce, daemon=True).start()
  while True:
    item = buffer.get()
    if item is _DONE:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
