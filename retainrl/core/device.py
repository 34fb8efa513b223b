"""`device: auto` resolution: CUDA when present, CPU otherwise, the same code on both.

The stage log says which device was chosen and why, because a CPU build of torch on a GPU
machine (the lock's default; see `make setup TORCH=cuda`) would otherwise fall back silently.
"""

from __future__ import annotations

import logging

import torch

from retainrl.core.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """Map the params.yaml `device` value to a torch device, failing early on an absent GPU."""
    device, why = _resolve(name)
    log.info("device: %s (%s)", device, why)
    return device


def _resolve(name: str) -> tuple[torch.device, str]:
    cuda_build = torch.version.cuda is not None
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), f"device=auto and CUDA is available: {torch.cuda.get_device_name(0)}"
        if not cuda_build:
            return torch.device("cpu"), f"device=auto, but torch {torch.__version__} is a CPU build (make setup TORCH=cuda installs a CUDA one)"
        return torch.device("cpu"), f"device=auto, torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no GPU"
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU build" if not cuda_build else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(f"device: 'cuda' was requested but torch sees no CUDA device (torch {torch.__version__} is {build}; use 'auto' or 'cpu')")
    return torch.device(name), f"device={name} in params.yaml"
