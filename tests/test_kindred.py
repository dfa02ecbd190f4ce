"""Kindred seeds: a kernel no search has measured starts from the records of kernels of its
structure at other shapes, their decisions refitted to its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm.s_tir import Schedule
from tvm_ffi import structural_hash
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from tests.tir_helpers import TARGET, matmul
from tuner.config import Settings
from tuner.db.database import CHECK_WRONG
from tuner.pipeline import open_database
from tuner.progress import SilentProgress
from tuner.schedules import kindred, strategy
from tuner.schedules.space import design_spaces, space_generator
from tuner.search import tuning

OTHER_ISA = {"kind": "llvm", "num-cores": 2, "mcpu": "skylake-avx512"}


def _spaces(mod: tvm.IRModule, rand_state: int = 1) -> list[Schedule]:
    target = Target(TARGET)
    context = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod),
                             task_name="t", rand_state=rand_state, num_threads=1)
    spaces = design_spaces(context)
    assert spaces
    return spaces


def _stored(db, mod: tvm.IRModule, secs: float, space: int = 0, target: dict = TARGET) -> ms.database.TuningRecord:  # noqa: ANN001
    """A record as a search stores it: a sample of the kernel's design space, decisions included."""
    trace = _spaces(mod)[space].trace
    return ms.database.TuningRecord(trace, db.commit_workload(mod), [secs], Target(target),
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def _tiles(trace: tvm.s_tir.Trace) -> list[list[int]]:
    return [[int(f) for f in d] for inst, d in trace.decisions.items() if inst.kind.name == "SamplePerfectTile"]


def test_tiles_keep_their_inner_factors_where_divisibility_allows() -> None:
    assert kindred.refit_tile([4, 2, 8], 48, 16) == [3, 2, 8]
    assert kindred.refit_tile([4, 2, 8], 40, 16) == [5, 1, 8]  # 2 does not divide 5: 1 is nearer than 5
    assert kindred.refit_tile([1, 1, 64], 96, 16) == [6, 1, 16]  # the innermost stays within its bound
    assert kindred.refit_tile([2, 7], 7, 0) == [1, 7]


def test_a_stored_trace_refitted_to_another_shape_computes_that_kernel(sqlite_url: str) -> None:
    db = open_database(sqlite_url, TARGET)
    small, big = matmul(32), matmul(96)
    db.commit_tuning_record(_stored(db, small, 1e-5))
    foreign = db.kindred_traces(big, workloads=4, per_workload=8)
    assert len(foreign) == 1
    spaces = _spaces(big)
    seeds = kindred.seeds_for(big, spaces, foreign, limit=8)
    assert seeds
    for seed in seeds:
        # Every tile of the seed splits a loop of 96, none of 32's splits was replayed as it was.
        for factors in _tiles(seed):
            assert np.prod(factors) == 96, factors
        sch = Schedule(big)
        seed.apply_to_schedule(sch, remove_postproc=True)
        lib = tvm.compile(sch.mod, target=Target(TARGET))
        a, b = (np.random.default_rng(i).standard_normal((96, 96)).astype("float32") for i in (0, 1))
        c = tvm.runtime.tensor(np.zeros((96, 96), "float32"))
        lib(tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
        np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_the_nearest_kindred_kernels_of_the_family_are_taken(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    for n, secs in ((16, 1e-6), (64, 2e-5), (256, 1e-3)):
        db.commit_tuning_record(_stored(db, matmul(n), secs))
    elsewhere = open_database(db_url, OTHER_ISA)  # another ISA: not of this family
    elsewhere.commit_tuning_record(_stored(elsewhere, matmul(80), 1e-5, target=OTHER_ISA))
    wanted = matmul(72)
    nearest = db.kindred_traces(wanted, workloads=1, per_workload=8)
    assert len(nearest) == 1
    assert _tiles(nearest[0]) == _tiles(_spaces(matmul(64))[0].trace) != []  # matmul(64)'s own trace
    assert len(db.kindred_traces(wanted, workloads=2, per_workload=8)) == 2
    # A kernel's own records are not kindred to it; a record found wrong seeds nothing.
    assert len(db.kindred_traces(matmul(64), workloads=4, per_workload=8)) == 2
    wrong = db.fastest_unchecked(matmul(256))
    db.record_checked(wrong.record_id, CHECK_WRONG, "test")
    assert len(db.kindred_traces(wanted, workloads=4, per_workload=8)) == 2
    assert db.kindred_traces(wanted, workloads=0, per_workload=8) == []


def _matmul_residual_relu(n: int) -> tvm.IRModule:
    """max(A @ B + R, 0): a matmul whose epilogue differs from `matmul`'s (a residual add and a
    ReLU, as resnet50's convolutions have beside squeezenet's), its product block named alike."""
    a, b, r = (te.placeholder((n, n), "float32", name=x) for x in "ABR")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    out = te.compute((n, n), lambda i, j: te.max(c[i, j] + r[i, j], tvm.tirx.const(0, "float32")), name="T_relu")
    return tvm.IRModule({"main": te.create_prim_func([a, b, r, out])})


def test_a_kernel_with_another_epilogue_is_kin_after_those_of_its_own_structure(db_url: str) -> None:
    db = open_database(db_url, TARGET)
    db.commit_tuning_record(_stored(db, matmul(64), 1e-5))
    wanted = _matmul_residual_relu(48)
    assert kindred.skeleton(wanted).key != kindred.skeleton(matmul(64)).key
    foreign = db.kindred_traces(wanted, workloads=4, per_workload=8)
    assert [_tiles(t) for t in foreign] == [_tiles(_spaces(matmul(64))[0].trace)]
    # The plain matmul's decisions fit the residual kernel's own design space and compute it.
    seeds = kindred.seeds_for(wanted, _spaces(wanted), foreign, limit=8)
    assert seeds
    sch = Schedule(wanted)
    seeds[0].apply_to_schedule(sch, remove_postproc=True)
    lib = tvm.compile(sch.mod, target=Target(TARGET))
    x, y, res = (np.random.default_rng(i).standard_normal((48, 48)).astype("float32") for i in range(3))
    out = tvm.runtime.tensor(np.zeros((48, 48), "float32"))
    lib(*(tvm.runtime.tensor(v) for v in (x, y, res)), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(x @ y + res, 0), rtol=1e-4, atol=1e-4)
    # A kernel of its own structure comes first, however far in size.
    db.commit_tuning_record(_stored(db, _matmul_residual_relu(256), 1e-3))
    first = db.kindred_traces(wanted, workloads=1, per_workload=8)
    assert [_tiles(t) for t in first] == [_tiles(_spaces(_matmul_residual_relu(256))[0].trace)]
    assert len(db.kindred_traces(wanted, workloads=4, per_workload=8)) == 2


def _first_round(search: strategy.ContainedSearch, mod: tvm.IRModule, database: ms.Database) -> list:
    target = Target(TARGET)
    context = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod),
                             search_strategy=search, task_name="t", num_threads=1)
    search.pre_tuning(8, 4, context.generate_design_space(), database, ms.cost_model.RandomModel())
    try:
        return search.generate_measure_candidates()
    finally:
        search.post_tuning()


def test_an_unmeasured_task_measures_its_seeds_first(sqlite_url: str) -> None:
    db = open_database(sqlite_url, TARGET)
    for space in range(3):
        db.commit_tuning_record(_stored(db, matmul(32), 1e-5 * (space + 1), space=space))
    big = matmul(64)
    source = strategy.Kindred(lambda mod: db.kindred_traces(mod, 4, 8), limit=8)
    expected = kindred.seeds_for(big, _spaces(big), db.kindred_traces(big, 4, 8), 8)

    def search() -> strategy.ContainedSearch:
        return strategy.ContainedSearch(
            lambda: ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=4, genetic_num_iters=1),
            make_first=lambda: ms.search_strategy.ReplayTrace(max_fail_count=16), kindred=source)

    drawn = _first_round(search(), big, db)
    assert source.seeded == {"t": len(expected)}
    assert 0 < len(drawn) <= min(4, len(expected))
    seeded = {structural_hash(_postprocessed(big, seed)) for seed in expected}
    assert {structural_hash(c.sch.mod) for c in drawn} <= seeded
    # A task with records of its own starts from them, not from its kin.
    source.seeded.clear()
    db.commit_tuning_record(_stored(db, big, 1e-4))
    _first_round(search(), big, db)
    assert source.seeded == {}


def test_with_a_trained_model_the_seeds_join_the_population_or_go_first(sqlite_url: str) -> None:
    db = open_database(sqlite_url, TARGET)
    for space in range(3):
        db.commit_tuning_record(_stored(db, matmul(32), 1e-5 * (space + 1), space=space))
    big = matmul(64)
    expected = kindred.seeds_for(big, _spaces(big), db.kindred_traces(big, 4, 8), 8)
    seeded = {structural_hash(_postprocessed(big, seed)) for seed in expected}

    def first_round(measure_first: bool) -> set[int]:
        source = strategy.Kindred(lambda mod: db.kindred_traces(mod, 4, 8), limit=8, measure_first=measure_first)
        search = strategy.ContainedSearch(  # no random first round: as when a trained model steers
            lambda: ms.search_strategy.EvolutionarySearch(population_size=16, init_min_unmeasured=4, genetic_num_iters=1),
            kindred=source)
        drawn = _first_round(search, big, db)
        assert source.seeded == {"t": len(expected)}
        return {structural_hash(c.sch.mod) for c in drawn}

    assert first_round(True) <= seeded and first_round(True)
    assert first_round(False) - seeded  # the evolution's picks, the seeds among its population


def _postprocessed(mod: tvm.IRModule, trace: tvm.s_tir.Trace) -> tvm.IRModule:
    sch = Schedule(mod)
    trace.apply_to_schedule(sch, remove_postproc=True)
    sch.enter_postproc()
    for postproc in _postprocs(mod):
        assert postproc.apply(sch)
    return sch.mod


def _postprocs(mod: tvm.IRModule) -> list:
    target = Target(TARGET)
    context = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod),
                             task_name="t", num_threads=1)
    return list(context.space_generator.postprocs)


def test_a_run_reports_its_seeded_tasks(settings: Settings, sqlite_url: str, tmp_path: Path) -> None:
    db = open_database(sqlite_url, TARGET)
    db.commit_tuning_record(_stored(db, matmul(32), 1e-5))
    target = Target(TARGET)
    tasks = [ms.ExtractedTask("mm48", matmul(48), target, [matmul(48)], 1)]
    result = tuning.tune(tasks, target, db, 8, settings, 0, tmp_path / "logs", SilentProgress())
    assert result.cost_model["kindred_seeded_tasks"] == 1
    off = settings.model_copy(update={"kindred_workloads": 0})
    tasks = [ms.ExtractedTask("mm40", matmul(40), target, [matmul(40)], 1)]
    result = tuning.tune(tasks, target, db, 8, off, 0, tmp_path / "logs2", SilentProgress())
    assert "kindred_seeded_tasks" not in result.cost_model

