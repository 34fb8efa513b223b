"""Is a killed-and-resumed NetHack fine-tuning run the run it would have been? (issue #21)

A default-profile ``nethack_finetune@<method>`` stage is SIGKILLed mid-run, resumed, and set against
the committed, uninterrupted run.

The kill-and-resume test (``tests/test_resume.py``) runs the smoke profile; this measures the real
thing. In a temporary clone that shares this repository's DVC cache (so π*, the FAR buffer and
the Fisher come from the committed lock), ``dvc repro --force -s nethack_finetune@<method>`` runs on the
default profile with ``nethack.checkpoint.every_s`` lowered (no stage depends on it: it changes
when sample-factory saves, not what it computes), and is SIGKILLed as a process group once every
seed running side by side has a checkpoint past ``--kill-after`` env steps. The rerun resumes them
and runs the seeds not begun; then

* each seed's summary (env steps, actor updates, retention coefficient, training episodes) and
  snapshot schedule are compared with the committed, uninterrupted run in ``models/nethack/finetune``;
* a seed that was not running at the kill must come out bit for bit (its final snapshot's sha256);
* the resumed final snapshots play the evaluate stage's protocol (same CLOSE games, same held-out
  FAR starts, same sampling streams: ``results.play_all``) and are set against the committed
  run's final episodes in ``reports/nethack/eval/episodes.json``: the paired bootstrap difference,
  clustered by game/start state, of the score and of KL(π*‖π), resumed − uninterrupted. A resume
  that loses nothing has intervals around 0 (the games restart at the resume point, so the runs are
  statistically, not bitwise, the same).

    python experiments/nethack_resume_check.py [--method finetune] [--every-s 45] [--kill-after 4096]

Writes experiments/results/nethack_resume_check.json. About 10 min on 2 cores (the stage twice, in part,
and 3 policies evaluated).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import yaml

from retainrl.core.log import setup_logging

log = logging.getLogger("nethack_resume_check")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "nethack_resume_check.json"
SUMMARY_KEYS = ("env_steps", "actor_updates", "coef", "seed", "train_episodes")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def make_clone(tmp: Path, every_s: float) -> Path:
    """A clone of HEAD on this repository's DVC cache, with the stage's inputs checked out."""
    repo = tmp / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    subprocess.run(_dvc("cache", "dir", "--local", str(ROOT / ".dvc" / "cache")), cwd=repo, check=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["nethack"]["checkpoint"]["every_s"] = every_s
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for out in ("data/nethack/demos", "data/nethack/eval_starts", "models/nethack/pretrained",
                "data/nethack/far_buffer", "data/nethack/fisher"):
        subprocess.run(_dvc("checkout", "-q", out), cwd=repo, check=True)
    return repo


def kill_when_resumable(repo: Path, stage: str, kill_after: int, parallel: int, timeout_s: float = 1800) -> dict:
    """Start ``dvc repro`` of ``stage``; SIGKILL its process group once ``parallel`` seeds each have a
    sample-factory checkpoint past ``kill_after`` env steps. Returns what had been written."""
    root = repo / ".checkpoints" / stage
    proc = subprocess.Popen(_dvc("repro", "--force", "-s", stage), cwd=repo, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{stage} finished before it could be killed: lower --kill-after or --every-s")
        if time.monotonic() - t0 > timeout_s:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"{stage}: no resumable checkpoints after {timeout_s:.0f} s")
        points = {}
        for f in root.glob("*/seed_*/checkpoint_p0/checkpoint_*_*.pth"):
            steps = int(f.stem.split("_")[-1])
            seed = f.parent.parent.name
            points[seed] = max(points.get(seed, 0), steps)
        if sum(s > kill_after for s in points.values()) >= parallel:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.parent.name for p in root.glob("*/seed_*/retention.json"))
    log.info("killed %s after %.0f s: checkpoints at %s, finished %s", stage, time.monotonic() - t0, points, finished)
    return {"killed_after_s": round(time.monotonic() - t0, 1), "checkpoint_env_steps": points, "finished_at_kill": finished}


def seed_summaries(out: Path) -> list[dict]:
    res = []
    for d in sorted(out.glob("seed_*"), key=lambda d: int(d.name.split("_")[1])):
        snaps = sorted((d / "snapshots").glob("step_*.pth"))
        summary = json.loads((d / "retention.json").read_text())
        res.append({"dir": str(d), "final": str(snaps[-1]), "snapshots": [s.name for s in snaps],
                    "final_sha256": _sha(snaps[-1]), **{k: summary[k] for k in SUMMARY_KEYS}})
    return res


def evaluate_finals(runs: list[dict]) -> dict[str, np.ndarray]:
    """The evaluate stage's protocol on each seed's final snapshot: {part_metric: (seeds, episodes)}."""
    from retainrl.core.config import load_params
    from retainrl.core.paths import Paths
    from retainrl.families.nethack.results import PARTS, play_all

    p = load_params(ROOT / "params.yaml", only="nethack").section("nethack")
    cwd = os.getcwd()
    os.chdir(ROOT)  # π* and the held-out starts: this checkout's, the same bytes as the clone's
    try:
        jobs = [((r["dir"], r["final"]), k) for k, r in enumerate(runs)]
        played = list(play_all(p, Paths("nethack"), jobs))
    finally:
        os.chdir(cwd)
    return {f"{part}_{key}": np.asarray([[e[key] for e in res[part]] for res in played], float)
            for part in PARTS for key in ("score_gain", "kl_pi_star")}


def committed_finals(method: str) -> dict[str, np.ndarray]:
    from retainrl.families.nethack.results import PARTS, final_episodes

    rows = json.loads((ROOT / "reports" / "nethack" / "eval" / "episodes.json").read_text())
    return {f"{part}_{key}": final_episodes(rows, method, part, key) for part in PARTS for key in ("score_gain", "kl_pi_star")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="finetune")
    ap.add_argument("--every-s", type=float, default=45.0, help="sample-factory's checkpoint interval in the clone")
    ap.add_argument("--kill-after", type=int, default=4096, help="kill once the running seeds have a checkpoint past this")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="what this run checks (kept in the result file)")
    args = ap.parse_args(argv)
    setup_logging()
    from retainrl.core.artifacts import save_json
    from retainrl.core.config import load_params
    from retainrl.families.nethack.games import cpu_cores
    from retainrl.pipeline.stats import paired_difference

    ft = load_params(ROOT / "params.yaml", only="nethack").section("nethack").finetune
    parallel = 1 if ft.workers > 1 else min(ft.seeds, ft.processes or cpu_cores())
    stage = f"nethack_finetune@{args.method}"
    ref_out = ROOT / "models" / "nethack" / "finetune" / args.method
    ref = seed_summaries(ref_out)
    tmp = Path(tempfile.mkdtemp(prefix="nethack_resume_"))
    try:
        repo = make_clone(tmp, args.every_s)
        t0 = time.monotonic()
        kill = kill_when_resumable(repo, stage, args.kill_after, parallel)
        t1 = time.monotonic()
        res = subprocess.run(_dvc("repro", "--force", "-s", stage), cwd=repo, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"the rerun of {stage} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        logged = res.stdout + res.stderr
        rerun_s = time.monotonic() - t1
        resumed_seeds = logged.count("resuming the APPO run")
        got = seed_summaries(repo / "models" / "nethack" / "finetune" / args.method)
        if resumed_seeds == 0:
            raise SystemExit(f"the rerun resumed nothing:\n{logged[-3000:]}")
        log.info("rerun: %.0f s, %d seeds resumed; evaluating the final snapshots", rerun_s, resumed_seeds)
        mine = evaluate_finals(got)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    theirs = committed_finals(args.method)
    running = set(kill["checkpoint_env_steps"])
    seeds = []
    for k, (a, b) in enumerate(zip(got, ref)):
        row = {"seed_index": k, "resumed": f"seed_{k}" in running,
               "resume_point_env_steps": kill["checkpoint_env_steps"].get(f"seed_{k}"),
               "same_snapshot_schedule": a["snapshots"] == b["snapshots"],
               "final_bit_for_bit": a["final_sha256"] == b["final_sha256"]}
        for key in SUMMARY_KEYS:
            row[key] = {"resumed_run": a[key], "uninterrupted": b[key]}
        for key, arr in mine.items():
            row[key] = {"resumed_run": float(arr[k].mean()), "uninterrupted": float(theirs[key][k].mean())}
        seeds.append(row)
    # Only the seeds that were killed and resumed are compared (the others must be bit for bit).
    idx = [r["seed_index"] for r in seeds if r["resumed"]]
    diffs = {key: paired_difference(mine[key][idx], theirs[key][idx]) for key in mine}
    result = {
        "what": __doc__.splitlines()[0], "measured": str(date.today()), "note": args.note,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "method": args.method,
        "stage": stage, "profile": "default (nethack.checkpoint.every_s lowered to %g in the clone)" % args.every_s,
        "kill": kill, "rerun_s": round(rerun_s, 1), "first_run_s": round(t1 - t0, 1), "seeds": seeds,
        "resumed_minus_uninterrupted": diffs,
        # the scale a difference would have to reach to matter: the uninterrupted run's seed-to-seed spread
        "uninterrupted_seed_std": {key: float(theirs[key].mean(axis=1).std()) for key in theirs},
        "not_resumed_bit_for_bit": all(r["final_bit_for_bit"] for r in seeds if not r["resumed"]),
    }
    save_json(args.out, result)  # atomic
    for key, d in diffs.items():
        log.info("%s resumed − uninterrupted: %+.3f [%+.3f, %+.3f]", key, d["diff"], d["ci_low"], d["ci_high"])
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
