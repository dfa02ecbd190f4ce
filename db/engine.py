"""Engines for the tuning database: SQLite (zero set-up, WAL) or PostgreSQL (shared)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from tuner.errors import TunerError


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def error_reason(exc: SQLAlchemyError) -> str:
    """The driver's own first line (e.g. "connection refused"), without SQLAlchemy's wrapping."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI types
    # WAL lets readers run beside one writer; busy_timeout makes a second writer process wait
    # for the lock instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine and prove it is reachable and writable, or explain why not."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise TunerError(f"invalid database URL {url!r}") from None
    shown = redact_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    sqlite = parsed.get_backend_name() == "sqlite"
    try:
        # A server's connections can drop (restart, idle timeout): ping them before use. A SQLite
        # file cannot, and the ping would double the queries of every service request.
        engine = create_engine(parsed, pool_pre_ping=not sqlite)
    except (ArgumentError, ImportError) as exc:
        raise TunerError(f"cannot use database {shown}: {exc}") from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise TunerError(f"cannot reach database {shown}: {error_reason(exc)}") from None
    except SQLAlchemyError as exc:
        raise TunerError(f"cannot use database {shown}: {error_reason(exc)}") from None
    return engine
