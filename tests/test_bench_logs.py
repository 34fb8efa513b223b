"""The log parsers behind benchmarks/results: what `make test` took (suite_minutes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import suite_minutes as T  # noqa: E402

LOG = """\
23:58:00 /usr/bin/python3.11 -m venv .venv
23:59:30 environment ok: torch 2.13.0+cpu
00:01:00 /tmp/c/.venv/bin/python -m pytest -q -n 2 --dist loadscope
00:20:00 ============================= slowest 25 durations =============================
00:20:00 271.57s setup    tests/test_flows.py::test_flow_runs_every_stage_and_matches_dvc_repro
00:20:00 237.38s call     tests/test_pipeline_e2e.py::test_make_run[nethack]
00:20:00 2 failed, 370 passed, 5439 warnings in 1140.00s (0:19:00)
rc=2 total=1320s
"""


def test_a_make_test_log_gives_set_up_test_and_total_minutes(tmp_path):
    got = T.parse(LOG)
    assert (got["status"], got["passed"], got["failed"]) == (2, 370, 2)
    assert got["setup_minutes"] == 3.0  # 23:58 → 00:01, across midnight
    assert got["pytest_minutes"] == 19.0 and got["total_minutes"] == 22.0
    assert got["slowest"][1] == {"seconds": 237.38, "phase": "call", "test": "tests/test_pipeline_e2e.py::test_make_run[nethack]"}
    log, out = tmp_path / "ci.log", tmp_path / "times.json"
    log.write_text(LOG)
    out.write_text(json.dumps({"idle": {"kept": True}}))
    assert T.main([str(log), "--label", "loaded", "--note", "n", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["idle"] == {"kept": True} and data["loaded"]["note"] == "n"


def test_an_unfinished_run_is_refused():
    import pytest

    with pytest.raises(SystemExit, match="did the run finish"):
        T.parse(LOG.rsplit("rc=", 1)[0])


def test_dag_minutes_merge_carries_the_stages_a_partial_rerun_did_not_run():
    """A rerun in which DVC found pretrain up to date logs only the later stages: the family's
    minutes still count pretrain, at its earlier measurement, and say so."""
    from dag_minutes import merge_family

    old = {"minutes": 13.0, "minutes_per_stage": {"pretrain": 10.0, "finetune": 3.0}, "measured": "2026-12-01"}
    new = {"minutes": 5.0, "minutes_per_stage": {"finetune": 5.0}, "measured": "2026-12-07", "note": "rerun"}
    got = merge_family(old, new)
    assert got["minutes"] == 15.0 and got["minutes_per_stage"] == {"finetune": 5.0, "pretrain": 10.0}
    assert got["carried"] == {"pretrain": "2026-12-01"} and got["measured"] == "2026-12-07"
    # carried again in a later partial rerun, a stage keeps the date it was measured
    again = merge_family(got, {**new, "measured": "2026-12-09"})
    assert again["carried"] == {"pretrain": "2026-12-01"}
    assert merge_family(None, new) == new and merge_family(old, {**new, "minutes_per_stage": {"pretrain": 9.0, "finetune": 1.0}})["minutes"] == 5.0


def test_dag_minutes_reads_make_runs_wall_clock_and_each_familys_span():
    """The wall clock of a `make run` (two stages side by side) is what it reports, and each
    family's span runs from its first stage line to its last, across midnight."""
    import pytest
    from dag_minutes import minutes, wall

    run = """\
23:50:00 retainrl: 3 stage(s) out of date: a_x, b_x, b_y; up to 2 at a time
23:50:05 [1/3] b_x  (0.0 min so far)
23:50:05 b_x | 23:50:05 INFO retainrl.core.stage: x[b] profile=default
23:50:06 a_x | 23:50:06 INFO retainrl.core.stage: x[a] profile=default
23:55:00 a_x | 23:55:00 INFO retainrl.core.stage: x[a] done in 294.0s
00:20:05 b_x | 00:20:05 INFO retainrl.core.stage: x[b] done in 1800.0s
00:20:07 b_y | 00:40:05 INFO retainrl.core.stage: y[b] done in 1198.0s
00:40:06 b_y | Updating lock file 'dvc.lock'
00:40:07 retainrl: done, 3 stage(s) ran in 50.1 min. Results: reports/index.md
"""
    got = wall(run)
    assert got == {"minutes": 50.1, "jobs": 2, "stages": 3, "span_minutes": {"a": 4.9, "b": 50.0},
                   "stage_span_minutes": {"a_x": 4.9, "b_x": 30.0, "b_y": 20.0}}
    matrix = run.replace("b_x |", "b_x@k1 |").replace("b_y |", "b_x@k2 |")  # items of one matrix stage count together
    assert wall(matrix)["stage_span_minutes"] == {"a_x": 4.9, "b_x": 50.0}
    assert minutes([]) == {}
    with pytest.raises(SystemExit, match="no finished `make run`"):
        wall(run.rsplit("\n", 2)[0])
    with pytest.raises(SystemExit, match="exactly one finished"):
        wall(run + run)
    long = ("23:50:00 retainrl: 1 stage(s) out of date: b_x; up to 2 at a time\n23:50:05 b_x | start\n10:00:05 b_x | x\n"
            "20:00:05 b_x | x\n05:50:05 b_x | end\n05:50:07 retainrl: done, 1 stage(s) ran in 1800.1 min.\n")
    assert wall(long)["span_minutes"] == {"b": 30 * 60.0}  # 23:50:05 → 10:00, 20:00 the next day → 05:50:05 the day after
