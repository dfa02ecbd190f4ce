"""Import and export in MetaSchedule's JSON database format, plus our provenance sidecar.

MetaSchedule's ``JSONDatabase`` is two line-oriented files: ``database_workload.json`` (one
``[shash, base64 IRModule]`` per line) and ``database_tuning_record.json`` (one
``[workload_index, [trace, run_secs, target, args_info]]`` per line). Those files carry no
hardware identity, so our export adds ``tuner_provenance.json``: the hardware key, team and job
of every record line. Importing our own export needs nothing else; plain logs from elsewhere
need ``--hardware KEY``, and records whose target contradicts that hardware are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm_ffi
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError
from tvm.s_tir.meta_schedule.database import Workload
from tvm.target import Target

from tuner.errors import TunerError

from . import models
from .database import (
    insert_for,
    record_from_json,
    record_payload,
    record_row,
    signed_shash,
    unsigned_shash,
    workload_row,
    workloads_with_hash,
)
from .engine import error_reason

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
SIDECAR_FILE = "tuner_provenance.json"
SIDECAR_FORMAT = "tuner-export"
SIDECAR_VERSION = 1
# Target kinds a hardware kind can measure.
_KIND_TARGETS = {"cpu": {"llvm"}, "gpu": {"cuda"}}


@dataclass
class ExportResult:
    directory: Path
    workloads: int
    records: int
    hardware: list[str]


@dataclass
class ImportResult:
    workloads_new: int = 0
    workloads_known: int = 0
    records_new: int = 0
    records_duplicate: int = 0
    hardware: list[str] = field(default_factory=list)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def known_hardware(conn: Connection) -> dict[str, models.Hardware]:
    rows = conn.execute(select(models.Hardware)).all()
    return {row.key: row for row in rows}


def _unknown_key(key: str, known: dict[str, Any]) -> TunerError:
    names = ", ".join(sorted(known)) or "none yet"
    return TunerError(f"unknown hardware key {key!r}; this database knows: {names}")


# -- export ------------------------------------------------------------------------------------
def export_database(engine: Engine, out_dir: Path, hardware: str | None = None) -> ExportResult:
    """Write every record (of one hardware key when given) as a MetaSchedule JSON database."""
    out_dir = Path(out_dir)
    clashing = [n for n in (WORKLOAD_FILE, RECORD_FILE, SIDECAR_FILE) if (out_dir / n).exists()]
    if clashing:
        raise TunerError(f"{out_dir} already holds {', '.join(clashing)}: export into an empty folder")
    r, w = models.TuningRecord, models.Workload
    with engine.connect() as conn:
        known = known_hardware(conn)
        if hardware is not None and hardware not in known:
            raise _unknown_key(hardware, known)
        stmt = select(r, w.shash, w.mod_json).join(w, w.id == r.workload_id).order_by(r.id)
        if hardware is not None:
            stmt = stmt.where(r.hardware_key == hardware)
        rows = conn.execute(stmt).all()
    index: dict[int, int] = {}
    workload_lines: list[str] = []
    record_lines: list[str] = []
    provenance: list[dict[str, Any]] = []
    for row in rows:
        if row.workload_id not in index:
            index[row.workload_id] = len(workload_lines)
            workload_lines.append(json.dumps([str(unsigned_shash(row.shash)), row.mod_json]))
        record_lines.append(json.dumps([index[row.workload_id], record_payload(row)]))
        provenance.append({
            "hardware_key": row.hardware_key, "team": row.team, "private": bool(row.private),
            "job_id": row.job_id, "tuner_version": row.tuner_version,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        })
    used = sorted({p["hardware_key"] for p in provenance} | ({hardware} if hardware else set()))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_lines(out_dir / WORKLOAD_FILE, workload_lines)
        _write_lines(out_dir / RECORD_FILE, record_lines)
        sidecar = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "files": {n: _sha256_file(out_dir / n) for n in (WORKLOAD_FILE, RECORD_FILE)},
            "hardware": {
                key: {"kind": known[key].kind, "family": known[key].family,
                      "fingerprint": json.loads(known[key].fingerprint_json)}
                for key in used
            },
            "records": provenance,
        }
        _write_lines(out_dir / SIDECAR_FILE, [json.dumps(sidecar, indent=1)])
    except OSError as exc:
        raise TunerError(f"cannot write the export to {out_dir}: {exc.strerror}") from None
    return ExportResult(out_dir, len(workload_lines), len(record_lines), used)


# -- import: parse and check everything first, then one transaction ----------------------------
@dataclass
class _Record:
    line: int
    workload: int
    payload: list[Any]
    hardware_key: str
    team: str | None
    private: bool
    job_id: str | None
    tuner_version: str


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TunerError(f"{path}: not a text file") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunerError(f"{path.name} line {number}: not JSON ({exc.msg})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _parse_workloads(path: Path) -> list[Workload]:
    workloads = []
    for number, obj in _lines(path):
        try:
            if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)):
                raise ValueError("expected [shash, serialized module]")
            workloads.append(Workload.from_json(obj))
        except Exception as exc:  # TVM raises several error types for a bad module
            raise TunerError(f"{path.name} line {number}: workload does not deserialize ({_first_line(exc)})") from None
    return workloads


def _read_sidecar(directory: Path) -> dict[str, Any] | None:
    path = directory / SIDECAR_FILE
    if not path.exists():
        return None
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TunerError(f"{SIDECAR_FILE}: not JSON ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise TunerError(f"{SIDECAR_FILE}: not a tuner export sidecar")
    if sidecar.get("version") != SIDECAR_VERSION:
        raise TunerError(f"{SIDECAR_FILE}: version {sidecar.get('version')!r} is not supported (expected {SIDECAR_VERSION})")
    files, hardware, records = sidecar.get("files"), sidecar.get("hardware"), sidecar.get("records")
    if not (isinstance(files, dict) and isinstance(hardware, dict) and isinstance(records, list)
            and all(isinstance(r, dict) and isinstance(r.get("hardware_key"), str) for r in records)):
        raise TunerError(f"{SIDECAR_FILE}: malformed (files, hardware and records are required)")
    for name in (WORKLOAD_FILE, RECORD_FILE):  # only these: a sidecar never names paths to read
        if _sha256_file(directory / name) != files.get(name):
            raise TunerError(
                f"{name} changed after it was exported ({SIDECAR_FILE} does not match it); "
                f"remove {SIDECAR_FILE} and pass --hardware to import the files as plain MetaSchedule logs"
            )
    return sidecar


def _check_target(number: int, target: Target, key: str, hw_kind: str, fp: dict[str, Any]) -> None:
    """Refuse records whose target contradicts the hardware they would be served on."""
    kind = target.kind.name
    where = f"{RECORD_FILE} line {number}"
    if kind not in _KIND_TARGETS.get(hw_kind, set()):
        raise TunerError(f"{where}: a {kind} record cannot belong to {hw_kind} hardware {key}")
    attrs = dict(target.attrs)
    mcpu = str(attrs.get("mcpu") or "generic")
    if hw_kind == "cpu" and mcpu != fp.get("mcpu", mcpu):
        raise TunerError(f"{where}: measured with mcpu={mcpu}, but hardware {key} is mcpu={fp.get('mcpu')}")
    cores = attrs.get("num-cores")
    if hw_kind == "cpu" and cores is not None and int(cores) != int(fp.get("num_cores", cores)):
        raise TunerError(f"{where}: measured with num-cores={int(cores)}, but hardware {key} has {fp.get('num_cores')}")


def _parse_records(
    path: Path, workloads: list[Workload], sidecar: dict[str, Any] | None,
    hardware: str | None, team: str | None, default_team: str | None,
    hw_info: dict[str, tuple[str, dict[str, Any]]],
) -> list[_Record]:
    provenance = sidecar["records"] if sidecar else None
    records: list[_Record] = []
    lines = 0
    for position, (number, obj) in enumerate(_lines(path)):
        lines += 1
        where = f"{path.name} line {number}"
        if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int)
                and isinstance(obj[1], list) and len(obj[1]) == 4):
            raise TunerError(f"{where}: expected [workload_index, [trace, run_secs, target, args_info]]")
        widx, payload = obj
        if not 0 <= widx < len(workloads):
            raise TunerError(f"{where}: workload index {widx} is not in {WORKLOAD_FILE} ({len(workloads)} workloads)")
        if provenance is not None:
            if position >= len(provenance):
                raise TunerError(f"{SIDECAR_FILE} has no entry for {where}")
            origin = provenance[position]
        else:
            origin = {"hardware_key": hardware, "team": default_team, "private": False, "job_id": None,
                      "tuner_version": "imported"}
        key = origin["hardware_key"]
        if hardware is not None and key != hardware:
            continue  # --hardware selects among the records of our own export
        if key not in hw_info:
            raise TunerError(f"{SIDECAR_FILE}: hardware {key} of {where} is described nowhere")
        try:
            target = Target(payload[2])
        except Exception as exc:  # TVM raises several error types for a bad target
            raise TunerError(f"{where}: target does not parse ({_first_line(exc)})") from None
        _check_target(number, target, key, *hw_info[key])
        try:
            record_from_json(payload, workloads[widx])  # the trace must replay into records
        except Exception as exc:  # noqa: BLE001
            raise TunerError(f"{where}: not a MetaSchedule tuning record ({_first_line(exc)})") from None
        records.append(_Record(
            line=number, workload=widx, payload=payload, hardware_key=key,
            team=team or origin.get("team"), private=bool(origin.get("private")),
            job_id=origin.get("job_id"), tuner_version=str(origin.get("tuner_version") or "imported"),
        ))
    if provenance is not None and len(provenance) != lines:
        raise TunerError(f"{SIDECAR_FILE} lists {len(provenance)} records but {path.name} has {lines}")
    return records


def _workload_id(conn: Connection, workload: Workload) -> tuple[int, bool]:
    """Id of the structurally equal workload, inserted when new; (id, was it new)."""
    mod = workload.mod
    shash = signed_shash(mod)
    for wid, known in workloads_with_hash(conn, shash):
        if tvm_ffi.structural_equal(known.mod, mod):
            return wid, False
    row = workload_row(mod)
    conn.execute(insert_for(conn.engine)(models.Workload).values(**row)
                 .on_conflict_do_nothing(index_elements=["shash", "mod_sha256"]))
    wid = conn.scalar(select(models.Workload.id).where(
        models.Workload.shash == shash, models.Workload.mod_sha256 == row["mod_sha256"]))
    return int(wid), True


def import_database(engine: Engine, directory: Path, hardware: str | None = None,
                    team: str | None = None, default_team: str | None = None) -> ImportResult:
    """All or nothing: every line is checked before one transaction commits them all.

    ``team`` overrides the teams of every record; ``default_team`` names the team of plain
    MetaSchedule logs, whose lines carry none.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TunerError(f"{directory} is not a folder (expected {WORKLOAD_FILE} and {RECORD_FILE} in it)")
    for name in (WORKLOAD_FILE, RECORD_FILE):
        if not (directory / name).is_file():
            raise TunerError(f"{directory} has no {name}: not a MetaSchedule JSON database")
    sidecar = _read_sidecar(directory)
    with engine.connect() as conn:
        known = known_hardware(conn)
    hw_info: dict[str, tuple[str, dict[str, Any]]] = {
        k: (h.kind, json.loads(h.fingerprint_json)) for k, h in known.items()
    }
    new_hardware: dict[str, dict[str, Any]] = {}
    if sidecar is not None:
        for key, info in (sidecar.get("hardware") or {}).items():
            if key not in hw_info:
                new_hardware[key] = info
                hw_info[key] = (info["kind"], info["fingerprint"])
        if hardware is not None and hardware not in hw_info:
            raise _unknown_key(hardware, hw_info)
    elif hardware is None:
        raise TunerError(
            f"{directory} holds plain MetaSchedule logs (no {SIDECAR_FILE}): say which hardware they "
            "were measured on with --hardware KEY (`tuner db stats` lists the keys)"
        )
    elif hardware not in hw_info:
        raise _unknown_key(hardware, hw_info)

    workloads = _parse_workloads(directory / WORKLOAD_FILE)
    records = _parse_records(directory / RECORD_FILE, workloads, sidecar, hardware, team, default_team, hw_info)
    if hardware is not None and sidecar is not None and not records:
        raise TunerError(f"{directory} has no records of hardware {hardware}")

    result = ImportResult(hardware=sorted({r.hardware_key for r in records}))
    insert = insert_for(engine)
    try:
        with engine.begin() as conn:
            for key, info in new_hardware.items():
                conn.execute(insert(models.Hardware).values(
                    key=key, kind=info["kind"], family=info["family"],
                    fingerprint_json=json.dumps(info["fingerprint"], sort_keys=True),
                    created_at=models.utcnow(),
                ).on_conflict_do_nothing(index_elements=["key"]))
            ids: dict[int, int] = {}
            for index in sorted({r.workload for r in records}):
                ids[index], new = _workload_id(conn, workloads[index])
                result.workloads_new += new
                result.workloads_known += not new
            for rec in records:
                row = record_row(rec.payload, ids[rec.workload], rec.hardware_key, rec.team,
                                 rec.private, rec.job_id, rec.tuner_version)
                stmt = insert(models.TuningRecord).values(**row).on_conflict_do_nothing(
                    index_elements=["workload_id", "hardware_key", "record_sha256"]
                ).returning(models.TuningRecord.id)
                done = conn.execute(stmt)
                inserted = done.first() is not None  # rowcount is unreliable after ON CONFLICT
                result.records_new += inserted
                result.records_duplicate += not inserted
    except SQLAlchemyError as exc:
        raise TunerError(f"import failed, nothing was committed: {error_reason(exc)}") from None
    return result
