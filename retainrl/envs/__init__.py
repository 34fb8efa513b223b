"""Environment families. Each module exports ``Params`` (its params.yaml section) and the
functions the stages call; heavy imports stay inside functions so loading params is cheap.

The stage API of a family module (``p`` is its validated ``Params``, ``paths`` a
:class:`retainrl.paths.Paths`, ``device`` a torch device; every function writes only its own
artifact directory, atomically):

    collect_demos(p, paths, device)          -> paths.demos
    pretrain(p, paths, device)               -> paths.pretrained
    far_buffer(p, paths, device)             -> paths.far_buffer
    fisher(p, paths, device)                 -> paths.fisher
    finetune(p, paths, device, method)       -> paths.finetune(method)
    evaluate(p, paths, device)               -> paths.evaluation (metrics.json + curves)
    report(p, paths)                         -> paths.report (report.md + figures)

To add a family: write one module here, add it to ``FAMILIES``, give it a section in
params.yaml and a block of stages in dvc.yaml.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from retainrl.config import ConfigError

FAMILIES: dict[str, str] = {
    "apple": "retainrl.envs.apple",
    "montezuma": "retainrl.envs.montezuma",
    "nethack": "retainrl.envs.nethack",
    "robot": "retainrl.envs.robot",
}

STAGES = ("collect_demos", "pretrain", "far_buffer", "fisher", "finetune", "evaluate", "report")


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError(f"env: unknown environment {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])
