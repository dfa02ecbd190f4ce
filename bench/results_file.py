"""Writing a benchmark's results as JSON, where the benchmarks keep them (`bench/results/`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(results: dict, out: Path) -> None:
    """`results` as indented JSON at `out`, its folder made if missing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
