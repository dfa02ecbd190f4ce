"""The shared database trains the cost model every search on the same hardware family starts from."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests import onnx_models
from tests.conftest import TINY, tiny_env
from tests.test_bad_input import assert_clean_error, tuner_cli
from tests.tir_helpers import TARGET
from tuner.config import Settings
from tuner.search.cost_model_training import start_model, train_family
from tuner.db import cost_models as store
from tuner.db.database import TVM_VERSION
from tuner.pipeline import RunRequest, open_database, run
from tuner.schedules.cost_model import BlobError, Samples, Trained, cost_model, from_blob, scores_at_random, to_blob


class Lines:
    """A Progress that keeps its messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def _tune(model: Path, out: Path, db_url: str, settings: Settings, trials: int = 16, **request) -> dict:  # noqa: ANN003
    return run(RunRequest(model=str(model), target=TARGET, trials=trials, out_dir=out, db_url=db_url,
                          measure_untuned=False, **request), settings)


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding two small models' searches on this CPU (tuned once for the module)."""
    where = tmp_path_factory.mktemp("filled")
    path = where / "shared.sqlite"
    for name, net in (("mbr", onnx_models.matmul_bias_relu()), ("conv", onnx_models.small_convnet())):
        _tune(onnx_models.save(net, where / f"{name}.onnx"), where / name, f"sqlite:///{path}", Settings(**TINY))
    return path


@pytest.fixture
def tuned_db(filled_db: Path, tmp_path: Path) -> str:
    """A copy of `filled_db` of the test's own: tests train, store and drop models in it.
    (With its write-ahead log, where the last commits may still be.)"""
    for part in filled_db.parent.glob(f"{filled_db.name}*"):
        shutil.copy(part, tmp_path / part.name)
    return f"sqlite:///{tmp_path / filled_db.name}"


def test_blobs_round_trip_as_plain_arrays_and_refuse_what_they_cannot_trust() -> None:
    rng = np.random.default_rng(0)
    samples = Samples()
    samples.add("g1", [rng.random((3, 5), dtype=np.float32), rng.random((1, 5), dtype=np.float32)],
                np.array([1e-3, 2e-3], "float32"))
    samples.add("g2", [rng.random((2, 5), dtype=np.float32)], np.array([5e-4], "float32"))
    trained = Trained(samples, b'{"booster": 1}', {"tvm_version": TVM_VERSION, "records": 3, "workloads": 2})
    back = from_blob(to_blob(trained), TVM_VERSION)
    assert back.booster == trained.booster and back.meta == trained.meta
    assert list(back.samples.groups) == ["g1", "g2"]
    for key in ("g1", "g2"):
        (f0, c0), (f1, c1) = samples.groups[key], back.samples.groups[key]
        assert all(np.array_equal(a, b) for a, b in zip(f0, f1)) and np.array_equal(c0, c1)
    with pytest.raises(BlobError, match="trained with TVM"):
        from_blob(to_blob(trained), "0.0.1")
    with pytest.raises(BlobError, match="unreadable blob"):
        from_blob(b"PK\x03\x04 not a model", TVM_VERSION)


def test_a_model_trains_from_records_is_stored_and_starts_the_next_search(
        tuned_db: str, tmp_path: Path, settings: Settings) -> None:
    db = open_database(tuned_db, TARGET)
    family = db.provenance.family
    assert start_model(db, Lines()).trained is None  # nothing trained yet
    row = train_family(db.engine, family, store.SHARED, cores=2, min_records=8)
    assert row["records"] >= 16 and row["workloads"] >= 2 and row["tvm_version"] == TVM_VERSION
    assert row["owner"] == "shared" and row["bytes"] > 0

    start = start_model(db, Lines())
    assert start.describe["transferred"] and start.describe["records"] == row["records"]
    model = cost_model(2, start.trained)
    # It holds the transferred samples (refitted on with the search's own; `retrain` says when).
    assert sum(len(group.costs) for group in model.data.values()) == row["records"] and model.booster is not None
    # The next search starts from it, and says so.
    net = onnx_models.save(onnx_models.matmul_bias_relu(n=48), tmp_path / "new.onnx")
    report = _tune(net, tmp_path / "new", tuned_db, settings, trials=8)
    assert report["verified"] and report["cost_model"]["transferred"]
    assert report["cost_model"]["records"] == row["records"]
    # Asked to, a cache-miss run takes for each kernel without a record the default it ranks
    # best (off by default: not yet shown to pay).
    other = onnx_models.save(onnx_models.small_convnet(channels=12), tmp_path / "other.onnx")
    assert not _tune(other, tmp_path / "plain", tuned_db, settings, trials=0)["cost_model"]["ranked_defaults"]
    ranking = settings.model_copy(update={"cost_model": settings.cost_model.model_copy(update={"rank_defaults": True})})
    defaults_only = _tune(other, tmp_path / "other", tuned_db, ranking, trials=0)
    assert defaults_only["verified"] and defaults_only["cost_model"]["ranked_defaults"]
    assert defaults_only["default_schedules"]["sampled"] >= 1
    with pytest.raises(Exception, match="training needs at least"):
        train_family(db.engine, family, store.SHARED, cores=2, min_records=100000)


def _one_workloads_candidates(tuned_db: str) -> tuple[Trained, object, list]:
    """The trained family model, a tuning context and the stored candidates of one workload."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Schedule
    from tvm.target import Target

    db = open_database(tuned_db, TARGET)
    train_family(db.engine, db.provenance.family, store.SHARED, cores=2, min_records=8)
    start = start_model(db, Lines())
    records = [r for r in db.get_all_tuning_records() if r.run_secs]
    mod = records[0].workload.mod
    candidates = []
    for rec in records:
        if tvm_ffi.structural_equal(rec.workload.mod, mod):
            sch = Schedule(mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            candidates.append(ms.MeasureCandidate(sch, rec.args_info))
    assert len(candidates) >= 2
    return start.trained, ms.TuneContext(mod=mod, target=Target(TARGET), task_name="t", num_threads=1), candidates


def _results(size: int) -> list:
    from tvm.s_tir import meta_schedule as ms

    return [ms.runner.RunnerResult([1e-4 * (1 + i % 3)], None) for i in range(size)]


@pytest.mark.parametrize("retrain", ["every_batch", "adaptive"])
def test_a_transferred_model_refits_every_batch_or_at_a_cold_searchs_cadence(tuned_db: str, retrain: str) -> None:
    """"every_batch" refits after each batch the search measured; "adaptive" after its first
    batch, then once its own samples grew by a fifth (the transferred ones do not count toward
    it). Both predict with the transferred booster from the first round, not at random."""
    trained, context, candidates = _one_workloads_candidates(tuned_db)
    model = cost_model(2, trained, retrain)
    first = model.predict(context, candidates)
    assert np.array_equal(first, model.predict(context, candidates)), "the transferred booster predicts"

    def batch(n: int) -> list:
        return [candidates[i % len(candidates)] for i in range(n)]

    refits = []
    for size in (50, 4, 4, 4):
        booster = model.booster
        model.update(context, batch(size), _results(size))
        refits.append(model.booster is not booster)
    # adaptive: 50 own samples fitted; +4, +8 are below a fifth of 50; +12 is not.
    assert refits == ([True] * 4 if retrain == "every_batch" else [True, False, False, True])
    with pytest.raises(ValueError, match="every_batch"):
        cost_model(2, trained, "sometimes")


def test_a_residual_model_ranks_with_the_frozen_model_then_fits_only_the_searchs_samples(tuned_db: str) -> None:
    """"residual" predicts with the transferred booster alone until the search measured
    something, then refits after every batch on the search's own samples only (the transferred
    ones are never refitted: that was the wall time), and its predictions move with them."""
    trained, context, candidates = _one_workloads_candidates(tuned_db)
    model = cost_model(2, trained, "residual")
    assert not scores_at_random(model) and model.booster is None
    first = model.predict(context, candidates)
    assert np.allclose(first, cost_model(2, trained, "adaptive").predict(context, candidates)), \
        "before any own sample it ranks as the transferred model does"
    for size in (24, 4):
        booster = model.booster
        batch = [candidates[i % len(candidates)] for i in range(size)]
        model.update(context, batch, _results(size))
        assert model.booster is not None and model.booster is not booster, "every batch refits"
    assert model.data_size == 28 and sum(len(g.costs) for g in model.data.values()) == 28, "own samples only"
    assert not np.allclose(model.predict(context, candidates), first), "the fit on own samples counts"


def test_ranked_defaults_choose_among_valid_redraws_of_the_default_sample() -> None:
    """The ranker sees the plain default first and re-draws of it after; whatever it picks is a
    schedule that builds and computes what the kernel's workload computes."""
    import tvm

    from tests.test_record_checks import TOLERANCES
    from tests.tir_helpers import matmul
    from tuner.cluster.kernel_check import check_kernel
    from tuner.schedules.defaults import default_schedule

    workload = matmul(96)
    func = workload["main"]
    target = tvm.target.Target(TARGET)
    seen: list[int] = []

    def last(_mod: tvm.IRModule, candidates: list) -> int:
        seen.append(len(candidates))
        return len(candidates) - 1

    plain = default_schedule(func, target)
    ranked = default_schedule(func, target, last)
    assert seen and seen[0] > 8, "the ranker got the default and its re-draws"
    assert plain.mod.script() != ranked.mod.script(), "a re-draw differs from the default"
    ok, detail = check_kernel(tvm.ir.save_json(ranked.mod), tvm.ir.save_json(workload), TARGET, TOLERANCES)
    assert ok, detail


def test_a_corrupted_or_foreign_version_model_is_ignored_with_a_warning(tuned_db: str) -> None:
    db = open_database(tuned_db, TARGET)
    family = db.provenance.family
    store.store(db.engine, family, TVM_VERSION, store.SHARED, {"records": 1, "workloads": 1},
                b"garbage", 1, 0.0)
    progress = Lines()
    start = start_model(db, progress)
    assert start.trained is None and "unreadable blob" in start.describe["ignored"]
    assert any("cost model of hardware family" in line and "is ignored" in line for line in progress.lines)

    trained = Trained(Samples(), b"{}", {"tvm_version": "0.0.1", "records": 0, "workloads": 0})
    store.store(db.engine, family, TVM_VERSION, store.SHARED, trained.meta, to_blob(trained), 1, 0.0)
    assert "trained with TVM 0.0.1" in start_model(db, Lines()).describe["ignored"]


def test_private_records_train_only_their_teams_model(tmp_path: Path, settings: Settings) -> None:
    url = f"sqlite:///{tmp_path / 'teams.sqlite'}"
    shared = onnx_models.save(onnx_models.matmul_bias_relu(), tmp_path / "shared.onnx")
    secret = onnx_models.save(onnx_models.small_convnet(), tmp_path / "secret.onnx")
    _tune(shared, tmp_path / "a", url, settings, team="vision")
    _tune(secret, tmp_path / "b", url, settings, team="speech", private=True)
    db = open_database(url, TARGET, team="other")
    family = db.provenance.family
    assert store.owners_with_private_records(db.engine, family) == ["speech"]
    public = train_family(db.engine, family, store.SHARED, cores=2, min_records=8)
    speech = train_family(db.engine, family, "speech", cores=2, min_records=8)
    assert speech["records"] > public["records"] and speech["workloads"] > public["workloads"]
    assert start_model(db, Lines()).describe["owner"] == "shared"
    assert start_model(open_database(url, TARGET, team="speech"), Lines()).describe["owner"] == "speech"


def test_db_model_shows_trains_and_drops(tuned_db: str, tmp_path: Path) -> None:
    key = open_database(tuned_db, TARGET).provenance.hardware_key
    base = ["--db", tuned_db]
    empty = json.loads(tuner_cli(["db", "model", "--json", *base], tmp_path).stdout)
    assert empty["models"] == []
    assert "no cost models in the database yet" in tuner_cli(["db", "model", *base], tmp_path).stdout
    env_min = {"TUNER_COST_MODEL__MIN_RECORDS": "8"}
    trained = tuner_cli(["db", "model", "--train", "--hardware", key, "--json", *base], tmp_path,
                        env={**tiny_env(tmp_path), **env_min})
    assert trained.returncode == 0, trained.stderr
    models = json.loads(trained.stdout)["models"]
    assert len(models) == 1 and models[0]["owner"] == "shared" and models[0]["records"] >= 16
    shown = tuner_cli(["db", "model", *base], tmp_path)
    assert shown.returncode == 0 and "cost models" in shown.stdout and "shared" in shown.stdout
    dropped = json.loads(tuner_cli(["db", "model", "--drop", "--hardware", key, "--json", *base], tmp_path).stdout)
    assert dropped["done"].startswith("dropped 1 model") and dropped["models"] == []
    assert_clean_error(tuner_cli(["db", "model", "--train", "--hardware", "cpu-nope", *base], tmp_path),
                       "unknown hardware key 'cpu-nope'")


def test_a_run_that_added_enough_records_retrains_in_the_background(
        tmp_path: Path, settings: Settings) -> None:
    url = f"sqlite:///{tmp_path / 'bg.sqlite'}"
    settings = settings.model_copy(update={"cost_model": settings.cost_model.model_copy(
        update={"retrain_after_records": 8, "min_records": 8})})
    net = onnx_models.save(onnx_models.small_convnet(), tmp_path / "conv.onnx")
    report = _tune(net, tmp_path / "out", url, settings)
    assert report["cost_model"]["retraining"] is True
    db = open_database(url, TARGET)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not store.listing(db.engine, db.provenance.family):
        time.sleep(2)
    log = (tmp_path / "out" / "logs" / "cost-model-training.log")
    assert store.listing(db.engine, db.provenance.family), log.read_text() if log.exists() else "no log"
