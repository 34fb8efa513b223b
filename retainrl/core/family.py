"""The family registry: every sub-package of ``retainrl.families`` is an environment family.

A family is found, not listed: adding ``retainrl/families/<name>/`` (with a ``stages`` module)
and a ``<name>:`` section in params.yaml is all it takes; dvc.yaml's templated stages expand
over the sections present. The ``stages`` module of a family exports ``Params`` (its params.yaml
section, a pydantic model) and the functions the stages call (``p`` is its validated
``Params``, ``paths`` a :class:`retainrl.core.paths.Paths`, ``device`` a torch device; every
function writes only its own artifact directory, atomically):

    collect_demos(p, paths, device)          -> paths.demos
    pretrain(p, paths, device)               -> paths.pretrained
    far_buffer(p, paths, device)             -> paths.far_buffer
    fisher(p, paths, device)                 -> paths.fisher
    finetune(p, paths, device, method)       -> paths.finetune(method)
    evaluate(p, paths, device)               -> paths.evaluation (metrics.json + curves)
    report(p, paths)                         -> paths.report (report.md + figures)

Heavy imports (NLE, ALE, Meta-World, sample-factory) stay inside a family's functions, so
loading params is cheap and a stage of one family never imports another's simulator.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from retainrl.core.errors import ConfigError

FAMILIES_DIR = Path(__file__).resolve().parent.parent / "families"
STAGES = ("collect_demos", "pretrain", "far_buffer", "fisher", "finetune", "evaluate", "report")


def family_names() -> list[str]:
    """The families present: the sub-packages of ``retainrl/families`` that have a ``stages`` module."""
    return sorted(
        m.name for m in pkgutil.iter_modules([str(FAMILIES_DIR)])
        if m.ispkg and (FAMILIES_DIR / m.name / "stages.py").exists()
    )


def module_name(name: str) -> str:
    """The dotted name of a family's stage module."""
    return f"retainrl.families.{name}.stages"


def get_family(name: str) -> ModuleType:
    if name not in family_names():
        raise ConfigError(f"env: unknown environment {name!r}; known: {', '.join(family_names())}")
    return importlib.import_module(module_name(name))
