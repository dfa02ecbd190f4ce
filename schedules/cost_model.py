"""The search's cost model, and what the shared database teaches it before a search starts.

MetaSchedule's XGBoost model learns from nothing in every run: its first rounds pick candidates
at random. The database already holds every candidate measured on the same hardware family, so
a model trained on their features (MetaSchedule's per-store features of each record's trace
applied to its workload) ranks a new task's candidates from the first round, and the search
keeps adding its own measurements to that data as it goes.

A trained model travels as a blob of plain arrays (numpy's npz, no pickles: a shared database
must not be able to run code in every tuner that reads it) with the XGBoost booster in its own
JSON format.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule, Trace
from tvm.target import Target

from .intrinsics import load_tensor_intrinsics

# Bumped when the blob's layout changes: a blob of another format is ignored, never misread.
BLOB_FORMAT = 1


class BlobError(ValueError):
    """A stored model that cannot be used here: corrupted, or of another format or TVM version."""


@dataclass
class Samples:
    """Measured candidates as the cost model learns them, one group per workload: each
    candidate's per-store feature rows and its mean run time (seconds)."""

    groups: dict[str, tuple[list[np.ndarray], np.ndarray]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(costs) for _, costs in self.groups.values())

    def add(self, group: str, features: list[np.ndarray], costs: np.ndarray) -> None:
        if group in self.groups:
            old_features, old_costs = self.groups[group]
            self.groups[group] = ([*old_features, *features], np.concatenate([old_costs, costs]))
        else:
            self.groups[group] = (list(features), np.asarray(costs, dtype="float32"))


@dataclass(frozen=True)
class Measured:
    """One stored record: its workload, trace, mean run time and argument info."""

    workload: IRModule
    trace: Trace
    mean_run_secs: float
    args_info: list[Any]


def record_samples(records: Iterable[Measured], target: Target) -> Samples:
    """Features of each record's trace replayed on its workload, grouped by workload (a record
    whose trace no longer replays is skipped: it cannot teach this TVM anything)."""
    extractor = ms.feature_extractor.PerStoreFeature()
    by_workload: dict[str, tuple[IRModule, list[Measured]]] = {}
    for rec in records:
        key = _group(rec.workload)
        by_workload.setdefault(key, (rec.workload, []))[1].append(rec)
    samples = Samples()
    for key, (mod, recs) in by_workload.items():
        context = _context(mod, target)
        candidates, costs = [], []
        for rec in recs:
            try:
                sch = Schedule(mod)
                rec.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # noqa: BLE001 - a trace of another TVM version
                continue
            candidates.append(ms.MeasureCandidate(sch, rec.args_info))
            costs.append(rec.mean_run_secs)
        if not candidates:
            continue
        features = [f.numpy().astype("float32") for f in extractor.extract_from(context, candidates)]
        kept = [i for i, f in enumerate(features) if len(f)]
        if kept:
            samples.add(key, [features[i] for i in kept], np.array([costs[i] for i in kept], dtype="float32"))
    return samples


def _context(mod: IRModule, target: Target, num_threads: int | str = "physical") -> ms.TuneContext:
    """The TuneContext features are extracted in. A TuneContext imports TVM's tensor intrinsics
    the slow way (~20 s, intrinsics.py) in a process that has not loaded them yet, such as a
    training process: they are loaded tuner's way first."""
    load_tensor_intrinsics()
    return ms.TuneContext(mod=mod, target=target, task_name=_group(mod), num_threads=num_threads)


def _group(mod: IRModule) -> str:
    """The group key XGBModel itself uses for a workload (its structural hash in hex)."""
    from tvm.s_tir.meta_schedule.utils import shash2hex

    return shash2hex(mod)


def _throughputs(costs: np.ndarray) -> np.ndarray:
    """What the model learns per group: the best time over each candidate's (1: the best)."""
    return np.divide(costs.min(), costs, out=np.zeros_like(costs), where=costs != 0)


def _model(cores: int) -> ms.cost_model.XGBModel:
    return ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(), num_tuning_cores=cores,
                                  adaptive_training=True, tree_method="auto")


def _fit(samples: Samples, cores: int) -> ms.cost_model.XGBModel:
    model = _model(cores)
    xs = [f for features, _ in samples.groups.values() for f in features]
    ys = np.concatenate([_throughputs(costs) for _, costs in samples.groups.values()])
    model._train(xs=xs, ys=ys)  # noqa: SLF001 - XGBModel trains only through update(); this is its own fit
    return model


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def holdout_score(samples: Samples, cores: int, holdout: float = 0.2, seed: int = 0) -> float | None:
    """Mean Spearman rank correlation between predicted and measured throughput on held-out
    workloads (a model trained on the others): how well it ranks candidates of a task it never
    saw, which is what a new search asks of it. None with too few workloads to hold out."""
    keys = sorted(samples.groups)
    if len(keys) < 3:
        return None
    rng = np.random.default_rng(seed)
    held = set(rng.choice(keys, size=max(1, int(round(len(keys) * holdout))), replace=False).tolist())
    train = Samples({k: v for k, v in samples.groups.items() if k not in held})
    model = _fit(train, cores)
    scores = []
    for key in held:
        features, costs = samples.groups[key]
        score = _spearman(model._predict(xs=features), _throughputs(costs))  # noqa: SLF001
        if score is not None:
            scores.append(score)
    return float(np.mean(scores)) if scores else None


@dataclass
class Trained:
    """A model trained on a family's records: the samples (the search goes on learning from
    them and its own measurements) and the booster fitted to them."""

    samples: Samples
    booster: bytes
    meta: dict[str, Any]


def train(samples: Samples, cores: int, meta: dict[str, Any]) -> Trained:
    model = _fit(samples, cores)
    raw = model.booster.save_raw(raw_format="json")
    return Trained(samples, bytes(raw), {**meta, "records": samples.size, "workloads": len(samples.groups)})


def to_blob(trained: Trained) -> bytes:
    """Plain arrays only: features concatenated, rows per candidate, group per candidate."""
    keys = list(trained.samples.groups)
    features, rows, group, costs = [], [], [], []
    for g, key in enumerate(keys):
        feats, cs = trained.samples.groups[key]
        features.extend(feats)
        rows.extend(len(f) for f in feats)
        group.extend([g] * len(feats))
        costs.append(cs)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        format=np.array([BLOB_FORMAT]),
        meta=np.frombuffer(json.dumps(trained.meta, sort_keys=True).encode(), dtype=np.uint8),
        keys=np.array(keys, dtype="U"),
        features=np.concatenate(features).astype("float32") if features else np.zeros((0, 0), "float32"),
        rows=np.array(rows, dtype="int64"),
        group=np.array(group, dtype="int64"),
        costs=np.concatenate(costs).astype("float32") if costs else np.zeros(0, "float32"),
        booster=np.frombuffer(trained.booster, dtype=np.uint8),
    )
    return buf.getvalue()


def from_blob(blob: bytes, tvm_version: str) -> Trained:
    """The model a blob holds; BlobError when it cannot be trusted here."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            if int(data["format"][0]) != BLOB_FORMAT:
                raise BlobError(f"blob format {int(data['format'][0])}, this tuner reads {BLOB_FORMAT}")
            meta = json.loads(bytes(data["meta"]).decode())
            keys, features, rows = data["keys"].tolist(), data["features"], data["rows"]
            group, costs, booster = data["group"], data["costs"], bytes(data["booster"])
    except BlobError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a corrupted blob makes numpy raise
        raise BlobError(f"unreadable blob ({type(exc).__name__}: {exc})") from None
    if meta.get("tvm_version") != tvm_version:
        raise BlobError(f"trained with TVM {meta.get('tvm_version')}, this is TVM {tvm_version}")
    if len(rows) != len(group) or len(rows) != len(costs) or int(rows.sum()) != len(features):
        raise BlobError("inconsistent blob: feature rows, groups and costs do not match")
    samples = Samples()
    starts = np.concatenate([[0], np.cumsum(rows)])
    for g, key in enumerate(keys):
        idx = np.nonzero(group == g)[0]
        samples.add(key, [features[starts[i]:starts[i + 1]] for i in idx], costs[idx])
    return Trained(samples, booster, meta)


RETRAIN_MODES = ("residual", "adaptive", "every_batch")


@derived_object
class ResidualXGBModel(ms.cost_model.XGBModel._cls):  # noqa: SLF001 - a derived_object is subclassed through _cls
    """A transferred model kept frozen, and XGBoost fitted on the search's own samples only, to
    what the frozen model leaves unexplained (its output is each store row's base margin).

    Why: the other modes refit the transferred model on its thousands of samples plus the
    search's own (training a family's model on 1,820 records took 99 s on 2 cores), a suspect of
    transferred searches' wall time (1.8-1.9x a cold search's on the KVM Xeon). Here every fit
    is as small as a cold search's, so the search refits after every batch (its own
    measurements count from the first round), and the frozen model ranks candidates before
    there are any. Measured (AMD EPYC znver3, transformer, 3 seeds): 1.41-1.54x the cold wall
    time against adaptive's 1.39-1.82x, so the refits were not most of it; not the default."""

    def __init__(self, base: Any, num_tuning_cores: int) -> None:
        super().__init__(extractor=ms.feature_extractor.PerStoreFeature(), num_tuning_cores=num_tuning_cores,
                         adaptive_training=False, tree_method="auto")
        self.base = base
        self.num_warmup_samples = 0

    def _packed(self, xs: list[np.ndarray], ys: np.ndarray | None) -> tuple[Any, np.ndarray]:
        """The samples packed for XGBoost with the frozen model's output as their base margin,
        and that output (per store row)."""
        from tvm.s_tir.meta_schedule.cost_model.xgb_model import PackSum

        pack = PackSum(xs=xs, ys=ys)
        margin = self.base.predict(pack.dmatrix, output_margin=True)
        pack.dmatrix.set_base_margin(margin)
        return pack, margin

    def predict(self, context: ms.TuneContext, candidates: list[ms.MeasureCandidate]) -> np.ndarray:
        xs = [x.numpy().astype("float32") for x in self.extractor.extract_from(context, candidates)]
        return self._predict(xs).astype("float64")

    def _predict(self, xs: list[np.ndarray]) -> np.ndarray:
        pack, margin = self._packed(xs, None)
        # No own samples yet: the frozen model alone.
        return pack.predict_with_score(margin if self.booster is None else self.booster.predict(pack.dmatrix))

    def _train(self, xs: list[np.ndarray], ys: np.ndarray) -> None:
        # XGBModel._train, on data whose base margin is the frozen model's output.
        import xgboost as xgb

        from tvm.s_tir.meta_schedule.cost_model.xgb_model import _get_custom_call_back

        pack, _ = self._packed(xs, ys)
        self.booster = xgb.train(
            self.config.to_dict(), pack.dmatrix, num_boost_round=10000,
            obj=lambda preds, _: pack.obj_square_error(preds),
            callbacks=[_get_custom_call_back(
                early_stopping_rounds=self.early_stopping_rounds, verbose_eval=self.verbose_eval,
                fevals=[lambda preds, _: pack.rmse(preds),
                        lambda preds, _: pack.average_peak_score(preds, self.average_peak_n)],
                evals=[(pack.dmatrix, "tr")], cvfolds=None)])


def _booster(trained: Trained) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(trained.booster))
    return booster


def cost_model(num_cores: int, start: Trained | None = None, retrain: str = "adaptive") -> ms.cost_model.XGBModel:
    """XGBoost on MetaSchedule's per-store features, trained online on this run's measurements.
    With `start`, the search begins from a family's model: `retrain="residual"` keeps it frozen
    and fits the search's own samples, after each batch, to what it leaves unexplained
    (ResidualXGBModel); `"every_batch"` refits it on its samples plus the search's own after each
    batch (the new task's data counts from the first round); `"adaptive"` does so whenever the
    search's own samples grew by a fifth, the cadence of a cold search."""
    if retrain not in RETRAIN_MODES:
        raise ValueError(f"retrain: one of {', '.join(RETRAIN_MODES)}, not {retrain!r}")
    if start is None:
        return _model(num_cores)
    booster = _booster(start)
    if retrain == "residual":
        return ResidualXGBModel(booster, num_cores)
    model = _model(num_cores)
    from tvm.s_tir.meta_schedule.cost_model.xgb_model import FeatureGroup

    model.booster = booster
    model.data = OrderedDict((key, FeatureGroup(key, list(features), np.asarray(costs)))
                             for key, (features, costs) in start.samples.groups.items())
    # XGBModel predicts at random below `num_warmup_samples` (100) samples: the fitted booster
    # predicts from the first round (a model of 64-99 records otherwise started the search blind).
    model.num_warmup_samples = 0
    if retrain == "adaptive":
        # XGBModel refits once `data_size` grew by a fifth since its last fit: counting only the
        # search's own samples gives a cold search's cadence.
        model.data_size = model.last_train_size = 0
    else:
        # Adaptive training counting the transferred samples would refit only once the data grew
        # by a fifth of thousands: never within a task's search. Each batch refits instead.
        model.data_size = start.samples.size
        model.adaptive_training = False
    return model


def scores_at_random(model: ms.cost_model.XGBModel) -> bool:
    """Whether `model` still predicts at random (XGBModel below `num_warmup_samples`, or not yet
    fitted): an evolution it steers picks at random, at the evolution's cost in time."""
    if isinstance(model, ResidualXGBModel):
        return False  # the frozen model predicts from the first round
    return model.data_size < model.num_warmup_samples or model.booster is None


def default_ranker(trained: Trained, target: Target) -> Callable[[IRModule, list[Schedule]], int] | None:
    """Ranks a workload's candidate default schedules (schedules/defaults.py) by the trained
    model's predicted throughput, without measuring any: the index of the best, the first
    candidate (the plain default) on a tie. None on CUDA, whose defaults are dlight's rules."""
    if target.kind.name != "llvm":
        return None
    model = cost_model(int(target.attrs.get("num-cores", 1)), trained)

    def rank(mod: IRModule, candidates: list[Schedule]) -> int:
        context = _context(mod, target, num_threads=1)
        measure = [ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
                   for sch in candidates]
        scores = np.asarray(model.predict(context, measure))
        return int(np.argmax(scores)) if scores.size and scores.max() > scores[0] else 0

    return rank
