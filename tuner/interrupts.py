"""Ctrl-C while MetaSchedule's C++ search runs: noted, and the search winds down by itself.

The CLI turns SIGINT into a KeyboardInterrupt in the main thread. Raised inside a Python
callback that MetaSchedule's C++ calls while it samples, evolves or measures candidates (a
schedule rule, the cost model, the builder), the exception crossed C++ frames that cannot
unwind and the process died in std::terminate (a segfault, about one Ctrl-C in five at the start
of a search). Inside `deferred_interrupts()` the signal is only noted: the search strategy asks
`requested()` before every round and ends its task, so the task scheduler returns normally
after the batch in flight, and the KeyboardInterrupt is raised when the block ends, in Python.
Elsewhere Ctrl-C raises at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()
_deferring = 0


def on_sigint() -> None:
    """What a SIGINT handler does: raise now, or note it while a search runs."""
    if _deferring:
        _requested.set()
        return
    raise KeyboardInterrupt


def requested() -> bool:
    """Whether a Ctrl-C was noted during the search: the search should end."""
    return _requested.is_set()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C in the block is noted (see `requested`) and raised when the block ends."""
    global _deferring
    if not _deferring:
        _requested.clear()  # a new run: a Ctrl-C that ended an earlier one is spent
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _requested.is_set():
        raise KeyboardInterrupt
