"""Running one stage on a machine that does not share the orchestrator's disk (dask workers).

A worker gets no files from the orchestrator's workspace. It gets a *work order*: the git URL
and commit of the project, the uncommitted diff of tracked files (params.yaml edits…), the
orchestrator's dvc.lock plus the lock entries of the upstream stages that just ran, and the
DVC remote's config. It then

1. clones the project at that commit into a scratch directory and applies the diff,
2. ``dvc pull``s the outputs of the direct upstream stages from the remote,
3. runs ``dvc repro --single-item STAGE`` there (its own workspace, so no lock contention),
4. ``dvc push``es the stage's outputs to the remote and returns the new dvc.lock entry.

The orchestrator writes the returned entries into its dvc.lock and pulls the outputs, so its
workspace ends exactly as after a local ``dvc repro``. Artifacts travel only through the DVC
remote (a local directory by default; S3/GCS/… for a real cluster).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from flows.dvcops import DvcError, bin_env, default_remote, run_command


def work_order(root: Path, remote: str | None, git_url: str | None) -> dict:
    """Everything a worker needs to rebuild the orchestrator's workspace (minus DVC outputs)."""
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        if res.returncode != 0:
            raise DvcError(f"distributed mode needs a git repository with at least one commit: `git {' '.join(args)}` "
                           f"failed in {root}: {res.stderr.strip()}")
        return res.stdout

    sha = git("rev-parse", "HEAD").strip()
    diff = git("diff", "--binary", "HEAD", "--", ".", ":(exclude)dvc.lock")
    untracked = [p for p in git("ls-files", "--others", "--exclude-standard").splitlines() if p]
    if untracked:
        raise DvcError(f"distributed mode: workers clone the git commit, but these files are untracked: {untracked[:5]} "
                       "(commit or ignore them)")
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        remotes = dict(repo.config["remote"])
        name = remote or repo.config["core"].get("remote")
    if not name:
        raise DvcError("distributed mode exchanges artifacts through a DVC remote: configure one "
                       "(`dvc remote add -d NAME URL`) or pass --remote")
    if name not in remotes:
        raise DvcError(f"DVC remote {name!r} does not exist; configured remotes: {sorted(remotes) or 'none'}")
    conf = {k: str(v) for k, v in remotes[name].items()}
    lock = (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else ""
    return {"git_url": git_url or str(root), "sha": sha, "diff": diff, "lock": lock, "remote": [name, conf]}


def _config_local(name: str, conf: dict) -> str:
    lines = ["[core]", f"    remote = {name}", f"['remote \"{name}\"']"]
    lines += [f"    {k} = {v}" for k, v in conf.items()]
    return "\n".join(lines) + "\n"


def run_remote(order: dict, stage: str, upstream: dict[str, dict], recheck: bool, emit: Callable[[str], None]) -> dict:
    """Execute ``stage`` in a fresh clone; returns {"ran": bool, "lock": entry|None}."""
    work = Path(tempfile.mkdtemp(prefix="retainrl-stage-"))
    try:
        def sh(*argv: str, cwd: Path = work) -> str:
            res = subprocess.run(list(argv), cwd=cwd, env=bin_env(), capture_output=True, text=True)
            if res.returncode != 0:
                raise DvcError(f"`{' '.join(argv[:4])}…` failed on the worker: {(res.stderr or res.stdout).strip()[-2000:]}")
            return res.stdout

        sh("git", "clone", "-q", "--no-checkout", order["git_url"], str(work))
        sh("git", "checkout", "-q", order["sha"])
        if order["diff"]:
            subprocess.run(["git", "apply", "--binary", "-"], cwd=work, input=order["diff"], text=True, check=True)
        lock = yaml.safe_load(order["lock"]) if order["lock"] else None
        lock = lock or {"schema": "2.0", "stages": {}}
        for name, res in upstream.items():
            if res.get("lock"):
                lock["stages"][name] = res["lock"]
        (work / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
        (work / ".dvc" / "config.local").write_text(_config_local(*order["remote"]))
        dvc = [sys.executable, "-m", "dvc"]
        if upstream:
            emit(f"pulling outputs of {sorted(upstream)} from the DVC remote")
            sh(*dvc, "pull", *sorted(upstream))
        if recheck:
            st = sh(*dvc, "status", "--json", stage)
            if stage not in (st[st.index("{"):] if "{" in st else "{}"):
                emit("up to date after its upstream ran (same inputs): skipped")
                return {"ran": False, "lock": None}
        rc, tail = run_command(" ".join([*dvc, "repro", "--single-item", stage]), str(work), bin_env(), emit)
        if rc != 0:
            raise StageError(stage, rc, tail)
        sh(*dvc, "push", stage)
        entry = yaml.safe_load((work / "dvc.lock").read_text())["stages"][stage]
        return {"ran": True, "lock": entry}
    finally:
        shutil.rmtree(work, ignore_errors=True)


class StageError(RuntimeError):
    """A stage's command exited non-zero; the message ends with the stage's own output."""

    def __init__(self, stage: str, rc: int, tail: list[str]):
        self.stage, self.rc, self.tail = stage, rc, tail
        super().__init__(f"stage {stage!r} failed (exit {rc}):\n" + "\n".join(tail[-15:]))


def merge_results(root: Path, results: dict[str, dict]) -> None:
    """Write workers' dvc.lock entries into the orchestrator's dvc.lock (under DVC's repo lock,
    through DVC's own YAML writer) and pull their outputs into the workspace."""
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    ran = {k: v["lock"] for k, v in results.items() if v.get("lock")}
    if not ran:
        return
    with Repo(str(root)) as repo, repo.lock:
        lockfile = root / "dvc.lock"
        if not lockfile.exists():
            lockfile.write_text("schema: '2.0'\nstages: {}\n")
        with modify_yaml(str(lockfile)) as data:
            data.setdefault("stages", {})
            for name, entry in ran.items():
                data["stages"][name] = entry
    from flows.dvcops import dvc

    dvc(root, "pull", *sorted(ran))


__all__ = ["work_order", "run_remote", "merge_results", "StageError", "default_remote"]
