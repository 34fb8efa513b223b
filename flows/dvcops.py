"""Thin wrappers around the ``dvc`` CLI that the flow uses for its bookkeeping and stages.

Each stage runs as ``dvc --wait-for-lock repro --single-item STAGE``: DVC itself removes the old
outputs, runs the command, saves the run cache and writes the dvc.lock entry, exactly as a plain
``dvc repro`` would. Parallel calls in one workspace do overlap: ``dvc repro`` is ``@locked``,
but DVC 3.67 releases the repository lock while the stage command runs
(``dvc/stage/run.py``: ``unlocked_repo(cmd_run)``; per-path read/write locks in .dvc/tmp/rwlock
guard the deps and outs), so only the short status/commit phases are serialised, and
``--wait-for-lock`` makes them queue instead of failing. Measured: two 6-second stages started
this way ran 129.4–135.4 s and 130.0–136.1 s (epoch tails), i.e. side by side.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from retainrl.orchestration.dvcstatus import parse_status

log = logging.getLogger("retainrl.flows")


class DvcError(RuntimeError):
    """A dvc command failed; the message carries DVC's own output."""


def bin_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin dir first, so `python -m stages...` in
    dvc.yaml resolves to the same virtualenv as the orchestrator (locally and on dask workers)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def dvc(root: str | Path, *args: str, check: bool = True, wait_for_lock: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m dvc [--wait-for-lock] ARGS`` in ``root`` (the orchestrator's own interpreter)."""
    cmd = [sys.executable, "-m", "dvc", *(["--wait-for-lock"] if wait_for_lock else []), *args]
    res = subprocess.run(cmd, cwd=root, env=bin_env(), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root}:\n{(res.stderr or res.stdout).strip()[-3000:]}")
    return res


def changed(root: str | Path, stages: list[str]) -> set[str]:
    """Stages among ``stages`` that ``dvc status`` reports as changed (each checked on its own)."""
    if not stages:
        return set()
    res = dvc(root, "status", "--json", *stages)
    try:
        data = parse_status(res.stdout)
    except ValueError as err:
        raise DvcError(f"`dvc status` in {root}: {err}") from err
    return {name for name in stages if name in data}


def run_command(cmd: str, cwd: str, env: dict[str, str], emit: Callable[[str], None], tail: int = 40) -> tuple[int, list[str]]:
    """Run a stage command the way DVC does (the user's $SHELL, no rc files), streaming its output
    line by line to ``emit``; returns the exit code and the last ``tail`` lines."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    argv = [shell, "-c", cmd]
    if Path(shell).name in ("bash",):
        argv = [shell, "--noprofile", "--norc", "-c", cmd]
    last: deque[str] = deque(maxlen=tail)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, close_fds=True)
    assert proc.stdout is not None
    for raw in proc.stdout:
        for line in raw.rstrip("\n").split("\r"):
            if line.strip():
                last.append(line)
                emit(line)
    return proc.wait(), list(last)


def default_remote(root: str | Path) -> tuple[str, dict] | None:
    """(name, resolved config) of the repo's default DVC remote, or None. DVC resolves a relative
    local ``url`` against the config file that set it, so the url returned is usable anywhere."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            return None
        conf = dict(repo.config["remote"].get(name) or {})
    if not conf:
        raise DvcError(f"core.remote is {name!r} but no remote of that name is configured (dvc remote list)")
    return name, {k: str(v) for k, v in conf.items()}


def check_remote(root: str | Path, remote: str | None) -> str:
    """Name of the remote to push to / exchange through; a clear error when it cannot work."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        remotes = dict(repo.config["remote"])
        name = remote or repo.config["core"].get("remote")
    if not name:
        raise DvcError("no DVC remote: configure one (`dvc remote add -d NAME URL`) or pass --remote")
    if name not in remotes:
        raise DvcError(f"DVC remote {name!r} does not exist; configured remotes: {sorted(remotes) or 'none'}")
    url = str(remotes[name].get("url", ""))
    if "://" not in url and not Path(url).parent.exists():
        raise DvcError(f"DVC remote {name!r} points at {url}, whose parent directory does not exist")
    return name
