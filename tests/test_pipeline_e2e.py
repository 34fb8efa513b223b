"""End to end: `dvc repro` on the smoke profile in a temporary copy of the repository."""

import json
import sys

import pytest
import yaml

from conftest import run  # tests/ is on sys.path (pytest rootdir import mode)
from retainrl.core.family import family_names

pytestmark = pytest.mark.slow


def test_make_run_says_where_it_is_and_where_the_results_are(smoke_repo):
    _, _, out = smoke_repo
    first = out.splitlines()[0]
    n = int(first.split()[1])
    assert n > 20 and "out of date" in first
    assert f"[1/{n}] " in out and f"[{n}/{n}] " in out
    assert "Results: reports/index.md" in out.splitlines()[-1]


def test_smoke_repro_makes_every_artifact(smoke_repo):
    repo, _, _ = smoke_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for rel in ("data/apple/demos/demos.npz", "models/apple/pretrained/policy.safetensors", "data/apple/far_buffer/far_buffer.npz",
                "data/apple/fisher/fisher.safetensors", "reports/apple/report/report.md", "reports/apple/report/far_success.png",
                "reports/apple/report/forgetting_vs_M.png", "reports/apple/report/forgetting_vs_c.png"):
        assert (repo / rel).stat().st_size > 0, rel
    for method in params["apple"]["finetune"]["methods"]:
        assert (repo / f"models/apple/finetune/{method}/curves.npz").exists()
        assert (repo / f"models/apple/finetune/{method}/live/metrics.json").exists()
    # NetHack: demos (seeds + actions), π* as a sample-factory checkpoint, every method's runs, the report.
    for rel in ("data/nethack/demos/games.npz", "data/nethack/far_buffer/buffer.npz", "data/nethack/fisher/fisher.safetensors",
                "models/nethack/pretrained/config.json", "reports/nethack/eval/metrics.json", "reports/nethack/eval/close_score.json",
                "reports/nethack/eval/far_score.json", "reports/nethack/report/report.md", "reports/nethack/report/close_score.png",
                "reports/nethack/report/far_score.png"):
        assert (repo / rel).stat().st_size > 0, rel
    assert list((repo / "models/nethack/pretrained/checkpoint_p0").glob("checkpoint_*.pth"))
    nh = params["nethack"]["finetune"]
    seeds = params["profiles"]["smoke"]["nethack"]["finetune"]["seeds"]
    for method in nh["methods"]:
        for k in range(seeds):
            run = repo / f"models/nethack/finetune/{method}/seed_{k}"
            assert list((run / "checkpoint_p0").glob("checkpoint_*.pth")), run
            assert list((run / "snapshots").glob("step_*.pth")) and (run / "train_episodes.json").exists(), run
    nh_metrics = json.loads((repo / "reports/nethack/eval/metrics.json").read_text())
    assert set(nh_metrics) == {"pretrained", "study", *nh["methods"]}
    report = (repo / "reports/nethack/report/report.md").read_text()
    assert all(f"| {m} |" in report for m in nh["methods"])
    # paired comparisons: score of every method vs π*, score and KL(π*‖π) of every retention method vs finetune, CLOSE and FAR
    cmps = json.loads((repo / "reports/nethack/eval/summary.json").read_text())["comparisons"]
    retention = [m for m in nh["methods"] if m not in ("finetune", "scratch")]
    assert {(c["part"], c["a"], c["b"]) for c in cmps} == {
        (part, a, b) for part in ("close", "far")
        for a, b in [(m, "pretrained") for m in nh["methods"]] + [(m, "finetune") for m in retention]}
    assert all(c["ci_low"] <= c["diff"] <= c["ci_high"] for c in cmps)
    assert "Paired differences of the final policies" in report and "| FAR | KL |" in report and "too few episodes" in report  # smoke: 1 game
    # No temporary leftovers anywhere.
    assert not list(repo.glob("**/.*.tmp"))


def test_smoke_repro_makes_the_montezuma_artifacts(smoke_repo):
    repo, _, _ = smoke_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for rel in ("data/montezuma/demos/demos.npz", "data/montezuma/demos/route.json", "models/montezuma/pretrained/policy.safetensors",
                "models/montezuma/pretrained/scores.json", "data/montezuma/far_buffer/buffer.npz", "data/montezuma/fisher/fisher.safetensors",
                "reports/montezuma/eval/summary.json", "reports/montezuma/eval/metrics.json", "reports/montezuma/eval/boundary_success.json",
                "reports/montezuma/report/report.md", "reports/montezuma/report/boundary_success.png", "reports/montezuma/search/timing.json"):
        assert (repo / rel).stat().st_size > 0, rel
    for method in params["montezuma"]["finetune"]["methods"]:
        assert (repo / f"models/montezuma/finetune/{method}/curves.json").exists()
    route = json.loads((repo / "data/montezuma/demos/route.json").read_text())
    assert route["verified_by_replay"] and route["far"]
    m = json.loads((repo / "reports/montezuma/eval/metrics.json").read_text())
    assert set(m["methods"]) == set(params["montezuma"]["finetune"]["methods"])


def test_smoke_metrics_make_sense(smoke_repo):
    repo, _, _ = smoke_repo
    m = json.loads((repo / "reports/apple/eval/metrics.json").read_text())
    assert m["pretrained"]["far"] > 0.9 and m["pretrained"]["close"] < 0.1  # the state coverage gap
    methods = m["methods"]
    for name, stats in methods.items():
        assert 0.0 <= stats["forgetting"]["mean"] <= 1.0, name
    assert methods["finetune"]["far_start"]["mean"] > 0.9
    assert methods["finetune"]["forgetting"]["mean"] > methods["bc"]["forgetting"]["mean"]
    sweep = json.loads((repo / "reports/apple/sweep_c/sweep.json").read_text())
    ft = {r["value"]: r["forgetting"]["mean"] for r in sweep if r["method"] == "finetune"}
    assert ft[min(ft)] > ft[max(ft)]  # forgetting shrinks with c


def test_second_repro_is_a_no_op_and_dvc_reads_the_results(smoke_repo):
    repo, env, _ = smoke_repo
    out = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "didn't change, skipping" in out or "is up to date" in out
    assert "Running stage" not in out
    status = run([sys.executable, "-m", "dvc", "status"], repo, env)
    assert "up to date" in status
    metrics = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo, env)
    assert "forgetting" in metrics
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "--json"], repo, env)
    assert "far_success.json" in plots


@pytest.mark.parametrize("family", family_names())
def test_every_family_reports_the_same_study_metrics_with_intervals(smoke_repo, family):
    """One set of names in `dvc metrics show` for every family and method (pipeline.study)."""
    from retainrl.pipeline.study import METRICS
    from retainrl.retention.methods import BASELINE

    repo, _, _ = smoke_repo
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
