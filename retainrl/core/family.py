"""The family registry: every sub-package of ``retainrl.families`` is an environment family.

A family is found, not listed: adding ``retainrl/families/<name>/`` (with a ``stages`` module)
and a ``<name>:`` section in params.yaml is what it takes. A family has two modules:

* ``stages``: ``Params`` (its params.yaml section, a pydantic model), its own training stages
  and its answers to the generic ones;
* ``results``: the result stages, which read what training wrote.

Three training stages are the same for every family and live in ``retainrl.pipeline``
(``far_buffer``, ``fisher``, ``finetune``: the generic driver). A family answers what they ask
(``p`` is the validated ``Params``, ``paths`` a :class:`retainrl.core.paths.Paths`, ``device`` a
torch device):

    stages.collect_demos(p, paths, device)            -> paths.demos (the family's own)
    stages.pretrain(p, paths, device)                 -> paths.pretrained (the family's own)
    stages.load_pretrained(p, paths, device)          π*, a RetainablePolicy   (far_buffer, fisher, finetune)
    stages.far_states(p, paths, π*, device)           {"obs": …, extras}       (far_buffer: which states are FAR)
    stages.learner                                    the learner module (its LEARNER name, OFF_POLICY)
    stages.train(p, paths, device, run)               the fine-tuning loop into run.out (finetune)
    stages.retention_loaders(p, paths, device)        optional: context fields only it can load (EM's memory)
    results.evaluate(p, paths, device)                -> paths.evaluation (metrics.json + curves)
    results.report(p, paths)                          -> paths.report (report.md + figures)
    results.<other>(p, paths, device, arg)            -> e.g. AppleRetrieval's sweep over M and c

A family that defines ``far_buffer``, ``fisher`` or ``finetune`` itself replaces the generic
stage (NetHack: its recurrent π* acts on a history, not a state); ``pipeline.generic.stage``
is the rule, and ``tests/test_families.py`` checks every family answers what it uses.

The stages/results split is what keeps a cached pipeline cheap: DVC deps follow each stage's
imports, so a change to the shared statistics or reports (``retainrl.pipeline``'s result
modules, imported by ``results``) reruns evaluation and reports, never fine-tuning. Every
stage writes only its own artifact directory, atomically.

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
