"""One job's process: `python -m tuner.jobs.execute JOB_ID --db URL --storage DIR`.

Each job runs in a process of its own, started by the service's worker: a crash in TVM, a
leak, or a cancellation (Ctrl-C, then SIGKILL) ends that process, not the service. Progress goes
to the job's row as it is made; the result is the pipeline's report.json in the job's folder,
a failure one sentence in error.txt.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tuner import interrupts
from tuner.config import get_settings
from tuner.db.engine import make_engine
from tuner.db.jobs import get_job, record_progress
from tuner.errors import TunerError
from tuner.pipeline import RunRequest, run

from .storage import Storage


class JobProgress:
    """Writes the job's progress to its row, at most every `interval_s` (the service reads it)."""

    def __init__(self, engine: Engine, job_id: str, interval_s: float = 0.5) -> None:
        self.engine, self.job_id, self.interval_s = engine, job_id, interval_s
        self.last = 0.0
        self.pending: dict[str, object] = {}

    def _write(self, force: bool = False, **fields: object) -> None:
        self.pending.update(fields)
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        try:
            record_progress(self.engine, self.job_id, **self.pending)
        except SQLAlchemyError as exc:  # progress is best effort; the records are what matter
            print(f"[job] progress not written: {exc}", file=sys.stderr, flush=True)
            return
        self.pending, self.last = {}, now

    def plan(self, tasks: int, from_db: int, from_other_teams: int, to_tune: int, warm: int,
             trials: int) -> None:
        self.message(f"{tasks} task(s): {from_db} from the database, {to_tune} to tune")
        self._write(force=True, tasks=tasks, tasks_from_db=from_db, trials_total=trials)

    def start(self, total_trials: int, tasks: int) -> None:
        self._write(force=True, trials_total=total_trials)

    def advance(self, trials_done: int, best_ms: float | None) -> None:
        self._write(trials_done=trials_done, best_latency_ms=best_ms)

    def message(self, text: str) -> None:
        print(f"[job {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.pending:
            self._write(force=True)


def execute(job_id: str, db_url: str, storage: Storage, ray_address: str | None) -> int:
    """Run the job; returns the process exit code (0: report.json written)."""
    settings = get_settings()
    engine = make_engine(db_url)
    job = get_job(engine, job_id)
    if job is None:
        raise TunerError(f"job {job_id} is not in the database")
    progress = JobProgress(engine, job_id)
    inputs = storage.inputs_path(job_id)
    request = RunRequest(
        model=str(storage.model_path(job_id)),
        target=json.loads(job.target_json),
        trials=job.trials,
        out_dir=storage.out_dir(job_id),
        db_url=db_url,
        input_shapes={k: tuple(v) for k, v in json.loads(job.input_shapes_json).items()},
        seed=settings.seed,
        team=job.team,
        private=False,
        job_id=job_id,
        ray_address=ray_address,
        name=job.name,
        refine=job.refine,
        inputs_path=inputs if inputs.is_file() else None,
    )
    try:
        run(request, settings, progress)
    finally:
        progress.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuner.jobs.execute")
    parser.add_argument("job_id")
    parser.add_argument("--db", required=True)
    parser.add_argument("--storage", required=True, type=Path)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args(argv)
    storage = Storage(args.storage)
    error_file = storage.error_path(args.job_id)
    # Cancelling sends SIGINT: raised at once, or, during a search, after its tasks wind down
    # (tuner.interrupts), so no record is left half-committed.
    signal.signal(signal.SIGINT, lambda _signum, _frame: interrupts.on_sigint())
    try:
        return execute(args.job_id, args.db, storage, args.ray_address)
    except TunerError as exc:
        error_file.write_text(str(exc))
        print(f"[job] error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        error_file.write_text("interrupted: every record measured so far is kept in the database")
        return 130
    except Exception as exc:  # noqa: BLE001 - the job fails with the reason, the service lives on
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        error_file.write_text(f"internal error ({type(exc).__name__}): {first}"[:2000])
        return 1


if __name__ == "__main__":
    sys.exit(main())
