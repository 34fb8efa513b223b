"""`device: auto` resolution: CUDA when present, CPU otherwise, the same code on both."""

from __future__ import annotations

import torch

from retainrl.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """Map the params.yaml `device` value to a torch device, failing early on an absent GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was requested but torch sees no CUDA device (use 'auto' or 'cpu')")
    return torch.device(name)
