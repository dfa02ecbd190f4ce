"""Which step of a run failed: an unexpected error becomes one line that names the step.

TVM, ONNX Runtime and numpy raise their own error types, often with multi-screen messages (TVM's
carry a C++ backtrace). A user needs the step that failed and the message's last line; the
traceback is for `--debug` (or `TUNER_DEBUG=1`), which prints the original error's.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from .errors import TunerError

STAGES = ("load", "import", "fusion", "tuning", "compile", "verify", "time")


class StageError(TunerError):
    """An error no check of ours anticipated, in `stage`; the original is the `__cause__`."""

    exit_code = 1

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        super().__init__(f"{stage} failed: {summary(error)}")


def last_line(error: BaseException) -> str:
    """The last non-empty line of the error's message ("" for none): TVM puts the reason last,
    after its backtrace."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def summary(error: BaseException) -> str:
    """The error's type and the last line of its message (`last_line`), at most 300
    characters; for one with no message (a bare `assert` in TVM's operator library) the file and
    line that raised it; for a setting that failed validation, which one and why (pydantic's last
    line is only a link)."""
    if isinstance(error, ValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                           for e in error.errors())
        return f"invalid setting: {fields}"[:300]
    if text := last_line(error):
        return f"{type(error).__name__}: {text}"[:300]
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        return f"{type(error).__name__} in {Path(last.filename).parent.name}/{Path(last.filename).name}:{last.lineno}"
    return type(error).__name__


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Run a step: our own errors (TunerError) and Ctrl-C pass as they are, anything else is a
    StageError naming the step."""
    assert name in STAGES, name
    try:
        yield
    except (TunerError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - turned into one line, the original kept as the cause
        raise StageError(name, exc) from exc


def debug_enabled() -> bool:
    return os.environ.get("TUNER_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
