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


def smoke_copy(root: Path, dest: Path, edit=None) -> tuple[Path, dict]:
    """A fresh git repository of the project on the smoke profile (``edit(params)`` may change its
    params first), and the environment its commands run in."""
    import yaml

    repo = copy_repo(root, dest)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    if edit is not None:
        edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo),
           "RETAINRL_LOG": "WARNING"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        run(cmd, repo, env)
    return repo, env


@pytest.fixture(scope="session")
def smoke_repos(tmp_path_factory, root):
    """``smoke_repos(family)``: a copy of the repository in which `make run`'s command ran that
    family's whole smoke DAG (``python -m retainrl.orchestration.run <family>_report``), built
    on first use and kept for the session. One repository per family, so the two test workers
    can build different families' DAGs side by side (tests/xdist_units.py keeps each family's
    users together); the family must be the test's only parameter (``[<family>]`` in its id)."""
    built: dict[str, tuple[Path, dict, str]] = {}

    def get(family: str) -> tuple[Path, dict, str]:
        if family not in built:
            repo, env = smoke_copy(root, tmp_path_factory.mktemp(f"smoke_{family}"))
            out = run([sys.executable, "-m", "retainrl.orchestration.run", f"{family}_report"], repo, env)
            built[family] = repo, env, out
        return built[family]

    return get
