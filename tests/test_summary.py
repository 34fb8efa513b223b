"""README's results and reports/index.md are generated from the committed metrics, never typed."""

import json
import shutil

from retainrl.pipeline import summary


def test_readme_results_block_matches_the_committed_metrics(root):
    text = (root / "README.md").read_text()
    start, end = text.index(summary.BEGIN) + len(summary.BEGIN), text.index(summary.END)
    assert text[start:end].strip() == summary.results_block(root).strip(), "run: python -m retainrl.pipeline.summary --readme"


def test_readme_performance_block_matches_the_committed_benchmarks(root):
    text = (root / "README.md").read_text()
    start, end = text.index(summary.PERF_BEGIN) + len(summary.PERF_BEGIN), text.index(summary.PERF_END)
    assert text[start:end].strip() == summary.performance_block(root).strip(), "run: python -m retainrl.pipeline.summary --readme"


def test_index_page_matches_the_committed_metrics(root, tmp_path):
    for f in root.glob("reports/*/eval/metrics.json"):
        (tmp_path / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / f.relative_to(root))
    made = summary.write_index(tmp_path).read_text()
    assert (root / "reports" / "index.md").read_text() == made, "run: python -m retainrl.pipeline.summary"


def test_verdict_reads_the_probability_of_improvement(tmp_path):
    assert summary.improvement_verdict({"mean": 0.9, "ci_low": 0.6, "ci_high": 1.0}) == "shown"
    assert summary.improvement_verdict({"mean": 0.7, "ci_low": 0.4, "ci_high": 1.0}) == "leaning"
    assert summary.improvement_verdict({"mean": 0.3, "ci_low": 0.0, "ci_high": 0.6}) == "not shown"
    stat = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "seeds": 3}
    row = {k: stat for k in ("forgetting", "far_final", "full_final", "forward_transfer")}
    (tmp_path / "reports/apple/eval").mkdir(parents=True)
    (tmp_path / "reports/apple/eval/metrics.json").write_text(json.dumps({"study": {"finetune": row, "bc": {**row, "p_improvement": stat}}}))
    block = summary.results_block(tmp_path)
    assert "| bc | 0.50 [0.40, 0.60] |" in block and "| not shown |" in block
    assert "no evaluation yet" in block  # the other families, not evaluated in this tree


def test_each_family_line_names_its_frozen_floor_or_says_it_has_none(tmp_path):
    stat = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "seeds": 3}
    row = {k: stat for k in ("forgetting", "far_final", "full_final", "forward_transfer")}
    for family, extra in (("apple", {}), ("minigrid", {"frozen": {"forgetting": {"mean": 0.04, "ci_low": 0.02, "ci_high": 0.07}}})):
        (tmp_path / f"reports/{family}/eval").mkdir(parents=True)
        (tmp_path / f"reports/{family}/eval/metrics.json").write_text(json.dumps({"study": {"finetune": row}, **extra}))
    lines = {ln.split("**")[1]: ln for ln in summary.results_block(tmp_path).splitlines() if ln.startswith("**")}
    assert "frozen-π* forgetting (noise floor) 0.04 [0.02, 0.07]" in lines[summary.family_meta("minigrid")["name"]]
    assert "no frozen-π* floor yet" in lines[summary.family_meta("apple")["name"]]


def test_readme_is_a_short_entry_page(root):
    """The README is the entry page (two commands, results, where next); detail lives in docs/."""
    lines = (root / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    assert lines[2].strip().startswith("make run") and lines[3].strip().startswith("make test")
    from retainrl.core.family import family_names

    for family in family_names():
        assert (root / "docs" / f"{family}.md").exists(), family


def test_test_suite_minutes_join_the_dag_minutes_paragraph(tmp_path):
    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    (res / "test_suite.json").write_text(json.dumps({"idle": {"total_minutes": 27.6, "setup_minutes": 3.2, "pytest_minutes": 24.3,
                                                              "passed": 375, "note": "nothing beside it"}}))
    alone = summary.performance_block(tmp_path).splitlines()
    assert alone[-1] == ("A fresh clone's `make test` (`benchmarks/results/test_suite.json`), idle: 27.6 min "
                         "(3.2 set-up + 24.3 tests, 375 passed; nothing beside it).") and alone[-2] == ""
    (res / "dag_default.json").write_text(json.dumps({"total_minutes": 6.2, "families": {}}))
    block = summary.performance_block(tmp_path).splitlines()
    assert block[-1].startswith("Compute minutes (each stage's own time, summed): 6.2 in all") and block[-1].endswith(alone[-1])
    fam = {"minutes": 3.1, "measured": "2026-12-07", "note": "idle"}
    (res / "dag_default.json").write_text(json.dumps({"total_minutes": 6.2, "families": {"apple": fam, "minigrid": fam},
                                                      "wall": {"minutes": 4.0, "jobs": 2, "stages": 9, "measured": "2026-12-07",
                                                               "note": "idle", "span_minutes": {"apple": 1.5, "minigrid": 3.9}}}))
    line = summary.performance_block(tmp_path).splitlines()[-1]
    assert line.startswith("The default-profile DAG by `make run`: 4 min wall clock with 2 stages at a time")
    assert "first to last stage: AppleRetrieval 1.5, MiniGrid RoomChain 3.9" in line
    assert "AppleRetrieval 3.1, MiniGrid RoomChain 3.1 (measured 2026-12-07: idle)" in line  # one shared note, said once


def test_the_claims_matrix_groups_each_familys_methods_by_verdict(tmp_path):
    stat = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "seeds": 3}
    row = {k: stat for k in ("forgetting", "far_final", "full_final", "forward_transfer")}

    def claim(verdict):
        return {"diff": 0.3, "ci_low": 0.1, "ci_high": 0.5, "p_value": 0.01, "p_holm": 0.03, "direction": 1,
                "seeds": 3, "seeds_against": 3, "verdict": verdict}

    study = {"finetune": {**row, "claims": {"forgets": {**claim("shown"), "diff": -0.3, "direction": -1}}},
             "bc": {**row, "claims": {"forgets_less": claim("shown"), "beats_finetune": claim("leaning"), "beats_scratch": claim("shown")}},
             "l2": {**row, "claims": {"forgets_less": claim("not shown"), "beats_finetune": claim("shown"), "beats_scratch": claim("shown")}},
             "scratch": row}
    (tmp_path / "reports/apple/eval").mkdir(parents=True)
    (tmp_path / "reports/apple/eval/metrics.json").write_text(json.dumps({"study": study}))
    matrix = summary.claims_matrix(tmp_path)
    apple = next(ln for ln in matrix if ln.startswith(f"| {summary.family_meta('apple')['name']} |"))
    assert apple.split(" | ")[1:] == ["shown", "shown: bc; not shown: l2", "shown: l2; leaning: bc", "shown: bc, l2 |"]
    other = next(ln for ln in matrix if ln.startswith(f"| {summary.family_meta('minigrid')['name']} |"))
    assert "not tested yet" in other
    page = summary.results_block(tmp_path, claims=True)
    forgets = "| vanilla fine-tuning forgets: FAR dips during fine-tuning (forgetting − the frozen-π* floor's; − 0 where the family has no floor) | − | -0.30 [+0.10, +0.50] | 0.030 | shown |"
    assert forgets in page  # the family's whole table on the summary page
    assert forgets not in summary.results_block(tmp_path)  # README: the matrix only
