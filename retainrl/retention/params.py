"""Params of the retention methods and of the Fisher estimate: one schema for every family.

A family's params section embeds :class:`RetentionParams` (its own defaults may differ: see the
family's ``Params``) and :class:`FisherParams`; the method classes in ``methods`` read them.
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


class RetentionParams(Strict):
    """Coefficients of every retention method for one environment family."""

    #: Retention regularises the actor only (as in the study); set true to cover the critic too.
    regularize_critic: bool = False
    l2: L2Params = L2Params()
    ewc: EWCParams = EWCParams()
    bc: BCParams = BCParams()
    ks: KSParams = KSParams()
    em: EMParams = EMParams()


class FisherParams(Strict):
    #: ``exact``: expectation over the policy's own actions in closed form;
    #: ``sampled``: one action drawn from the policy per state (Monte-Carlo).
    estimator: Literal["exact", "sampled"] = "exact"
    states: int = Field(512, gt=0)
    min_value: float = Field(1e-5, ge=0)
