"""`tuner run`'s plain progress lines (stderr not a terminal): throttled, the budget's line once."""

from __future__ import annotations

import io

from tuner.progress import LogProgress


def test_log_progress_prints_the_budget_line_once_then_throttles() -> None:
    out = io.StringIO()
    progress = LogProgress(interval_s=60.0, stream=out)
    progress.start(64, 2)
    for done in (4, 20, 64, 64, 64, 66):
        progress.advance(done, 3.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[tuner] tuning 2 task(s), 64 trials"
    assert [line.split(",")[0] for line in lines[1:]] == ["[tuner] trials 4/64", "[tuner] trials 64/64"]
