"""TVM's tensor intrinsics (``tvm.s_tir.tensor_intrin``), imported in seconds instead of a minute.

MetaSchedule imports them when it creates its first TuneContext, and every searcher process
pays that once. Their definitions are TVMScript: the parser calls ``inspect.stack()`` for each
of about 250 intrinsic functions, and ``inspect.stack`` finds every frame's source line through
``inspect.getmodule``, which walks all of ``sys.modules`` on each call. That is 20-30 s in a bare
Python here and over a minute in a process that has loaded Ray, SQLAlchemy and FastAPI, almost
all of it in ``getmodule``. The parser only reads each frame, its name and its current line,
which ``linecache`` gives directly; with that ``inspect.stack`` the import takes about 3 s and
registers the same intrinsics (tests/test_intrinsics.py compares them with a plain import).
"""

from __future__ import annotations

import inspect
import linecache
import sys
import threading
from typing import Any

_MODULE = "tvm.s_tir.tensor_intrin"
_lock = threading.Lock()
_loaded = False  # set once the import has finished (not when it starts)


def frame_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack(context)`` of the caller for ``context`` <= 1, without ``getmodule``:
    each frame with its file, line, function and (context 1) the current source line."""
    frame: Any = sys._getframe(1)
    stack = []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals) if context > 0 else ""
        stack.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                       [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return stack


def load_tensor_intrinsics() -> None:
    """Import (register) TVM's tensor intrinsics once per process; a no-op after that.

    Returns only once the import has finished: Python puts a module in `sys.modules` when its
    import starts, so a thread that tested that while the preloading thread was still importing
    went on without the wmma intrinsics ("TensorIntrin 'wmma_fill_16x16x16_f32' is not
    registered", fp16 on an H200). `_loaded` is set after the import, under the lock."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        plain = inspect.stack
        inspect.stack = frame_stack
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401
        finally:
            inspect.stack = plain
        _loaded = True
