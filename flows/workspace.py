"""Where a flow runs: the user's workspace under a lock, or an isolated git worktree of its own.

A flow without overrides is ``dvc repro`` by other means: it runs in the project directory and
holds :func:`workspace_lock` for its whole length, so a second flow started on the same
directory refuses at once with a message naming the first (its pid and start time), and
dvc.lock is never written by two flows (DVC's own lock guards only its short locked phases: the
flow runs stages with ``--single-item``, which releases it while a command runs).

A flow *with* overrides (``--profile``, ``--methods``, ``--seeds``; a scheduled run or a custom
run from the UI) must not rewrite the user's params.yaml: a 3 a.m. smoke run would otherwise
leave ``profile: smoke`` behind for the next ``dvc repro``. :func:`isolated_workspace` runs it in
a fresh ``git worktree`` of the project (HEAD plus the user's uncommitted changes to tracked
files and any untracked, not ignored files) that shares the project's DVC cache, so nothing
is recomputed that the cache already holds and everything the run makes lands in that cache.
At the end, successful or not, the worktree's params.yaml, dvc.lock and git-tracked results are
committed on the branch ``runs/<name>`` and the worktree is removed. The user's working copy is
left byte for byte as it was (only a branch and cache entries are added), and the run's results
are retrievable by that revision like any other:

    python -m retainrl.orchestration.retrieve apple_finetune@ewc --rev runs/<name>
    git show runs/<name>:reports/index.md
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("retainrl.flows")

LOCK_FILE = Path(".dvc") / "tmp" / "retainrl-flow.lock"
BRANCH_PREFIX = "runs/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


class WorkspaceBusy(RuntimeError):
    """Another flow holds this workspace."""


class WorkspaceError(RuntimeError):
    """An isolated workspace could not be made (no git repository, a taken run name…)."""


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """Hold the workspace's flow lock (``.dvc/tmp/retainrl-flow.lock``, an ``flock``) or refuse.

    The kernel drops an ``flock`` when its holder dies, so a killed flow never leaves a stale lock.
    """
    path = Path(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            try:
                who = json.loads(holder)
                who = f"pid {who['pid']}, started {who['started']}"
            except (ValueError, KeyError, TypeError):
                who = "holder unknown"
            raise WorkspaceBusy(f"another retainrl flow is running in {Path(root).resolve()} ({who}): wait for it to end, "
                                "or pass --profile/--methods/--seeds to run in an isolated workspace") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _git(root: Path, *args: str, input: str | None = None, env: dict | None = None) -> str:
    res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, input=input,
                         env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise WorkspaceError(f"`git {' '.join(args[:3])}` failed in {root}: {(res.stderr or res.stdout).strip()[-1500:]}")
    return res.stdout


def default_run_name(profile: str | None) -> str:
    """``<profile>-<UTC time>``: unique enough for runs started a second apart or more."""
    return f"{profile or 'default'}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _identity(root: Path) -> dict[str, str]:
    """The committer for the run's branch: the user's git identity, or a neutral one if none is set."""
    have = subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True, text=True).stdout.strip()
    if have:
        return {}
    return {"GIT_AUTHOR_NAME": "retainrl flow", "GIT_AUTHOR_EMAIL": "retainrl@localhost",
            "GIT_COMMITTER_NAME": "retainrl flow", "GIT_COMMITTER_EMAIL": "retainrl@localhost"}


def _share_dvc(root: Path, work: Path) -> None:
    """Give the worktree the project's DVC set-up: its local config (remotes, credentials), its
    cache, and every local remote at the path the project resolves it to (a relative URL would
    otherwise point inside the temporary worktree)."""
    from dvc.repo import Repo

    from flows.dvcops import dvc

    local = root / ".dvc" / "config.local"
    if local.is_file():
        shutil.copy2(local, work / ".dvc" / "config.local")
    with Repo(str(root)) as repo:
        cache = Path(repo.cache.local.path).parents[1]  # …/cache/files/md5 → …/cache
        remotes = {name: str(conf.get("url", "")) for name, conf in repo.config["remote"].items()}
    dvc(work, "cache", "dir", "--local", str(cache))
    for name, url in remotes.items():
        if url and "://" not in url:  # DVC hands back local URLs resolved against the file that set them
            dvc(work, "remote", "modify", "--local", name, "url", str(Path(url).resolve()))


@contextlib.contextmanager
def isolated_workspace(root: Path, name: str) -> Iterator[Path]:
    """A git worktree of ``root`` for one flow run; its results end on branch ``runs/<name>``.

    Yields the worktree's path. On exit (also on failure) commits what the run changed there
    (dvc.lock, params.yaml, git-tracked results) on the branch and removes the worktree.
    """
    root = Path(root).resolve()
    if not _NAME.match(name):
        raise WorkspaceError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (it names the branch runs/{name})")
    try:
        _git(root, "rev-parse", "--verify", "-q", "HEAD")
    except WorkspaceError as err:
        raise WorkspaceError(f"a flow with --profile/--methods/--seeds runs in a git worktree of the project, so {root} "
                             "must be a git repository with at least one commit") from err
    branch = BRANCH_PREFIX + name
    if subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"], cwd=root,
                      capture_output=True).returncode == 0:
        raise WorkspaceError(f"branch {branch} exists already: choose another run name (--name)")
    tmp = Path(tempfile.mkdtemp(prefix=f"retainrl-run-{name}-"))
    work = tmp / "repo"
    try:
        _git(root, "worktree", "add", "-q", "-b", branch, str(work), "HEAD")
    except WorkspaceError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    keep = False  # the worktree stays when its results could not be committed: they are only there
    try:
        try:
            # plumbing options: the user's diff settings (colour, external tools, prefixes) must not shape the patch
            diff = _git(root, "diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv",
                        "--src-prefix=a/", "--dst-prefix=b/", "HEAD")
            if diff:
                _git(work, "apply", "--binary", "-", input=diff)
            for rel in filter(None, _git(root, "ls-files", "-z", "--others", "--exclude-standard").split("\0")):
                src = root / rel
                if src.is_file() and not src.is_symlink():
                    (work / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, work / rel)
            _share_dvc(root, work)
        except BaseException:
            subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=root, capture_output=True)
            subprocess.run(["git", "branch", "-D", branch], cwd=root, capture_output=True)  # nothing ran: no branch
            raise
        from flows.dvcops import dvc

        dvc(work, "checkout", "--allow-missing", "-q", check=False)  # what the cache holds of HEAD's dvc.lock
        log.info("isolated workspace %s (branch %s), sharing the DVC cache of %s", work, branch, root)
        ok = False
        try:
            yield work
            ok = True
        finally:
            status = "" if ok else " (failed: partial results)"
            try:
                _git(work, "add", "-A")
                # the user's hooks and signing set-up are for their own commits, not a run's bookkeeping
                _git(work, "-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "--allow-empty", "-m",
                     f"flow run {name}{status}", env=_identity(root))
                log.info("flow run %s%s committed on branch %s", name, status, branch)
            except WorkspaceError as err:  # keep the results and say where, without hiding the run's own error
                keep = True
                log.error("could not commit the run's results on %s (%s); they are left in %s", branch, err, work)
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=root, capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)


__all__ = ["workspace_lock", "isolated_workspace", "default_run_name", "WorkspaceBusy", "WorkspaceError", "BRANCH_PREFIX"]
