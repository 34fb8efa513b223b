"""The family registry: every sub-package of ``retainrl.families`` is an environment family.

A family is found, not listed: adding ``retainrl/families/<name>/`` (with a ``stages`` module)
and a ``<name>:`` section in params.yaml is what it takes. A family has two modules:

* ``stages``: ``Params`` (its params.yaml section, a pydantic model) and the training stages;
* ``results``: the result stages, which read what training wrote.

The split is what keeps a cached pipeline cheap: DVC deps follow each stage's imports, so a
change to the shared statistics or reports (``retainrl.pipeline``, imported by ``results``)
reruns evaluation and reports, never fine-tuning. The functions (``p`` is the validated
``Params``, ``paths`` a :class:`retainrl.core.paths.Paths`, ``device`` a torch device; each
writes only its own artifact directory, atomically):

    stages.collect_demos(p, paths, device)     -> paths.demos
    stages.pretrain(p, paths, device)          -> paths.pretrained
    stages.far_buffer(p, paths, device)        -> paths.far_buffer
    stages.fisher(p, paths, device)            -> paths.fisher
    stages.finetune(p, paths, device, method)  -> paths.finetune(method)
    results.evaluate(p, paths, device)         -> paths.evaluation (metrics.json + curves)
    results.report(p, paths)                   -> paths.report (report.md + figures)
    results.<other>(p, paths, device, arg)     -> e.g. AppleRetrieval's sweep over M and c

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
TRAINING_STAGES = ("collect_demos", "pretrain", "far_buffer", "fisher", "finetune")
STAGES = (*TRAINING_STAGES, "evaluate", "report")


def family_names() -> list[str]:
    """The families present: the sub-packages of ``retainrl/families`` that have a ``stages`` module."""
    return sorted(
        m.name for m in pkgutil.iter_modules([str(FAMILIES_DIR)])
        if m.ispkg and (FAMILIES_DIR / m.name / "stages.py").exists()
    )


def module_name(name: str, stage: str | None = None) -> str:
    """The dotted name of the module behind ``stage`` of family ``name`` (``stages`` for training
    and for the params schema, ``results`` for every other stage)."""
    part = "stages" if stage is None or stage in TRAINING_STAGES else "results"
    return f"retainrl.families.{name}.{part}"


def get_family(name: str, stage: str | None = None) -> ModuleType:
    if name not in family_names():
        raise ConfigError(f"env: unknown environment {name!r}; known: {', '.join(family_names())}")
    return importlib.import_module(module_name(name, stage))
