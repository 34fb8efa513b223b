"""The stages every family shares, by name, and the one rule for which function runs a stage.

``stages/<stage>.py`` hands the generic function to :func:`retainrl.core.stage.main`; code that
runs stages in process (tests, experiments, benchmarks) goes through :func:`stage`, so both
follow the same rule: the family's own function when it defines one, else the generic stage
with the family's answers.
"""

from __future__ import annotations

import functools

from retainrl.pipeline.far_buffer import far_buffer
from retainrl.pipeline.finetune import finetune
from retainrl.pipeline.fisher import fisher

GENERIC = {"far_buffer": far_buffer, "fisher": fisher, "finetune": finetune}
#: What a family answers for each generic stage it uses (the Family protocol, see core/family.py).
ANSWERS = {
    "far_buffer": ("load_pretrained", "far_states"),
    "fisher": ("load_pretrained",),
    "finetune": ("learner", "load_pretrained", "train"),
}


def missing_answers(family, name: str) -> list[str]:
    """The answers ``family`` lacks for the generic stage ``name`` (none when it defines the stage)."""
    if getattr(family, name, None) is not None:
        return []
    return [a for a in ANSWERS.get(name, ()) if not hasattr(family, a)]


def stage(family, name: str):
    """The function that runs stage ``name`` for ``family`` (a family's ``stages`` module)."""
    own = getattr(family, name, None)
    if own is not None:
        return own
    if name not in GENERIC:
        raise AttributeError(f"{family.__name__} has no `{name}` stage and there is no generic one")
    missing = missing_answers(family, name)
    if missing:
        raise AttributeError(f"{family.__name__} defines neither `{name}` nor {', '.join(missing)}, which the generic stage asks")
    return functools.partial(GENERIC[name], family)
