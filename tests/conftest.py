import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RETAINRL_LOG", "WARNING")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def dvc_outs(root: Path = ROOT) -> dict[str, list[str]]:
    """Each dvc.yaml stage's out paths; an out is a path or ``{path: {options}}`` (e.g. cache: false)."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: [o if isinstance(o, str) else next(iter(o)) for o in st.get("outs", [])] for name, st in stages.items()}
