"""Sharing rules of the team database: visibility per team, warm starts per hardware family, prune, stats."""

from __future__ import annotations

import pytest
from tvm.target import Target

from tests.tir_helpers import TARGET, checked, matmul, record
from tuner.db.admin import database_stats, prune
from tuner.db.database import mean_run_secs
from tuner.pipeline import open_database

ONE_CORE = {"kind": "llvm", "num-cores": 1}  # same family as TARGET, another hardware key
OTHER_ISA = {"kind": "llvm", "num-cores": 2, "mcpu": "skylake-avx512"}


def test_shared_records_serve_every_team_private_ones_only_their_own(db_url: str) -> None:
    vision = open_database(db_url, TARGET, team="vision")
    secret = open_database(db_url, TARGET, team="secret", private=True)
    shared_mod, private_mod = matmul(16), matmul(20)
    vision.commit_tuning_record(record(vision, shared_mod, [2e-4]))
    secret.commit_tuning_record(record(secret, private_mod, [3e-4]))
    secret.commit_tuning_record(record(secret, shared_mod, [1e-4]))  # faster, but private
    checked(vision, shared_mod)
    checked(secret, shared_mod, private_mod)

    speech = open_database(db_url, TARGET, team="speech")
    assert speech.best(shared_mod).mean_run_secs == pytest.approx(2e-4)
    assert speech.best(shared_mod).team == "vision"
    assert speech.best(private_mod) is None
    assert speech.query_tuning_record(private_mod, Target(TARGET), "main") is None
    assert len(speech) == 1
    # The owner sees its private record, and it wins where it is faster.
    owner = open_database(db_url, TARGET, team="secret")
    assert owner.best(shared_mod).mean_run_secs == pytest.approx(1e-4)
    assert owner.best(private_mod).mean_run_secs == pytest.approx(3e-4)


def test_compatible_hardware_seeds_the_search_but_is_never_final(db_url: str) -> None:
    two = open_database(db_url, TARGET)
    mod = matmul(24)
    for secs in ([3e-4], [1e-4], [2e-4]):
        two.commit_tuning_record(record(two, mod, secs))
    other_isa = open_database(db_url, OTHER_ISA)
    other_isa.commit_tuning_record(record(other_isa, mod, [5e-5], OTHER_ISA))

    one = open_database(db_url, ONE_CORE, warm_start=True)
    assert one.provenance.family == two.provenance.family != other_isa.provenance.family
    workload = one.commit_workload(mod)
    assert one.warm_start_records(mod) == 3  # the other ISA's record is not compatible
    seeds = one.get_top_k(workload, 2)
    assert [mean_run_secs(r.run_secs) for r in seeds] == pytest.approx([1e-4, 2e-4])
    assert one.best(mod) is None
    assert one.query_tuning_record(mod, Target(ONE_CORE), "main") is None
    # Once measured here, own records come first and fill the seeds.
    one.commit_tuning_record(record(one, mod, [4e-4], ONE_CORE))
    checked(one, mod, target=ONE_CORE)
    seeds = one.get_top_k(workload, 2)
    assert [mean_run_secs(r.run_secs) for r in seeds] == pytest.approx([4e-4, 1e-4])
    assert one.best(mod).mean_run_secs == pytest.approx(4e-4)
    # Without warm start, nothing from other hardware at all.
    cold = open_database(db_url, ONE_CORE)
    assert [mean_run_secs(r.run_secs) for r in cold.get_top_k(workload, 5)] == pytest.approx([4e-4])


def test_prune_keeps_the_best_per_workload_hardware_and_private_team(db_url: str) -> None:
    db = open_database(db_url, TARGET, team="a")
    private = open_database(db_url, TARGET, team="b", private=True)
    other_hw = open_database(db_url, ONE_CORE, team="a")
    mod = matmul(12)
    for i in range(5):
        db.commit_tuning_record(record(db, mod, [(i + 1) * 1e-4]))
        other_hw.commit_tuning_record(record(other_hw, mod, [(i + 1) * 1e-4], ONE_CORE))
    db.commit_tuning_record(record(db, mod, [1e10]))  # failed
    private.commit_tuning_record(record(private, mod, [9e-4]))  # b's only record: kept
    checked(db, mod)
    assert prune(db.engine, 2, dry_run=True).records_deleted == 3 + 3 + 1
    assert len(db) == 6  # dry run deleted nothing (5 + 1 failed; b's record is private)

    result = prune(db.engine, 2)
    assert (result.records_before, result.records_deleted, result.failed_deleted) == (12, 7, 1)
    assert [mean_run_secs(r.run_secs) for r in db.get_top_k(db.commit_workload(mod), 9)] == pytest.approx([1e-4, 2e-4])
    assert len(other_hw) == 2
    assert open_database(db_url, TARGET, team="b").best(mod).mean_run_secs == pytest.approx(1e-4)
    assert len(open_database(db_url, TARGET, team="b")) == 3
    with pytest.raises(ValueError):
        prune(db.engine, 0)


def test_stats_count_per_hardware_and_team(db_url: str) -> None:
    db = open_database(db_url, TARGET, team="a")
    other = open_database(db_url, ONE_CORE, team="b", private=True)
    db.commit_tuning_record(record(db, matmul(8), [1e-4]))
    db.commit_tuning_record(record(db, matmul(10), [1e10]))
    other.commit_tuning_record(record(other, matmul(8), [2e-4], ONE_CORE))
    stats = database_stats(db.engine)
    assert (stats["workloads"], stats["records"], stats["failed_records"]) == (2, 3, 1)
    assert stats["revision"] == stats["head_revision"]
    assert stats["size_bytes"] > 0
    by_key = {row["key"]: row for row in stats["hardware"]}
    assert by_key[db.provenance.hardware_key]["records"] == 2
    assert by_key[db.provenance.hardware_key]["valid"] == 1
    assert by_key[other.provenance.hardware_key]["num_cores"] == 1
    teams = {row["team"]: row for row in stats["teams"]}
    assert teams["a"]["records"] == 2 and teams["b"]["private"] == 1
