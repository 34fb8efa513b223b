"""Fetch any pipeline artifact as it was at a git revision, tag or DVC experiment.

Built on ``dvc get`` (which reads the dvc.lock of that revision and downloads the data from the
DVC cache or remote), not a re-implementation. An artifact is named either by its path
(``models/apple/pretrained``) or by the stage that makes it (``apple_pretrain``,
``apple_finetune@ewc``), resolved through the dvc.lock *at that revision*. Experiments are
resolved to their commit with DVC's own experiment-name lookup.

    python -m retainrl.orchestration.retrieve apple_pretrain --rev v1 -o /tmp/pretrained-v1
    python -m retainrl.orchestration.retrieve models/apple/finetune/ewc --rev my-exp --verify

``--verify`` recomputes DVC's md5 of what was fetched and compares it with the hash recorded in
that revision's dvc.lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger("retainrl.orchestration.retrieve")


class RetrieveError(RuntimeError):
    pass


def _git(root: Path, *args: str) -> str:
    res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if res.returncode != 0:
        raise RetrieveError(f"`git {' '.join(args)}` failed in {root}: {res.stderr.strip()}")
    return res.stdout


def resolve_rev(root: str | Path, rev: str) -> str:
    """Commit sha of a branch/tag/sha, or of a DVC experiment name (``dvc exp show`` names)."""
    root = Path(root)
    res = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root, capture_output=True, text=True)
    if res.returncode == 0:
        return res.stdout.strip()
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    with Repo(str(root)) as repo:
        ref = resolve_name(repo.scm, rev).get(rev)
        if ref is not None:
            return repo.scm.get_ref(str(ref))
    raise RetrieveError(f"unknown revision {rev!r}: not a git branch, tag or commit, nor a DVC experiment in {root}")


def lock_at(root: str | Path, sha: str) -> dict:
    try:
        text = _git(Path(root), "show", f"{sha}:dvc.lock")
    except RetrieveError as err:
        raise RetrieveError(f"revision {sha[:12]} has no dvc.lock: the pipeline was not run and committed there") from err
    return (yaml.safe_load(text) or {}).get("stages", {})


def recorded_outs(root: str | Path, sha: str) -> dict[str, dict]:
    """path → the out entry (md5, size, nfiles) recorded in the dvc.lock at ``sha``."""
    outs = {}
    for stage in lock_at(root, sha).values():
        for out in stage.get("outs", []):
            outs[out["path"]] = out
    return outs


def resolve_artifact(root: str | Path, name: str, sha: str) -> list[str]:
    """Output paths for an artifact name (a path, or a stage name) at ``sha``."""
    stages = lock_at(root, sha)
    if name in stages:
        return [o["path"] for o in stages[name].get("outs", [])]
    group = [s for s in stages if s.split("@", 1)[0] == name]
    if group:
        return [o["path"] for s in group for o in stages[s].get("outs", [])]
    outs = recorded_outs(root, sha)
    norm = name.rstrip("/")
    if norm in outs or any(norm.startswith(p + "/") for p in outs):
        return [norm]
    raise RetrieveError(f"{name!r} is neither a stage nor a DVC-tracked output at {sha[:12]}; "
                        f"known outputs: {sorted(outs)}")


def dvc_md5(path: str | Path) -> str:
    """DVC's md5 of a file, or of a directory (``<md5 of the manifest>.dir``), via dvc_data."""
    from dvc_data.hashfile.hash import file_md5
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    path = Path(path)
    if path.is_file():
        return file_md5(str(path))
    tree = Tree()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.add(f.relative_to(path).parts, Meta(size=f.stat().st_size), HashInfo("md5", file_md5(str(f))))
    tree.digest()
    return tree.hash_info.value


def fetch(root: str | Path, name: str, rev: str = "HEAD", out: str | Path | None = None, remote: str | None = None,
          force: bool = False, verify: bool = False) -> list[Path]:
    """Download artifact ``name`` as of ``rev`` into ``out`` with ``dvc get``; returns the paths."""
    root = Path(root).resolve()
    sha = resolve_rev(root, rev)
    paths = resolve_artifact(root, name, sha)
    dest_base = Path(out) if out else Path.cwd()
    got = []
    for rel in paths:
        dest = dest_base if (out and len(paths) == 1) else dest_base / Path(rel).name
        if dest.exists() and not force:
            raise RetrieveError(f"{dest} exists; pass --force to overwrite")
        cmd = [sys.executable, "-m", "dvc", "get", str(root), rel, "--rev", sha, "-o", str(dest)]
        cmd += ["--remote", remote] if remote else []
        cmd += ["--force"] if force else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RetrieveError(f"dvc get {rel} --rev {rev} failed: {(res.stderr or res.stdout).strip()[-2000:]}")
        if verify:
            expected = recorded_outs(root, sha).get(rel, {}).get("md5")
            actual = dvc_md5(dest)
            if expected and actual != expected:
                raise RetrieveError(f"{rel} at {rev}: fetched md5 {actual} != {expected} recorded in dvc.lock")
            log.info("%s at %s verified: %s", rel, rev, actual)
        got.append(dest)
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m retainrl.orchestration.retrieve", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="output path (models/apple/pretrained) or stage name (apple_pretrain)")
    p.add_argument("--rev", default="HEAD", help="git branch, tag, commit or DVC experiment name (default HEAD)")
    p.add_argument("-o", "--out", help="destination (default: the artifact's name in the current directory)")
    p.add_argument("--root", default=".", help="project repository (local path)")
    p.add_argument("--remote", help="DVC remote to download from (default: the repo's default remote / cache)")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--verify", action="store_true", help="check the md5 against that revision's dvc.lock")
    p.add_argument("--list", action="store_true", help="list the artifacts recorded at --rev and exit")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if a.list:
            sha = resolve_rev(a.root, a.rev)
            print(json.dumps({k: v.get("md5") for k, v in recorded_outs(a.root, sha).items()}, indent=1))
            return 0
        for path in fetch(a.root, a.artifact, a.rev, a.out, a.remote, a.force, a.verify):
            print(path)
    except RetrieveError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
