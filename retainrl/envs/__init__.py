"""Environment families. Each module exports ``Params`` (its params.yaml section) and the
functions the stages call; heavy imports stay inside functions so loading params is cheap.

To add a family: write one module here, add it to ``FAMILIES``, give it a section in
params.yaml and a block of stages in dvc.yaml.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from retainrl.config import ConfigError

FAMILIES: dict[str, str] = {
    "apple": "retainrl.envs.apple",
}


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError(f"env: unknown environment {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])
