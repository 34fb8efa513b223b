"""End to end: each family's whole smoke DAG run by `make run`'s command (`dvc repro` behind it) in
a temporary copy of the repository (``smoke_repos`` in conftest.py: one copy per family, so the
two test workers build different families side by side)."""

import json
import sys
from functools import reduce
from operator import getitem

import pytest
import yaml

from conftest import run  # tests/ is on sys.path (pytest rootdir import mode)
from retainrl.core.family import family_names

pytestmark = pytest.mark.slow
FAMILIES = family_names()


def family_outs(repo, family: str) -> list[str]:
    """Every out that the family's dvc.yaml stages declare, with their matrices expanded."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    outs = []
    for name, st in stages.items():
        if not name.startswith(f"{family}_"):
            continue
        paths = [o if isinstance(o, str) else next(iter(o)) for o in st.get("outs", [])]
        if "matrix" not in st:
            outs += paths
            continue
        (key, values), = st["matrix"].items()
        if isinstance(values, str):  # "${apple.finetune.methods}": read from params.yaml, as DVC does
            values = reduce(getitem, values.strip("${}").split("."), params)
        outs += [p.replace(f"${{item.{key}}}", str(v)) for v in values for p in paths]
    return outs


@pytest.mark.parametrize("family", FAMILIES)
def test_make_run_says_where_it_is_and_where_the_results_are(smoke_repos, family):
    _, _, out = smoke_repos(family)
    first = out.splitlines()[0]
    n = int(first.split()[1])
    assert n >= 12 and "out of date" in first  # collect, pretrain, far_buffer, fisher, 6 finetunes, evaluate, report at least
    assert f"[1/{n}] " in out and f"[{n}/{n}] " in out and f"[{n + 1}/" not in out
    assert "Results: reports/index.md" in out.splitlines()[-1]


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_repro_makes_every_artifact(smoke_repos, family):
    repo, _, _ = smoke_repos(family)
    outs = family_outs(repo, family)
    assert len(outs) >= 12
    for rel in outs:
        path = repo / rel
        assert path.exists(), rel
        assert (path.stat().st_size > 0) if path.is_file() else any(path.iterdir()), rel
    assert not list(repo.glob("**/.*.tmp"))  # atomic writes left nothing behind
    CHECKS.get(family, lambda repo, params: None)(repo, yaml.safe_load((repo / "params.yaml").read_text()))


def _apple(repo, params):
    for rel in ("reports/apple/report/far_success.png", "reports/apple/report/forgetting_vs_M.png",
                "reports/apple/report/forgetting_vs_c.png"):
        assert (repo / rel).stat().st_size > 0, rel
    for method in params["apple"]["finetune"]["methods"]:
        assert (repo / f"models/apple/finetune/{method}/live/metrics.json").exists()
    m = json.loads((repo / "reports/apple/eval/metrics.json").read_text())
    assert m["pretrained"]["far"] > 0.9 and m["pretrained"]["close"] < 0.1  # the state coverage gap
    methods = m["methods"]
    assert methods["finetune"]["far_start"]["mean"] > 0.9
    assert methods["finetune"]["forgetting"]["mean"] > methods["bc"]["forgetting"]["mean"]
    sweep = json.loads((repo / "reports/apple/sweep_c/sweep.json").read_text())
    ft = {r["value"]: r["forgetting"]["mean"] for r in sweep if r["method"] == "finetune"}
    assert ft[min(ft)] > ft[max(ft)]  # forgetting shrinks with c


def _nethack(repo, params):
    """Demos (seeds + actions), π* as a sample-factory checkpoint, held-out FAR starts, every
    method's runs, the paired comparisons and the expert in the report."""
    assert list((repo / "models/nethack/pretrained/checkpoint_p0").glob("checkpoint_*.pth"))
    nh = params["nethack"]["finetune"]
    seeds = params["profiles"]["smoke"]["nethack"]["finetune"]["seeds"]
    for method in nh["methods"]:
        for k in range(seeds):
            run_dir = repo / f"models/nethack/finetune/{method}/seed_{k}"
            assert list((run_dir / "checkpoint_p0").glob("checkpoint_*.pth")), run_dir
            assert list((run_dir / "snapshots").glob("step_*.pth")) and (run_dir / "train_episodes.json").exists(), run_dir
    nh_metrics = json.loads((repo / "reports/nethack/eval/metrics.json").read_text())
    assert set(nh_metrics) == {"pretrained", "study", *nh["methods"]}
    report = (repo / "reports/nethack/report/report.md").read_text()
    assert all(f"| {m} |" in report for m in nh["methods"])
    # paired comparisons: score of every method vs π*, score and KL(π*‖π) of every retention method vs finetune, CLOSE and FAR
    summary = json.loads((repo / "reports/nethack/eval/summary.json").read_text())
    cmps = summary["comparisons"]
    retention = [m for m in nh["methods"] if m not in ("finetune", "scratch")]
    assert {(c["part"], c["a"], c["b"]) for c in cmps} == {
        (part, a, b) for part in ("close", "far")
        for a, b in [(m, "pretrained") for m in nh["methods"]] + [(m, "finetune") for m in retention]}
    assert all(c["ci_low"] <= c["diff"] <= c["ci_high"] and c["holm_m"] == len(cmps) for c in cmps)
    assert summary["far_starts"] == params["profiles"]["smoke"]["nethack"]["evaluate"]["episodes"]
    assert "Paired differences of the final policies" in report and "| FAR | KL |" in report and "too few episodes" in report  # smoke: 1 game
    assert "π* against its teacher on the same protocol" in report


def _montezuma(repo, params):
    route = json.loads((repo / "data/montezuma/demos/route.json").read_text())
    assert route["verified_by_replay"] and route["far"]
    m = json.loads((repo / "reports/montezuma/eval/metrics.json").read_text())
    assert set(m["methods"]) == set(params["montezuma"]["finetune"]["methods"])
    assert (repo / "reports/montezuma/search/timing.json").stat().st_size > 0


CHECKS = {"apple": _apple, "nethack": _nethack, "montezuma": _montezuma}


@pytest.mark.parametrize("family", FAMILIES)
def test_second_repro_is_a_no_op_and_dvc_reads_the_results(smoke_repos, family):
    repo, env, _ = smoke_repos(family)
    out = run([sys.executable, "-m", "dvc", "repro", f"{family}_report"], repo, env)
    assert "didn't change, skipping" in out or "is up to date" in out
    assert "Running stage" not in out
    status = run([sys.executable, "-m", "dvc", "status", "--with-deps", f"{family}_report"], repo, env)
    assert "up to date" in status
    metrics = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo, env)
    assert "forgetting" in metrics
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "--json"], repo, env)
    assert f"reports/{family}/eval/" in plots


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_reports_the_same_study_metrics_with_intervals(smoke_repos, family):
    """One set of names in `dvc metrics show` for every family and method (pipeline.study)."""
    from retainrl.pipeline.study import METRICS
    from retainrl.retention.methods import BASELINE

    repo, _, _ = smoke_repos(family)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    study = json.loads((repo / f"reports/{family}/eval/metrics.json").read_text())["study"]
    methods = params[family]["finetune"]["methods"]
    assert set(study) == set(methods)
    for method, stats in study.items():
        assert set(METRICS) <= set(stats), (family, method)
        for name in METRICS:
            assert stats[name]["ci_low"] <= stats[name]["mean"] <= stats[name]["ci_high"], (family, method, name)
        assert ("p_improvement" in stats) == (method != BASELINE)
    assert "The study's metrics" in (repo / f"reports/{family}/report/report.md").read_text()
