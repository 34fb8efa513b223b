"""Params of each retention method and of the Fisher estimate: one schema for every family.

Each method class in ``methods`` names its model here (``Params``); ``methods.RetentionParams``,
the ``retention:`` section of a family, is built from the registry: one field per method.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from retainrl.core.config import Strict


class L2Params(Strict):
    coef: float = Field(1.0, ge=0)


class EWCParams(Strict):
    coef: float = Field(1.0, ge=0)


class BCParams(Strict):
    coef: float = Field(1.0, ge=0)
    batch_size: int = Field(64, gt=0)


class KSParams(Strict):
    coef: float = Field(1.0, ge=0)
    decay: float = Field(0.999, gt=0, le=1)
    floor: float = Field(0.0, ge=0)


class EMParams(Strict):
    #: Protected share of the replay buffer filled with pre-training transitions.
    share: float = Field(0.1, gt=0, lt=1)


class NoParams(Strict):
    """A method without knobs (``finetune``, ``scratch``): an empty section, so that every method
    has one and a stage can depend on exactly its own method's params (``retention.<method>``)."""


class FisherParams(Strict):
    #: ``exact``: expectation over the policy's own actions in closed form;
    #: ``sampled``: one action drawn from the policy per state (Monte-Carlo).
    estimator: Literal["exact", "sampled"] = "exact"
    states: int = Field(512, gt=0)
    min_value: float = Field(1e-5, ge=0)
