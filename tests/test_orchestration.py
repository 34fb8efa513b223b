"""The scheduling order `make run` and the Prefect flow share (retainrl.orchestration.dag)."""

import json
from pathlib import Path

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
    assert order[:2] == ["x_demos", "x_pretrain"]  # x's chain (57 min) before a's (5), though dvc.yaml lists a first
    assert order.index("a_demos") < order.index("a_pretrain")  # a_demos costs 0: the tie keeps the upstream first
    for name, ups in EDGES.items():
        assert all(order.index(u) < order.index(name) for u in ups), name
    # Without hints every stage costs 1: the deepest chains first, dvc.yaml's order between equals.
    assert d.critical_order(d.stage_costs(tmp_path / "missing.json"))[:2] == ["a_demos", "x_demos"]
