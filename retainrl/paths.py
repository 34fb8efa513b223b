"""Where each stage's artifacts live; dvc.yaml declares the same paths (a test keeps them in step)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    env: str
    root: Path = Path(".")

    @property
    def demos(self) -> Path:
        return self.root / "data" / self.env / "demos.npz"

    @property
    def pretrained(self) -> Path:
        return self.root / "models" / self.env / "pretrained.safetensors"

    @property
    def far_buffer(self) -> Path:
        return self.root / "data" / self.env / "far_buffer.npz"

    @property
    def fisher(self) -> Path:
        return self.root / "data" / self.env / "fisher.safetensors"

    @property
    def finetune_root(self) -> Path:
        return self.root / "models" / self.env / "finetune"

    def finetune(self, method: str) -> Path:
        return self.finetune_root / method

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.env

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    def sweep(self, axis: str) -> Path:
        return self.reports / f"sweep_{axis}.json"
