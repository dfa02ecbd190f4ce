"""API keys of `tuner serve`: created and revoked by `tuner keys`, checked on every request."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from tuner.errors import TunerError

from .models import ApiKey, utcnow

KEY_PREFIX = "tnr_"
TEAM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    team: str
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(prefix=row.prefix, team=row.team, created_at=row.created_at, revoked_at=row.revoked_at)


def create_key(engine: Engine, team: str) -> tuple[str, KeyInfo]:
    """A new key for `team`: the plain key is returned here once and never stored."""
    if not re.match(TEAM_PATTERN, team):
        raise TunerError(f"invalid team name {team!r}: letters, digits, '.', '_' and '-', at most 64")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(team=team, prefix=key[: len(KEY_PREFIX) + 8], key_sha256=key_sha256(key), created_at=utcnow())
    with Session(engine) as session, session.begin():
        session.add(row)
        session.flush()
        info = _info(row)
    return key, info


def list_keys(engine: Engine, team: str | None = None) -> list[KeyInfo]:
    stmt = select(ApiKey).order_by(ApiKey.team, ApiKey.created_at)
    if team:
        stmt = stmt.where(ApiKey.team == team)
    with Session(engine) as session:
        return [_info(row) for row in session.scalars(stmt)]


def revoke_key(engine: Engine, prefix: str) -> KeyInfo:
    """Revoke the key whose prefix (as `tuner keys list` shows it, or the whole key) matches."""
    with Session(engine) as session, session.begin():
        row = session.scalars(
            select(ApiKey).where(or_(ApiKey.prefix == prefix, ApiKey.key_sha256 == key_sha256(prefix)))
        ).first()
        if row is None:
            raise TunerError(f"no API key {prefix!r}: `tuner keys list` shows the prefixes")
        if row.revoked_at is None:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=utcnow()))
            session.refresh(row)
        return _info(row)


def team_for_key(engine: Engine, key: str) -> str | None:
    """The team of a valid (known, not revoked) key; None otherwise."""
    with Session(engine) as session:
        return session.scalars(
            select(ApiKey.team).where(ApiKey.key_sha256 == key_sha256(key), ApiKey.revoked_at.is_(None))
        ).first()
