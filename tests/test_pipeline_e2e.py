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
    assert set(nh_metrics) == {"pretrained", "frozen", "study", "protocol", "paired", *nh["methods"]}
    assert nh_metrics["protocol"]["far_starts"] >= 1 and "pi_star_over_expert" in nh_metrics["protocol"]["expert"]["far"]
    report = (repo / "reports/nethack/report/report.md").read_text()
    assert all(f"| {m} |" in report for m in nh["methods"])
    # the committed coefficient sweep and 16-epoch control, in the report and in `dvc metrics`
    assert "## Retention that is not freezing: the coefficient sweep" in report and "## The control for the 16-epoch setting" in report
    probe_metrics = json.loads((repo / "reports/nethack/probes.json").read_text())
    assert probe_metrics["control"]["reading"] in report and probe_metrics["sweep"]["l2"]["chosen_coef"] is not None
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


def _robot(repo, params):
    """RoboticSequence's stage outputs, sized by the smoke profile: FAR-only demos that end in
    success, π*'s scores and critic fit, EM's memory and the BC buffer from FAR only, every
    method's curves and actor checkpoints, the evaluation's per-part rows and forward transfer."""
    import numpy as np

    from retainrl.core.config import load_params
    from retainrl.families.robot import stages as robot

    p = load_params(repo / "params.yaml", only="robot").section("robot")
    far = list(p.env.far_stages)
    stage_of = lambda obs: obs[:, -p.env.n_stages:].argmax(1)  # noqa: E731 — the stage one-hot ends the observation
    demos = np.load(repo / "data/robot/demos/demos.npz")
    assert demos["obs"].shape[1] == p.env.obs_dim and sorted(np.unique(demos["stage"])) == far
    assert demos["terminal"].sum() == len(np.unique(demos["episode"]))  # kept episodes all end in success
    scores = json.loads((repo / "models/robot/pretrained/scores.json").read_text())
    assert set(scores["success"]) == set(p.env.tasks)
    assert {"before", "monte_carlo", "td"} <= set(scores["critic_fit"]) and scores["critic_fit"]["held_out"] >= 1
    memory = np.load(repo / "models/robot/pretrained/memory.npz")
    assert memory["obs"].shape == (scores["memory"], p.env.obs_dim) == memory["next_obs"].shape
    assert 0 < scores["memory"] <= robot.memory_size(p) and sorted(set(stage_of(memory["obs"]))) == far
    buf = np.load(repo / "data/robot/far_buffer/far_buffer.npz")
    assert buf["obs"].shape == (p.far_buffer.size, p.env.obs_dim) and len(buf["targets"]) == p.far_buffer.size
    assert sorted(set(stage_of(buf["obs"]))) == far  # FAR states only
    steps = list(range(0, p.finetune.steps + 1, p.finetune.eval_every))
    for m in p.finetune.methods:
        c = np.load(repo / f"models/robot/finetune/{m}/curves.npz")
        assert c["step"].tolist() == steps and c["success"].shape == (p.finetune.seeds, len(p.env.tasks), len(steps))
        assert len(list((repo / f"models/robot/finetune/{m}/checkpoints").glob("actor_*.safetensors"))) == p.finetune.checkpoints
    ev = repo / "reports/robot/eval"
    summary, scalars = json.loads((ev / "summary.json").read_text()), json.loads((ev / "metrics.json").read_text())
    assert "per_seed" not in json.dumps(scalars) and "per_seed" in json.dumps(summary)
    rows = json.loads((ev / "far_success.json").read_text())
    assert [r["step"] for r in rows] == steps and {f"{m}/{t}" for m in p.finetune.methods for t in p.env.far} <= set(rows[0])
    close = [t for t in p.env.tasks if t not in p.env.far]
    assert {f"{m}/{t}" for m in p.finetune.methods for t in close} <= set(json.loads((ev / "close_success.json").read_text())[0])
    assert set(summary["methods"]) == set(p.finetune.methods)
    assert all("forgetting" in summary["methods"]["finetune"][t] for t in p.env.far)
    assert summary["methods"]["scratch"][p.env.far[0]]["forward_transfer"]["mean"] == pytest.approx(0.0, abs=1e-9)  # against itself
    assert "| em |" in (repo / "reports/robot/report/report.md").read_text()


CHECKS = {"apple": _apple, "nethack": _nethack, "montezuma": _montezuma, "robot": _robot}


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


@pytest.mark.parametrize("family", FAMILIES)
def test_the_study_claims_and_the_frozen_floor_reach_metrics_and_report(smoke_repos, family):
    """Every family's metrics carry frozen π*'s row (the noise floor: π* on the methods' checkpoint
    schedule and episodes; NetHack's is π*'s step-0 episodes, which its common random numbers
    replay exactly) and the study's claims, FT's against that floor; the report prints both."""
    repo, _, _ = smoke_repos(family)
    metrics = json.loads((repo / f"reports/{family}/eval/metrics.json").read_text())
    claims = metrics["study"]["finetune"]["claims"]["forgets"]
    assert claims["floor"] is True
    assert (claims["verdict"] == "too few seeds") == (claims["seeds"] < 2)  # smoke runs 1 or 2 seeds
    report = (repo / f"reports/{family}/report/report.md").read_text()
    assert "**The study vs ours.**" in report and "noise floor" in report
    f = metrics["frozen"]["forgetting"]
    assert f["ci_low"] <= f["mean"] <= f["ci_high"] and f["seeds"] == metrics["study"]["finetune"]["forgetting"]["seeds"]
    if family == "nethack":
        assert f["mean"] == 0.0  # a constant curve: start − min is 0 exactly
