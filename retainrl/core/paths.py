"""Where each stage's artifacts live; dvc.yaml declares the same paths (a test keeps them in step).

Every artifact is a directory, so a family may put whatever files it needs inside (weights,
metadata, several arrays) and a stage can write it atomically with
``artifacts.atomic_path(path, directory=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    env: str
    root: Path = Path(".")

    @property
    def demos(self) -> Path:
        return self.root / "data" / self.env / "demos"

    @property
    def pretrained(self) -> Path:
        return self.root / "models" / self.env / "pretrained"

    @property
    def far_buffer(self) -> Path:
        return self.root / "data" / self.env / "far_buffer"

    @property
    def fisher(self) -> Path:
        return self.root / "data" / self.env / "fisher"

    @property
    def finetune_root(self) -> Path:
        return self.root / "models" / self.env / "finetune"

    def finetune(self, method: str) -> Path:
        return self.finetune_root / method

    @property
    def evaluation(self) -> Path:
        """Written by `evaluate`: metrics.json (for `dvc metrics`) and curves (for `dvc plots`)."""
        return self.root / "reports" / self.env / "eval"

    @property
    def report(self) -> Path:
        """Written by `report`: report.md and its PNG figures."""
        return self.root / "reports" / self.env / "report"

    def sweep(self, axis: str) -> Path:
        """Written by a family's sweep stage (AppleRetrieval: forgetting against M or c)."""
        return self.root / "reports" / self.env / f"sweep_{axis}"
