"""The job's tuning database: opened the same way by the driver and by every searcher actor."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tuner.db.database import Provenance, SQLDatabase
from tuner.db.engine import error_reason, make_engine, redact_url
from tuner.db.migrate import upgrade

from .. import __version__
from ..errors import TunerError
from ..hardware import fingerprint_for


def open_database(url: str, target: dict[str, Any], team: str | None = None,
                  job_id: str | None = None, private: bool = False,
                  warm_start: bool = False) -> SQLDatabase:
    """The tuning database for this target's hardware, migrated to the current schema."""
    engine = make_engine(url)
    upgrade(engine)
    fp = fingerprint_for(target)
    provenance = Provenance(
        hardware_key=fp.key, hardware_kind=fp.kind, fingerprint=fp.as_dict(),
        tuner_version=__version__, team=team, job_id=job_id, private=private,
    )
    try:
        # Writes the hardware row: proves we can write before any work is done.
        return SQLDatabase(engine, provenance, warm_start=warm_start)
    except SQLAlchemyError as exc:
        raise TunerError(f"cannot write to database {redact_url(url)}: {error_reason(exc)}") from None
