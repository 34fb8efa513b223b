"""The knowledge-retention methods of the study, one class each behind one small interface.

A method knows nothing of environments or learners. It is built from a
:class:`RetentionContext` (π*, its weights θ*, the FAR buffer, the Fisher) and gives the learner
an auxiliary loss to add to its own (``aux_loss``), or, for episodic memory, protected
transitions in the replay buffer (``setup_replay``). Learners call the hooks and contain no
method-specific branches.

| method   | auxiliary loss                                      | needs               |
|----------|-----------------------------------------------------|---------------------|
| finetune | none                                                | –                   |
| scratch  | none, and the learner starts from random weights    | –                   |
| l2       | coef · Σ_i (θ_i − θ*_i)²                            | θ*                  |
| ewc      | coef · Σ_i F_i (θ_i − θ*_i)²                        | θ*, Fisher          |
| bc       | coef · E_{s∈B} KL(π*(·|s) ‖ π_θ(·|s)), B = FAR buffer | FAR buffer        |
| ks       | coef_t · E_{s online} KL(π*(·|s) ‖ π_θ(·|s)), coef_t = max(floor, coef·decay^t) | frozen π* |
| em       | none; pre-training transitions held as a protected replay share (off-policy only) | demos |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from retainrl.core.errors import ConfigError
from retainrl.retention.params import BCParams, EMParams, EWCParams, KSParams, L2Params, NoParams
from retainrl.retention.dists import kl, reduce_samples
from retainrl.retention.policy import RetainablePolicy


@dataclass
class RetentionContext:
    """Everything a retention method may draw on; each method declares which fields it needs."""

    pretrained: RetainablePolicy | None = None
    far_obs: torch.Tensor | dict[str, torch.Tensor] | None = None  # a dict for multi-part observations
    far_targets: torch.Tensor | None = None  # π*'s distribution parameters on far_obs
    far_critic: torch.Tensor | None = None  # π*'s critic outputs on far_obs (critic regularisation)
    fisher: dict[str, torch.Tensor] | None = None
    pretrain_transitions: dict[str, torch.Tensor] | None = None  # for EM
    generator: torch.Generator | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def context_for(method: str, generator: torch.Generator | None = None, **loaders) -> RetentionContext:
    """The :class:`RetentionContext` of ``method``, holding just what it ``needs``.

    ``loaders`` maps context fields to zero-argument functions; only those of the fields the
    method needs are called (a family never loads a Fisher for BC, or π* for ``scratch``). A
    needed field without a loader is an error that names the field.
    """
    cls = REGISTRY[method]
    missing = [n for n in cls.needs if n not in loaders]
    if missing:
        raise ConfigError(f"retention method {method!r} needs {', '.join(missing)}, which this family does not provide")
    return RetentionContext(generator=generator, **{n: loaders[n]() for n in cls.needs})


def _take(obs, idx: torch.Tensor, device) -> torch.Tensor | dict[str, torch.Tensor]:
    """Rows ``idx`` of a batch of observations (a tensor, or a dict of tensors), on ``device``."""
    if isinstance(obs, dict):
        return {k: v[idx].to(device) for k, v in obs.items()}
    return obs[idx].to(device)


def _rows(obs) -> int:
    return len(next(iter(obs.values()))) if isinstance(obs, dict) else obs.shape[0]


class RetentionMethod:
    """Base: no auxiliary loss, starts from π*. Subclasses override the hooks they need.

    A learner calls ``aux_loss(policy, online_obs, step)`` before every actor gradient update,
    with ``step`` the number of actor updates taken so far (KS's coefficient decays with it).
    """

    name: ClassVar[str] = "finetune"
    needs: ClassVar[tuple[str, ...]] = ()
    off_policy_only: ClassVar[bool] = False
    #: False for the ``scratch`` baseline: the learner starts from random weights.
    starts_from_pretrained: ClassVar[bool] = True
    #: True when ``aux_loss`` needs the states the learner visited in its latest batch.
    uses_online_states: ClassVar[bool] = False
    #: True when the method holds the policy near π* (the study turns the entropy bonus off then).
    retains: ClassVar[bool] = True
    #: The model of its params section (``<family>.retention.<name>`` in params.yaml).
    Params: ClassVar[type] = NoParams

    def __init__(self, ctx: RetentionContext, params):
        missing = [n for n in self.needs if getattr(ctx, n) is None]
        if missing:
            raise ConfigError(f"retention method {self.name!r} needs {', '.join(missing)}, which the learner did not provide")
        self.ctx = ctx
        self.params = params
        self.include_critic = params.regularize_critic

    def coef(self, step: int) -> float:
        return 0.0

    def aux_loss(self, policy: RetainablePolicy, online_obs: torch.Tensor | None, step: int) -> torch.Tensor | None:
        """Auxiliary loss to add to the learner's loss at update ``step`` (None: nothing to add)."""
        return None

    def setup_replay(self, replay: Any) -> None:
        """Off-policy learners call this once, before training, with their replay buffer."""


class Finetune(RetentionMethod):
    name = "finetune"
    retains = False


class Scratch(RetentionMethod):
    name = "scratch"
    starts_from_pretrained = False
    retains = False


class _ParameterAnchor(RetentionMethod):
    """Shared by L2 and EWC: a quadratic pull of the retained weights towards θ*."""

    needs = ("pretrained",)

    def __init__(self, ctx: RetentionContext, params):
        super().__init__(ctx, params)
        self.anchor = {n: p.detach().clone() for n, p in ctx.pretrained.retained_parameters(self.include_critic)}

    def weights(self, name: str) -> torch.Tensor | float:
        return 1.0

    def aux_loss(self, policy, online_obs, step):
        total = None
        for name, param in policy.retained_parameters(self.include_critic):
            if name not in self.anchor:
                raise ConfigError(f"retention method {self.name!r}: parameter {name!r} has no pre-trained value")
            weight = self.weights(name)
            weight = weight.to(param.device) if torch.is_tensor(weight) else weight
            term = (weight * (param - self.anchor[name].to(param.device)).pow(2)).sum()
            total = term if total is None else total + term
        return self.coef(step) * total


class L2(_ParameterAnchor):
    name = "l2"
    Params = L2Params

    def coef(self, step):
        return self.params.l2.coef


class EWC(_ParameterAnchor):
    name = "ewc"
    Params = EWCParams
    needs = ("pretrained", "fisher")

    def __init__(self, ctx, params):
        super().__init__(ctx, params)
        missing = [n for n in self.anchor if n not in ctx.fisher]
        if missing:
            raise ConfigError(f"retention method 'ewc': the Fisher has no entry for {missing} (recompute the fisher stage)")

    def weights(self, name):
        return self.ctx.fisher[name]

    def coef(self, step):
        return self.params.ewc.coef


def _distill(policy: RetainablePolicy, obs: torch.Tensor, targets: torch.Tensor, critic_targets: torch.Tensor | None, include_critic: bool) -> torch.Tensor:
    loss = reduce_samples(kl(policy.family, targets, policy.dist_params(obs)))
    if include_critic and critic_targets is not None:
        out = policy.critic_output(obs)  # (..., N): one value per state
        loss = loss + reduce_samples((out - critic_targets).pow(2))
    return loss


class BC(RetentionMethod):
    """Behavioural cloning of π* on a fixed buffer of FAR states (π*'s outputs stored with them)."""

    name = "bc"
    Params = BCParams
    needs = ("far_obs", "far_targets")

    def coef(self, step):
        return self.params.bc.coef

    def aux_loss(self, policy, online_obs, step):
        n = _rows(self.ctx.far_obs)
        idx = torch.randint(n, (min(self.params.bc.batch_size, n),), generator=self.ctx.generator)
        dev = next(policy.parameters()).device
        crit = self.ctx.far_critic[idx].to(dev) if self.ctx.far_critic is not None else None
        if self.include_critic and crit is None:
            raise ConfigError("retention.regularize_critic: the FAR buffer holds no critic targets")
        obs = _take(self.ctx.far_obs, idx, dev)
        return self.coef(step) * _distill(policy, obs, self.ctx.far_targets[idx].to(dev), crit, self.include_critic)


class KS(RetentionMethod):
    """Kickstarting: the same KL as BC, on the states the current policy visits, with a decaying weight."""

    name = "ks"
    Params = KSParams
    needs = ("pretrained",)
    uses_online_states = True

    def coef(self, step):
        p = self.params.ks
        return max(p.floor, p.coef * p.decay**step)

    def aux_loss(self, policy, online_obs, step):
        if online_obs is None:
            raise ConfigError("retention method 'ks' needs the learner's online states")
        with torch.no_grad():
            targets = self.ctx.pretrained.dist_params(online_obs)
            crit = self.ctx.pretrained.critic_output(online_obs) if self.include_critic else None
        return self.coef(step) * _distill(policy, online_obs, targets, crit, self.include_critic)


class EM(RetentionMethod):
    """Episodic memory: pre-training transitions kept as a protected share of the replay buffer."""

    name = "em"
    Params = EMParams
    needs = ("pretrain_transitions",)
    off_policy_only = True

    def setup_replay(self, replay):
        replay.protect(self.ctx.pretrain_transitions, share=self.params.em.share)


#: Every method, by name: the only list of methods in the project (params, dvc.yaml's matrices
#: and the reports all come from a family's ``finetune.methods``, checked against this).
REGISTRY: dict[str, type[RetentionMethod]] = {
    cls.name: cls for cls in (Scratch, Finetune, L2, EWC, BC, KS, EM)
}
#: The method every retention method is compared with (the study's "FT").
BASELINE = Finetune.name


def _retention_params():
    from pydantic import Field, create_model

    from retainrl.core.config import Strict

    fields = {name: (cls.Params, Field(default_factory=cls.Params)) for name, cls in REGISTRY.items()}
    model = create_model(
        "RetentionParams", __base__=Strict,
        regularize_critic=(bool, Field(False, description="regularise the critic too (the study: actor only)")),
        **fields,
    )
    model.__doc__ = "A family's ``retention:`` section: one params section per method of the registry."
    return model


#: Coefficients of every retention method for one family (built from the registry).
RetentionParams = _retention_params()



def check_method(method: str, *, learner: str, off_policy: bool, key: str | None = "method") -> type[RetentionMethod]:
    """Validate a method name against a learner before any compute; return its class.

    ``key`` prefixes the message (None inside a params validator, which adds the dotted key itself).
    """
    prefix = f"{key}: " if key else ""
    if method not in REGISTRY:
        raise ConfigError(f"{prefix}unknown retention method {method!r}; allowed: {', '.join(REGISTRY)}")
    cls = REGISTRY[method]
    if cls.off_policy_only and not off_policy:
        raise ConfigError(
            f"{prefix}method {method!r} (episodic memory) needs an off-policy learner with a replay buffer; "
            f"{learner!r} is on-policy"
        )
    return cls


def build_retention(method: str, ctx: RetentionContext, params, *, learner: str, off_policy: bool) -> RetentionMethod:
    return check_method(method, learner=learner, off_policy=off_policy)(ctx, params)


def method_list(learner: str, *, off_policy: bool):
    """The pydantic type of a family's method list: known names, allowed by ``learner``, no repeats.

    ``methods: method_list("reinforce", off_policy=False) = [...]`` in a params model rejects
    ``em`` for an on-policy learner at load time, naming the key.
    """
    from typing import Annotated

    from pydantic import AfterValidator

    def check(methods: list[str]) -> list[str]:
        for m in methods:
            check_method(m, learner=learner, off_policy=off_policy, key=None)
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods are listed twice: {methods}")
        return methods

    return Annotated[list[str], AfterValidator(check)]
