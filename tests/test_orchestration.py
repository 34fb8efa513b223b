"""The scheduling order `make run` and the Prefect flow share (retainrl.orchestration.dag)."""

import json
from pathlib import Path

import pytest

from retainrl.orchestration.dag import Dag, StageInfo


def dag(tmp_path: Path, edges: dict[str, tuple[str, ...]]) -> Dag:
    d = Dag(tmp_path)
    for name, ups in edges.items():  # given in a topological order
        d.stages[name] = StageInfo(name, "true", str(tmp_path), (), (), ups)
    return d


# A long family (x: demos → pretrain → 2 finetunes → evaluate) and a short one (a), the short one
# first in topological order, as dvc.yaml happens to list it.
EDGES = {"a_demos": (), "x_demos": (), "a_pretrain": ("a_demos",), "x_pretrain": ("x_demos",),
         "a_finetune@m": ("a_pretrain",), "x_finetune@m": ("x_pretrain",), "x_finetune@n": ("x_pretrain",),
         "a_evaluate": ("a_finetune@m",), "x_evaluate": ("x_finetune@m", "x_finetune@n")}
HINTS = {"families": {"x": {"minutes_per_stage": {"demos": 2.0, "pretrain": 20.0, "finetune": 30.0, "evaluate": 10.0}},
                      "a": {"minutes_per_stage": {"demos": 0.0, "pretrain": 1.0, "finetune": 3.0, "evaluate": 1.0}}}}


def test_costs_come_from_the_measured_minutes_split_over_a_matrix(tmp_path):
    d = dag(tmp_path, EDGES)
    (tmp_path / "hints.json").write_text(json.dumps(HINTS))
    costs = d.stage_costs(tmp_path / "hints.json")
    assert costs["x_finetune@m"] == costs["x_finetune@n"] == 15.0  # 30 min over the group's two items
    assert costs["a_demos"] == 0.0 and costs["x_pretrain"] == 20.0
    assert d.stage_costs(tmp_path / "missing.json") == {n: 1.0 for n in EDGES}  # no hints: 1 min each


def test_the_longest_chain_starts_first_and_no_stage_precedes_its_upstream(tmp_path):
    d = dag(tmp_path, EDGES)
    (tmp_path / "hints.json").write_text(json.dumps(HINTS))
    order = d.critical_order(d.stage_costs(tmp_path / "hints.json"))
    assert order[:2] == ["x_demos", "x_pretrain"]  # x's chain (47 min) before a's (5), though dvc.yaml lists a first
    assert order.index("a_demos") < order.index("a_pretrain")  # a_demos costs 0: the tie keeps the upstream first
    for name, ups in EDGES.items():
        assert all(order.index(u) < order.index(name) for u in ups), name
    # Without hints every stage costs 1: the deepest chains first, dvc.yaml's order between equals.
    assert d.critical_order(d.stage_costs(tmp_path / "missing.json"))[:2] == ["a_demos", "x_demos"]


FAKE_DVC = r'''
import json, os, sys, time
name = sys.argv[-1]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(name + "\n")
what = json.loads(open(os.environ["FAKE_PLAN"]).read()).get(name, "run")
if what == "meet":  # wait until the other "meet" stage has started too: proof that they run side by side
    deadline = time.time() + 60
    while sum(1 for n in open(os.environ["FAKE_CALLS"]).read().split() if n.endswith("_demos")) < 2:
        if time.time() > deadline:
            sys.exit(9)
        time.sleep(0.05)
    what = "run"
if what == "same":
    print(f"Stage '{name}' didn't change, skipping")
elif what == "cached":
    print(f"Stage '{name}' is cached - skipping run, checking out outputs")
else:
    print(f"Running stage '{name}':")
sys.exit(3 if what == "fail" else 0)
'''


def run_fake(tmp_path, monkeypatch, stale: set[str], plan: dict[str, str], jobs: int = 2) -> tuple[int, list[str]]:
    """``run_dag`` over :data:`EDGES` with a fake ``dvc`` that does what ``plan`` says per stage."""
    import sys

    from retainrl.orchestration.run import Progress, run_dag

    fake, calls, plan_file = tmp_path / "fake_dvc.py", tmp_path / "calls.txt", tmp_path / "plan.json"
    fake.write_text(FAKE_DVC)
    calls.write_text("")
    plan_file.write_text(json.dumps(plan))
    hints = tmp_path / "benchmarks" / "results" / "dag_default.json"  # the default hints: x's chain is the longest
    hints.parent.mkdir(parents=True, exist_ok=True)
    hints.write_text(json.dumps(HINTS))
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("FAKE_PLAN", str(plan_file))
    rc = run_dag([sys.executable, str(fake)], dag(tmp_path, EDGES), jobs, Progress(len(stale)), stale)
    return rc, calls.read_text().split()


def test_make_run_remakes_downstream_only_of_what_may_have_changed(tmp_path, monkeypatch):
    # x_pretrain is stale and restored from DVC's run cache: its outputs may differ, so both
    # finetunes run; they come out unchanged, so x_evaluate is not even asked; a is up to date.
    rc, calls = run_fake(tmp_path, monkeypatch, {"x_pretrain"},
                         {"x_pretrain": "cached", "x_finetune@m": "same", "x_finetune@n": "same"})
    assert rc == 0 and sorted(calls) == ["x_finetune@m", "x_finetune@n", "x_pretrain"]
    rc, calls = run_fake(tmp_path, monkeypatch, {"x_demos"}, {"x_demos": "run"})
    assert rc == 0 and calls[:1] == ["x_demos"] and set(calls) == {n for n in EDGES if n.startswith("x_")}
    assert calls.index("x_evaluate") == len(calls) - 1  # after both finetunes


def test_make_run_stops_starting_stages_after_a_failure_and_returns_its_status(tmp_path, monkeypatch):
    rc, calls = run_fake(tmp_path, monkeypatch, set(EDGES), {"x_pretrain": "fail"}, jobs=1)
    assert rc == 3
    assert calls == ["x_demos", "x_pretrain"]  # jobs 1, longest chain first: nothing after the failure


def test_make_run_runs_independent_stages_side_by_side(tmp_path, monkeypatch):
    rc, calls = run_fake(tmp_path, monkeypatch, {"a_demos", "x_demos"}, {"a_demos": "meet", "x_demos": "meet"})
    assert rc == 0 and set(calls[:2]) == {"a_demos", "x_demos"}  # each waited for the other to start (exit 9 if not)


def test_a_malformed_hints_file_orders_nothing_and_breaks_nothing(tmp_path):
    d = dag(tmp_path, EDGES)
    for bad in ("[1, 2]", '{"families": [1]}', '{"families": {"x": 3}}', '{"families": {"x": {"minutes_per_stage": null}}}',
                '{"families": {"x": {"minutes_per_stage": {"pretrain": NaN, "demos": -5, "finetune": true}}}}', "not json"):
        (tmp_path / "hints.json").write_text(bad)
        assert d.stage_costs(tmp_path / "hints.json") == {n: 1.0 for n in EDGES}, bad


def test_dvc_status_parsing_is_shared_and_strict():
    """`make run` and the Prefect flow read `dvc status --json` through one parser: a warning line
    before the JSON is skipped, `{}` is "up to date", and output with no JSON object is an error."""
    from retainrl.orchestration.dvcstatus import parse_status

    assert parse_status('WARNING: something\n{"a": [{"changed deps": {}}]}') == {"a": [{"changed deps": {}}]}
    assert parse_status("{}\n") == {}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_status("ERROR: unexpected error\n")
    with pytest.raises(ValueError):  # a truncated object (json's own error is a ValueError)
        parse_status('{"a": [')


def test_flow_changed_raises_on_unreadable_status(monkeypatch, tmp_path):
    """The flow's `changed` used to take status output without JSON as "nothing changed"."""
    import subprocess

    from flows import dvcops

    monkeypatch.setattr(dvcops, "dvc", lambda *a, **k: subprocess.CompletedProcess([], 0, stdout="oops\n", stderr=""))
    with pytest.raises(dvcops.DvcError, match="no JSON object"):
        dvcops.changed(tmp_path, ["stage_a"])
    monkeypatch.setattr(dvcops, "dvc", lambda *a, **k: subprocess.CompletedProcess([], 0, stdout='{"stage_a": []}', stderr=""))
    assert dvcops.changed(tmp_path, ["stage_a", "stage_b"]) == {"stage_a"}
