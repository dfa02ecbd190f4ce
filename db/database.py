"""MetaSchedule's Database interface backed by SQLAlchemy: the shared tuning cache.

MetaSchedule's task scheduler, evolutionary search (warm populations from get_top_k) and
``MetaScheduleApplyDatabase`` all talk to this object; every record is committed as soon as it is
measured, so an interrupted run keeps everything it paid for.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi
from tvm_ffi import Array, Map
from sqlalchemy import Connection, Engine, and_, func, not_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from tvm.ir import IRModule
from tvm.tirx import FloatImm, IntImm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule import _ffi_api as _ms_ffi
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload
from tvm.s_tir.schedule import Trace
from tvm.target import Target

from tuner.schedules import kindred
from tuner.schedules.intrinsics import load_tensor_intrinsics

from . import models

# A trace without sampling decisions ("[insts, []]", as record_row writes it) was not found by
# the search: a default schedule stored beside the search's records (dlight on CUDA).
_NO_DECISIONS = ", []]"
# The root-block annotation that marks a stored default schedule whatever its trace holds (a
# CPU default is a sample of the design space, decisions included).
DEFAULT_MARK = "tuner.default_schedule"

# MetaSchedule marks a candidate that failed to build or run with this run time.
_FAILED_RUN_SECS = 1e9

CHECK_OK, CHECK_WRONG, CHECK_FAILED = models.CHECK_OK, models.CHECK_WRONG, models.CHECK_FAILED
# Checks are valid for the TVM version that made them: another one may lower the same trace
# to different code.
TVM_VERSION = tvm.__version__[:32]


def served(r: type[models.TuningRecord]) -> Any:
    """Records compilation may use: measured, and checked correct under this TVM version."""
    return and_(r.mean_run_secs.is_not(None), r.check_status == CHECK_OK, r.checked_tvm == TVM_VERSION)


def rejected(r: type[models.TuningRecord]) -> Any:
    """Records whose check under this TVM version found them wrong (or could not run them)."""
    return and_(r.checked_tvm == TVM_VERSION, r.check_status.is_not(None), r.check_status != CHECK_OK)


def _searched(r: type[models.TuningRecord], traceless_defaults: bool) -> list[Any]:
    """Conditions that leave stored default schedules out."""
    conditions = [r.trace_json.not_like(f"%{DEFAULT_MARK}%")]
    if traceless_defaults:
        conditions.append(r.trace_json.not_like(f"%{_NO_DECISIONS}"))
    return conditions


def _stored_default(trace_json: str) -> bool:
    """`_searched(r, traceless_defaults=True)` of one record, in Python: a stored default schedule."""
    return DEFAULT_MARK in trace_json or trace_json.endswith(_NO_DECISIONS)


def signed_shash(mod: IRModule) -> int:
    """Structural hash folded into a signed 64-bit integer, as SQL BIGINT columns need."""
    value = int(tvm_ffi.structural_hash(mod))
    return value - (1 << 64) if value >= (1 << 63) else value


def mean_run_secs(run_secs: Any) -> float | None:
    """Mean of the measured times, or None for a failed candidate (never served)."""
    if run_secs is None:
        return None
    values = [float(x) for x in run_secs]
    if not values or any(v >= _FAILED_RUN_SECS for v in values):
        return None
    return sum(values) / len(values)


def record_sha256(payload: list[Any]) -> str:
    """Identity of one measurement: ``TuningRecord.as_json()`` hashed in canonical form."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def unsigned_shash(shash: int) -> int:
    return shash + (1 << 64) if shash < 0 else shash


def workload_of(shash: int, mod_json: str) -> Workload:
    """A MetaSchedule Workload from its stored columns."""
    return Workload.from_json([str(unsigned_shash(shash)), mod_json])


def record_from_json(payload: list[Any], workload: Workload) -> TuningRecord:
    """``TuningRecord.from_json``, importing TVM's tensor intrinsics when the trace needs them.

    A tensor-core schedule's trace names intrinsics (``wmma_load_16x16x16_f16_a_shared_dyn``,
    ...) that exist only once ``tvm.s_tir.tensor_intrin`` is imported, which a process that only
    compiles from the database (``--trials 0``, a cache hit) never needed before: on an H100 such
    a run ended with "TensorIntrin ... is not registered". They are imported (seconds, once per
    process) only when a record asks for them."""
    try:
        return TuningRecord.from_json(payload, workload)
    except ValueError as exc:
        if "TensorIntrin" not in str(exc):
            raise
    load_tensor_intrinsics()
    return TuningRecord.from_json(payload, workload)


def workload_row(mod: IRModule) -> dict[str, Any]:
    """The workloads row of a module: hash, digest of its serialization, the serialization."""
    mod_json = Workload(mod).as_json()[1]
    return dict(shash=signed_shash(mod), mod_sha256=hashlib.sha256(mod_json.encode()).hexdigest(),
                mod_json=mod_json, created_at=models.utcnow())


def workloads_with_hash(conn: Connection, shash: int) -> list[tuple[int, Workload]]:
    """Every stored workload with this structural hash (structural equality decides among them)."""
    rows = conn.execute(
        select(models.Workload.id, models.Workload.mod_json)
        .where(models.Workload.shash == shash)
        .order_by(models.Workload.id)
    ).all()
    return [(wid, workload_of(shash, mod_json)) for wid, mod_json in rows]


def _to_plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (IntImm, FloatImm)):
        return obj.value
    if isinstance(obj, (Array, list, tuple)):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, (Map, dict)):
        return {_to_plain(k): _to_plain(v) for k, v in obj.items()}
    # An IndexMap input of TransformLayout (dlight's GPU matmul and convolution rules,
    # tensor-core tiling): the trace loader reads it back from its JSON-graph string.
    return tvm.ir.save_json(obj).strip()


def record_json(record: TuningRecord) -> list[Any]:
    """``TuningRecord.as_json()``, also for traces that hold IndexMaps, which TVM 0.27's own
    conversion leaves as objects and then rejects ("Not supported type: IndexMap"). The result
    is what MetaSchedule's trace loader (and its JSONDatabase) reads."""
    return _to_plain(_ms_ffi.TuningRecordAsJSON(record))


def record_payload(row: models.TuningRecord) -> list[Any]:
    """``TuningRecord.as_json()`` of a stored row: [trace, run_secs, target, args_info]."""
    return [
        json.loads(row.trace_json),
        json.loads(row.run_secs_json) if row.run_secs_json else None,
        json.loads(row.target_json),
        json.loads(row.args_info_json) if row.args_info_json else None,
    ]


def record_row(payload: list[Any], workload_id: int, hardware_key: str, team: str | None,
               private: bool, job_id: str | None, tuner_version: str) -> dict[str, Any]:
    """The tuning_records row of one ``TuningRecord.as_json()`` payload."""
    trace, run_secs, target, args_info = payload
    return dict(
        workload_id=workload_id,
        hardware_key=hardware_key,
        target_json=json.dumps(target, sort_keys=True),
        trace_json=json.dumps(trace),
        args_info_json=json.dumps(args_info) if args_info is not None else None,
        run_secs_json=json.dumps(run_secs) if run_secs is not None else None,
        mean_run_secs=mean_run_secs(run_secs),
        record_sha256=record_sha256(payload),
        team=team,
        private=private,
        job_id=job_id,
        tuner_version=tuner_version[:32],
        created_at=models.utcnow(),
    )


@dataclass(frozen=True)
class Provenance:
    """Who makes the records this database instance commits, and who reads them."""

    hardware_key: str
    hardware_kind: str
    fingerprint: dict[str, Any]
    tuner_version: str
    team: str | None = None
    job_id: str | None = None
    private: bool = False

    @property
    def family(self) -> str:
        return str(self.fingerprint.get("family") or self.hardware_key)


@dataclass(frozen=True)
class Best:
    """The record a workload would be compiled with here."""

    mean_run_secs: float
    team: str | None
    default: bool = False  # a stored default schedule (as `best`'s `traceless_defaults` tells them)


@dataclass(frozen=True)
class Unchecked:
    """A workload's fastest record that may not be served before its check."""

    record_id: int
    record: TuningRecord
    mean_run_secs: float


@dataclass(frozen=True)
class Candidate:
    """A record the final timing of its workload compares (`SQLDatabase.final_candidates`)."""

    record_id: int
    record: TuningRecord
    mean_run_secs: float  # the search's time
    default: bool  # the task's stored default schedule
    trace_json: str  # the schedule: records of one workload with equal traces are one schedule


def insert_for(engine: Engine):  # noqa: ANN202 - dialect-specific Insert
    """INSERT with ON CONFLICT support: our upserts rely on constraints, not locks."""
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


@derived_object
class SQLDatabase(PyDatabase):
    """Records of one hardware key read from and written to a SQL database.

    Served: records of exactly this hardware key that are shared, or private to our team.
    With ``warm_start``, ``get_top_k`` (which only the evolutionary search calls, to seed its
    population) tops up with records of the same hardware family; ``query_tuning_record`` (what
    compilation uses) never does, so a record from other hardware is never final here.

    Compilation is served only records whose check passed (``served``): every record is
    committed as measured, unchecked, and ``fastest_unchecked``/``record_checked`` let the
    pipeline check a workload's fastest one before it is served. ``withheld`` workloads (by id)
    get no record at all: the bisection of a model that fails verification compiles them with
    their default schedules.
    """

    def __init__(self, engine: Engine, provenance: Provenance, warm_start: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.provenance = provenance
        self.warm_start = warm_start
        self.commit_seconds = 0.0  # time spent committing records: part of the per-trial cost
        self._lock = threading.Lock()
        # shash -> [(workload id, Workload)]: avoids re-reading and re-parsing IRModules.
        self._workloads: dict[int, list[tuple[int, Workload]]] = {}
        self.withheld: set[int] = set()
        # workload id -> its (structure, sizes) and Workload, for kindred_traces.
        self._kin: dict[int, tuple[kindred.Skeleton, Workload]] = {}
        self._ensure_hardware()

    # -- helpers -------------------------------------------------------------------------
    def _ensure_hardware(self) -> None:
        p = self.provenance
        stmt = insert_for(self.engine)(models.Hardware).values(
            key=p.hardware_key,
            kind=p.hardware_kind,
            family=p.family,
            fingerprint_json=json.dumps(p.fingerprint, sort_keys=True),
            created_at=models.utcnow(),
        )
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))

    def _load_shash(self, shash: int) -> list[tuple[int, Workload]]:
        with self.engine.connect() as conn:
            return workloads_with_hash(conn, shash)

    def _match(self, mod: IRModule, refresh: bool) -> tuple[int, list[tuple[int, Workload]]]:
        shash = signed_shash(mod)
        known = self._workloads.get(shash)
        if known is None or refresh:
            known = self._load_shash(shash)
            self._workloads[shash] = known
        return shash, [(wid, wl) for wid, wl in known if tvm_ffi.structural_equal(wl.mod, mod)]

    def _find(self, mod: IRModule) -> list[tuple[int, Workload]]:
        _, found = self._match(mod, refresh=False)
        if not found:  # another process may have committed it since we looked
            _, found = self._match(mod, refresh=True)
        return found

    # -- PyDatabase interface ---------------------------------------------------------------
    def has_workload(self, mod: IRModule) -> bool:
        with self._lock:
            return bool(self._find(mod))

    def commit_workload(self, mod: IRModule) -> Workload:
        with self._lock:
            found = self._find(mod)
            if found:
                return found[0][1]
            stmt = insert_for(self.engine)(models.Workload).values(**workload_row(mod))
            with self.engine.begin() as conn:
                conn.execute(stmt.on_conflict_do_nothing(index_elements=["shash", "mod_sha256"]))
            _, found = self._match(mod, refresh=True)
            return found[0][1]

    def commit_tuning_record(self, record: TuningRecord) -> None:
        t0 = time.perf_counter()
        try:
            self._commit_record(record)
        finally:
            self.commit_seconds += time.perf_counter() - t0

    def _commit_record(self, record: TuningRecord) -> None:
        with self._lock:
            found = self._find(record.workload.mod)
        if not found:
            self.commit_workload(record.workload.mod)
            with self._lock:
                found = self._find(record.workload.mod)
        p = self.provenance
        row = record_row(record_json(record), found[0][0], p.hardware_key, p.team, p.private, p.job_id,
                         p.tuner_version)
        stmt = insert_for(self.engine)(models.TuningRecord).values(**row)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing(
                index_elements=["workload_id", "hardware_key", "record_sha256"]
            ))

    def _visible(self):  # noqa: ANN202 - a SQL expression
        """Shared records, and our own team's private ones."""
        r = models.TuningRecord
        team = self.provenance.team
        return r.private.is_(False) if team is None else or_(r.private.is_(False), r.team == team)

    def _compatible_keys(self):  # noqa: ANN202 - a SQL subquery
        return select(models.Hardware.key).where(
            models.Hardware.family == self.provenance.family,
            models.Hardware.key != self.provenance.hardware_key,
        )

    def _records(self, workload_ids: list[int] | None, top_k: int | None,
                 compatible: bool = False, searched_only: bool = False,
                 servable: bool = False) -> list[TuningRecord]:
        r = models.TuningRecord
        if compatible:
            stmt = select(r).where(r.hardware_key.in_(self._compatible_keys()))
        else:
            stmt = select(r).where(r.hardware_key == self.provenance.hardware_key)
        stmt = stmt.where(self._visible())
        # A record found wrong never seeds a search either: its mutations would inherit the fault.
        stmt = stmt.where(served(r)) if servable else stmt.where(not_(rejected(r)))
        if searched_only:
            stmt = stmt.where(*_searched(r, traceless_defaults=True))
        if workload_ids is not None:
            stmt = stmt.where(r.workload_id.in_(workload_ids), r.mean_run_secs.is_not(None))
            # Served: as compilation ranks them; the search's population: by the search's times.
            stmt = stmt.order_by(*models.serving_order(r)) if servable else stmt.order_by(r.mean_run_secs, r.id)
        if top_k is not None:
            stmt = stmt.limit(top_k)
        with Session(self.engine) as session:
            rows = session.scalars(stmt).all()
            wanted = {row.workload_id for row in rows}
            workloads = self._workloads_by_id(session, wanted)
            return [self._to_tvm(row, workloads[row.workload_id]) for row in rows]

    def _workloads_by_id(self, session: Session, ids: set[int]) -> dict[int, Workload]:
        cached = {wid: wl for entries in self._workloads.values() for wid, wl in entries}
        missing = ids - cached.keys()
        if missing:
            for wid, shash, mod_json in session.execute(
                select(models.Workload.id, models.Workload.shash, models.Workload.mod_json).where(
                    models.Workload.id.in_(missing)
                )
            ):
                cached[wid] = workload_of(shash, mod_json)
        return cached

    @staticmethod
    def _to_tvm(row: models.TuningRecord, workload: Workload) -> TuningRecord:
        return record_from_json(record_payload(row), workload)

    def _fastest(self, columns: list[Any], workload_ids: list[int], *conditions: Any):  # noqa: ANN202 - a Select
        """The best record of these workloads here that we may read and that meets the
        conditions (`models.serving_order`): what serving, cache hits and checks each ask for."""
        r = models.TuningRecord
        return (select(*columns)
                .where(r.hardware_key == self.provenance.hardware_key, self._visible(), r.workload_id.in_(workload_ids),
                       *conditions)
                .order_by(*models.serving_order(r)).limit(1))

    def _ids(self, mod: IRModule) -> list[int]:
        with self._lock:
            return [wid for wid, _ in self._find(mod)]

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        """The evolutionary search's initial population: records the search itself produced.

        Default schedules stored beside them (dlight's, which compilation may pick) stay out:
        MetaSchedule's feature extractor rejects some ("blockIdx is bound but threadIdx is
        not") and its mutators find no sampling decision in them to mutate.
        """
        ids = self._ids(workload.mod) if top_k > 0 else []
        if not ids:
            return []
        found = self._records(ids, top_k, searched_only=True)
        if self.warm_start and len(found) < top_k:
            found += self._records(ids, top_k - len(found), compatible=True, searched_only=True)
        return found

    def get_all_tuning_records(self) -> list[TuningRecord]:
        return self._records(None, None)

    def query_tuning_record(
        self, mod: IRModule, target: Target, workload_name: str | None = None
    ) -> TuningRecord | None:
        ids = [wid for wid in self._ids(mod) if wid not in self.withheld]
        best = self._records(ids, 1, servable=True) if ids else []
        return best[0] if best else None

    def __len__(self) -> int:
        r = models.TuningRecord
        stmt = select(func.count()).select_from(r).where(
            r.hardware_key == self.provenance.hardware_key, self._visible()
        )
        with Session(self.engine) as session:
            return int(session.scalar(stmt) or 0)

    # -- tuner's own queries --------------------------------------------------------------
    def best(self, mod: IRModule, searched_only: bool = False, traceless_defaults: bool = True) -> Best | None:
        """The record compilation would use here (served: checked correct), or None.

        `searched_only`: decides cache hit vs tune. The fastest record the search found and no
        check rejected, ignoring stored default schedules (a task that has only its default is
        still worth tuning): those marked so, and with `traceless_defaults` every trace without
        a sampling decision (CUDA's dlight defaults; on CPU a searched trace may have none). It
        need not be checked: a search that found nothing faster than the (checked) default has
        been done all the same.
        """
        ids = self._ids(mod)
        if not ids:
            return None
        r = models.TuningRecord
        usable = and_(r.mean_run_secs.is_not(None), not_(rejected(r)), *_searched(r, traceless_defaults)) \
            if searched_only else served(r)
        stored_default = not_(and_(*_searched(r, traceless_defaults)))
        stmt = self._fastest([func.coalesce(r.final_secs, r.mean_run_secs), r.team, stored_default], ids, usable)
        with Session(self.engine) as session:
            row = session.execute(stmt).first()
        return Best(float(row[0]), row[1], bool(row[2])) if row else None

    def measured_default(self, mod: IRModule, trace: Trace) -> float | None:
        """The mean time of this very default schedule of this workload, measured on this
        hardware by an earlier run and not found wrong since; None when it must be measured.

        A run that tunes a task again (a larger budget, a run cut short) need not pay for the
        default's measurement twice, and two runs from one database state then start from the
        same default times instead of two noisy measurements of one schedule (the transfer
        benchmark's pairs differed by up to 17% before their first trial)."""
        ids = self._ids(mod)
        if not ids:
            return None
        r = models.TuningRecord
        stmt = (select(r.mean_run_secs)
                .where(r.hardware_key == self.provenance.hardware_key, self._visible(), r.workload_id.in_(ids),
                       r.trace_json == json.dumps(_to_plain(trace.as_json(remove_postproc=False))),
                       r.mean_run_secs.is_not(None), not_(rejected(r)))
                .order_by(r.id.desc()).limit(1))
        with Session(self.engine) as session:
            secs = session.scalar(stmt)
        return None if secs is None else float(secs)

    def warm_start_records(self, mod: IRModule) -> int:
        """Searched records of this workload on other hardware of our family that we may read
        (what a search can start from)."""
        ids = self._ids(mod)
        if not ids:
            return 0
        r = models.TuningRecord
        stmt = select(func.count()).select_from(r).where(
            r.hardware_key.in_(self._compatible_keys()), self._visible(), not_(rejected(r)),
            r.workload_id.in_(ids), r.mean_run_secs.is_not(None), *_searched(r, traceless_defaults=True),
        )
        with Session(self.engine) as session:
            return int(session.scalar(stmt) or 0)

    def kindred_traces(self, mod: IRModule, workloads: int, per_workload: int) -> list[Trace]:
        """The fastest searched records (`per_workload` each, not known wrong, ours to read) of
        the `workloads` stored kernels nearest to `mod` in size among those of its structure,
        then of its reducing block only (`kindred.kin_order`), other than itself, measured on
        this hardware family; their traces, best of each kernel first, the kernels taken in
        turn. What a search of `mod` can start from when no search has measured it."""
        if workloads <= 0 or per_workload <= 0:
            return []
        own_skeleton = kindred.skeleton(mod)
        r = models.TuningRecord
        usable = (or_(r.hardware_key == self.provenance.hardware_key, r.hardware_key.in_(self._compatible_keys())),
                  self._visible(), not_(rejected(r)), r.mean_run_secs.is_not(None), *_searched(r, traceless_defaults=True))
        own = set(self._ids(mod))
        with Session(self.engine) as session:
            ids = set(session.scalars(select(r.workload_id).where(*usable).distinct()).all()) - own
            self._index_skeletons(session, ids)
            ranked = ((order, wid) for wid in ids
                      if (order := kindred.kin_order(own_skeleton, self._kin[wid][0])) is not None)
            kin = [wid for _, wid in sorted(ranked)[:workloads]]
            per_kin = []
            for wid in kin:
                rows = session.scalars(select(r).where(r.workload_id == wid, *usable)
                                       .order_by(r.mean_run_secs, r.id).limit(per_workload)).all()
                per_kin.append([self._to_tvm(row, self._kin[wid][1]).trace for row in rows])
        return [traces[i] for i in range(per_workload) for traces in per_kin if i < len(traces)]

    def _index_skeletons(self, session: Session, ids: set[int]) -> None:
        """Structure and sizes of the stored kernels `ids` (once per kernel and handle)."""
        missing = ids - self._kin.keys()
        for wid, workload in self._workloads_by_id(session, missing).items():
            if wid in missing:
                self._kin[wid] = (kindred.skeleton(workload.mod), workload)

    # -- record checks ----------------------------------------------------------------------
    def fastest_unchecked(self, mod: IRModule) -> Unchecked | None:
        """The workload's fastest record here that is not known wrong, when it is not yet
        checked under this TVM version: what must be checked before the workload is served.
        None when the fastest such record is served already (or there is none)."""
        ids = self._ids(mod)
        if not ids:
            return None
        r = models.TuningRecord
        stmt = self._fastest([r], ids, r.mean_run_secs.is_not(None), not_(rejected(r)))
        with Session(self.engine) as session:
            row = session.scalars(stmt).first()
            if row is None or (row.check_status == CHECK_OK and row.checked_tvm == TVM_VERSION):
                return None
            workload = self._workloads_by_id(session, {row.workload_id})[row.workload_id]
            return Unchecked(row.id, self._to_tvm(row, workload), float(row.mean_run_secs))

    def record_checked(self, record_id: int, status: str, detail: str) -> None:
        """Store what a record's check found (under this TVM version)."""
        r = models.TuningRecord
        with self.engine.begin() as conn:
            conn.execute(update(r).where(r.id == record_id).values(
                check_status=status, check_detail=detail[:2000], checked_tvm=TVM_VERSION,
                checked_at=models.utcnow()))

    # -- final timing ------------------------------------------------------------------------
    def final_candidates(self, mod: IRModule, top: int) -> list[Candidate]:
        """What the final timing of this workload compares: its `top` fastest searched records
        by the search's times (distinct schedules), its fastest stored default, and the records
        an earlier final timing ranked (up to `top`), all that we may read and no check rejected."""
        ids = self._ids(mod)
        if not ids or top < 1:
            return []
        r = models.TuningRecord
        usable = self._measured(ids)
        searched = and_(*_searched(r, traceless_defaults=True))
        picks = [
            select(r).where(*usable, searched).order_by(r.mean_run_secs, r.id).limit(4 * top),
            select(r).where(*usable, not_(searched)).order_by(r.mean_run_secs, r.id).limit(1),
            select(r).where(*usable, r.final_secs.is_not(None)).order_by(r.final_secs, r.id).limit(top),
        ]
        out: list[Candidate] = []
        traces: set[str] = set()
        with Session(self.engine) as session:
            for stmt in picks:
                taken = 0
                for row in session.scalars(stmt):
                    if taken == top or row.trace_json in traces:
                        continue
                    traces.add(row.trace_json)
                    taken += 1
                    out.append(self._candidate(session, row))
        return out

    def _measured(self, ids: list[int]) -> tuple[Any, ...]:
        """Records of these workloads here that we may read, measured, and that no check rejected."""
        r = models.TuningRecord
        return (r.hardware_key == self.provenance.hardware_key, self._visible(), r.workload_id.in_(ids),
                r.mean_run_secs.is_not(None), not_(rejected(r)))

    def measured_history(self, mod: IRModule) -> list[Candidate]:
        """Every measured record of this workload here, in the order they were stored (failed
        candidates left out): what a search had found by any point of its run, for a benchmark
        that re-times the search's picks along the way side by side (bench/bench_transfer.py)."""
        ids = self._ids(mod)
        if not ids:
            return []
        r = models.TuningRecord
        stmt = select(r).where(*self._measured(ids), r.mean_run_secs < _FAILED_RUN_SECS).order_by(r.id)
        with Session(self.engine) as session:
            return [self._candidate(session, row) for row in session.scalars(stmt)]

    def _candidate(self, session: Session, row: models.TuningRecord) -> Candidate:
        workload = self._workloads_by_id(session, {row.workload_id})[row.workload_id]
        return Candidate(row.id, self._to_tvm(row, workload), float(row.mean_run_secs),
                         _stored_default(row.trace_json), row.trace_json)

    def record_final_times(self, mod: IRModule, times: dict[int, float]) -> None:
        """Store one final timing of this workload: `times` (record id -> seconds) rank its
        records from now on; the times of an earlier final timing that we may read are dropped
        (they were measured apart from these, so they do not compare)."""
        ids = self._ids(mod)
        if not ids:
            return
        r = models.TuningRecord
        now = models.utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(r).where(
                r.hardware_key == self.provenance.hardware_key, self._visible(), r.workload_id.in_(ids),
                r.final_secs.is_not(None)).values(final_secs=None, final_timed_at=None))
            for record_id, secs in times.items():
                conn.execute(update(r).where(r.id == record_id, r.workload_id.in_(ids))
                             .values(final_secs=secs, final_timed_at=now))

    def served_record_id(self, mod: IRModule) -> int | None:
        """The id of the record compilation would use for this workload here, if any."""
        ids = self._ids(mod)
        if not ids:
            return None
        r = models.TuningRecord
        with Session(self.engine) as session:
            return session.scalar(self._fastest([r.id], ids, served(r)))

    def stored_workloads(self) -> list[tuple[int, IRModule]]:
        """Every workload with a record of this hardware key, by id: what `tuner db verify` (and
        a benchmark that re-runs a step on a stored database) goes through."""
        r, w = models.TuningRecord, models.Workload
        with self.engine.connect() as conn:
            rows = conn.execute(select(w.id, w.shash, w.mod_json).where(w.id.in_(
                select(r.workload_id).where(r.hardware_key == self.provenance.hardware_key))).order_by(w.id)).all()
        return [(wid, workload_of(shash, mod_json).mod) for wid, shash, mod_json in rows]

    def workload_ids(self, mod: IRModule) -> list[int]:
        """The stored workloads structurally equal to `mod` (what ``withheld`` takes)."""
        return self._ids(mod)
