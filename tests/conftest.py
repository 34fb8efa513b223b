import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RETAINRL_LOG", "WARNING")
torch.set_num_threads(1)


# How `make test` splits the suite between its two workers: tests/xdist_units.py.
from xdist_units import pytest_collection_modifyitems, pytest_xdist_make_scheduler  # noqa: E402,F401


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def dvc_outs(root: Path = ROOT) -> dict[str, list[str]]:
    """Each dvc.yaml stage's out paths; an out is a path or ``{path: {options}}`` (e.g. cache: false)."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: [o if isinstance(o, str) else next(iter(o)) for o in st.get("outs", [])] for name, st in stages.items()}


def copy_repo(root: Path, dest: Path) -> Path:
    """Copy what git would ship (tracked + untracked-not-ignored files), then make it a fresh repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in ("dvc.lock",):  # start from nothing: no cached results
        (dest / rel).unlink(missing_ok=True)
    return dest


def run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory, root):
    """The repository copied and run end to end on the smoke profile (what `make run` runs), once
    per session: the e2e tests read it, and the kill-and-resume tests start from a copy of it, so
    their upstream stages come from its cache instead of being recomputed."""
    import yaml

    repo = copy_repo(root, tmp_path_factory.mktemp("repo"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RETAINRL_LOG": "WARNING"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        run(cmd, repo, env)
    out = run([sys.executable, "-m", "retainrl.orchestration.run"], repo, env)  # what `make run` runs
    return repo, env, out
