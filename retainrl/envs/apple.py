"""AppleRetrieval(c, M, T): the study's toy environment, vectorised in torch.

A 1-D walk. Phase 1 (CLOSE): start at home x = 0 and walk to the apple at x = M. Phase 2 (FAR):
walk back home. The observation is s = [1, −c] in phase 1 and [1, c] in phase 2 (the constant
acts as a bias), the policy is logistic, P(right | s) = σ(w·s). Reward is +1 for a step in the
phase's right direction and −1 otherwise; the episode ends at home after the apple (success) or
after T steps. Home is a wall: a step left at x = 0 stays at 0 (and is rewarded −1).

π* is cloned from phase-2 demonstrations only, so it leans on w ∝ −[1, c]: in phase 1 its logit
is −k(1 − c²), i.e. it walks the wrong way (the state coverage gap). Fine-tuning on phase 1 moves
w along [1, −c], which also raises the phase-2 logit by (1 − c²)/(1 + c²) per unit: for c < 1 the
FAR skill is overwritten before the agent ever reaches the apple, more so the larger M is.

Everything is batched over a leading "models" axis (independent seeds trained together) and an
episodes axis, so thousands of episodes run per second on one core.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from retainrl.config import FisherParams, Method, RetentionParams, Strict
from retainrl.retention.policy import RetainablePolicy

log = logging.getLogger(__name__)

LEFT, RIGHT = 0, 1
LEARNER = "reinforce"


# --------------------------------------------------------------------------- params


class EnvParams(Strict):
    c: float = Field(0.5, gt=0, description="phase-signal magnitude in the observation")
    M: int = Field(30, gt=0, description="distance from home to the apple")
    T: int = Field(100, gt=0, description="episode step limit")

    @model_validator(mode="after")
    def _apple_reachable(self):
        if self.M > self.T / 2:
            raise ValueError(f"M must be ≤ T/2 = {self.T / 2:g} so the task can be solved in T steps (got M={self.M})")
        return self


class DemoParams(Strict):
    episodes: int = Field(64, gt=0)
    seed: int = 0


class PretrainParams(Strict):
    #: BC steps and learning rate set how confident π* is on phase 2 (its FAR margin).
    steps: int = Field(100, gt=0)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(256, gt=0)
    seed: int = 0


class FarBufferParams(Strict):
    size: int = Field(512, gt=0)
    seed: int = 0


class FinetuneParams(Strict):
    methods: list[Method] = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
    seeds: int = Field(5, gt=0)
    iterations: int = Field(400, gt=0)
    episodes_per_iteration: int = Field(32, gt=0)
    #: SGD follows the gradient's direction in weight space, which is what couples phase 1 to
    #: phase 2 through the shared weight; Adam's per-weight scaling changes that geometry.
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.5, gt=0)
    baseline: bool = True
    eval_every: int = Field(5, gt=0)
    eval_episodes: int = Field(500, gt=0)
    scratch_init_std: float = Field(0.1, ge=0)
    ks_states: int = Field(256, gt=0, description="visited states per update that kickstarting distils on")

    @field_validator("methods")
    @classmethod
    def _on_policy(cls, methods):
        from retainrl.retention.methods import check_method

        for m in methods:
            check_method(m, learner=LEARNER, off_policy=False, key="finetune.methods")
        if len(set(methods)) != len(methods):
            raise ValueError("methods are listed twice")
        return methods


class SweepParams(Strict):
    """Forgetting against M (at the base c) and against c (at the base M)."""

    methods: list[Method] = ["finetune", "ewc", "bc"]
    M: list[int] = [5, 10, 20, 30, 40, 50]
    c: list[float] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5]

    @field_validator("methods")
    @classmethod
    def _on_policy(cls, methods):
        from retainrl.retention.methods import check_method

        for m in methods:
            check_method(m, learner=LEARNER, off_policy=False, key="sweep.methods")
        return methods

    @field_validator("M")
    @classmethod
    def _positive_m(cls, values):
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"every M must be > 0 (got {values})")
        return values

    @field_validator("c")
    @classmethod
    def _positive_c(cls, values):
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"every c must be > 0 (got {values})")
        return values


class Params(Strict):
    env: EnvParams = EnvParams()
    demos: DemoParams = DemoParams()
    pretrain: PretrainParams = PretrainParams()
    far_buffer: FarBufferParams = FarBufferParams()
    fisher: FisherParams = FisherParams()
    finetune: FinetuneParams = FinetuneParams()
    retention: RetentionParams = RetentionParams()
    sweep: SweepParams = SweepParams()

    @model_validator(mode="after")
    def _cross_checks(self):
        bad = [m for m in self.sweep.M if m > self.env.T / 2]
        if bad:
            raise ValueError(f"sweep.M: every M must be ≤ env.T/2 = {self.env.T / 2:g} (got {bad})")
        if self.retention.regularize_critic:
            raise ValueError("retention.regularize_critic: the REINFORCE learner has no critic to regularise")
        return self


# --------------------------------------------------------------------------- environment


class AppleRetrieval:
    """A batch of independent AppleRetrieval episodes with state tensors of shape ``batch``.

    ``batch`` is a shape (e.g. (models, episodes)); all tensors keep it. ``reset(phase=2)`` starts
    the FAR part: at the apple, heading home, with a fresh budget of T steps, so FAR success
    measures the pre-trained skill itself whatever M is.
    """

    def __init__(self, c: float, M: int, T: int, batch: tuple[int, ...], device: torch.device | str = "cpu"):
        self.c, self.M, self.T = float(c), int(M), int(T)
        self.batch = tuple(batch)
        self.device = torch.device(device)
        self._phase_obs = torch.tensor([[1.0, -self.c], [1.0, self.c]], device=self.device)

    def reset(self, phase: int = 1) -> torch.Tensor:
        """Start every episode in ``phase`` with a budget of T steps."""
        z = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.x = z if phase == 1 else z + self.M
        self.phase = z + (phase - 1)  # 0: phase 1 (CLOSE), 1: phase 2 (FAR)
        self.t = 0
        self.done = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        self.reached_apple = self.phase == 1
        self.success = torch.zeros_like(self.done)
        return self.obs()

    def obs(self) -> torch.Tensor:
        return self._phase_obs[self.phase]

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every live episode; returns (obs, reward, alive-before-step). Finished ones stay put."""
        alive = ~self.done
        right = action == RIGHT
        correct = torch.where(self.phase == 0, right, ~right)
        reward = torch.where(correct, 1.0, -1.0) * alive
        self.x = torch.where(alive, (self.x + torch.where(right, 1, -1)).clamp_min(0), self.x)
        to_phase2 = alive & (self.phase == 0) & (self.x >= self.M)
        self.phase = torch.where(to_phase2, 1, self.phase)
        self.reached_apple = self.reached_apple | to_phase2
        home = alive & (self.phase == 1) & (self.x == 0)
        self.success = self.success | home
        self.t += 1
        self.done = self.done | home | (self.t >= self.T)
        return self.obs(), reward, alive


def expert_action(obs: torch.Tensor) -> torch.Tensor:
    """The optimal policy: right in phase 1 (s₂ < 0), left in phase 2 (s₂ > 0)."""
    return torch.where(obs[..., 1] < 0, RIGHT, LEFT)


# --------------------------------------------------------------------------- policy


class LogisticPolicy(RetainablePolicy):
    """P(right | s) = σ(w·s) for ``n_models`` independent weight vectors trained side by side.

    ``dist_params`` returns logits [0, w·s] of shape (models, N, 2). Observations of shape
    (N, 2) are shared by every model; (models, N, 2) gives each model its own.
    """

    family = "categorical"

    def __init__(self, n_models: int = 1, weight: torch.Tensor | None = None):
        super().__init__()
        w = torch.zeros(n_models, 2) if weight is None else weight.detach().clone().reshape(n_models, 2)
        self.weight = nn.Parameter(w)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.dim() == 2:
            z = torch.einsum("nd,md->mn", obs, self.weight)
        else:
            z = torch.einsum("mnd,md->mn", obs.reshape(obs.shape[0], -1, 2), self.weight).reshape(obs.shape[:-1])
        return torch.stack([torch.zeros_like(z), z], dim=-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dist_params(obs)


@torch.no_grad()
def evaluate_policy(policy: LogisticPolicy, env: EnvParams, episodes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Success rates per model: CLOSE (reach the apple from home), FAR (reach home from the apple), full task."""
    n_models = policy.weight.shape[0]
    out = {}
    for name, phase in (("close", 1), ("far", 2)):
        sim = AppleRetrieval(env.c, env.M, env.T, (n_models, episodes), policy.weight.device)
        obs = sim.reset(phase)
        while not bool(sim.done.all()):
            logits = policy.dist_params(obs)
            action = (torch.rand(sim.batch, generator=generator, device=logits.device) < torch.sigmoid(logits[..., 1])).long()
            obs, _, _ = sim.step(action)
        if name == "close":
            out["close"] = sim.reached_apple.float().mean(-1)
            out["full"] = sim.success.float().mean(-1)
        else:
            out["far"] = sim.success.float().mean(-1)
    return out


# --------------------------------------------------------------------------- study steps (pure)


def make_demos(env: EnvParams, cfg: DemoParams) -> dict[str, torch.Tensor]:
    """The optimal expert's demonstrations of the FAR part: phase-2 episodes from the apple."""
    sim = AppleRetrieval(env.c, env.M, env.T, (cfg.episodes,))
    obs = sim.reset(2)
    rec = {"obs": [], "actions": [], "episode": []}
    episode = torch.arange(cfg.episodes)
    while not bool(sim.done.all()):
        action = expert_action(obs)
        live = ~sim.done
        rec["obs"].append(obs[live])
        rec["actions"].append(action[live])
        rec["episode"].append(episode[live])
        obs, _, _ = sim.step(action)
    if not bool(sim.success.all()):
        raise RuntimeError("the AppleRetrieval expert failed to get home; the environment is broken")
    return {k: torch.cat(v) for k, v in rec.items()}


def clone(demos: dict[str, torch.Tensor], cfg: PretrainParams) -> LogisticPolicy:
    """Behavioural cloning (cross-entropy on the expert's actions) from zero weights → π*."""
    gen = torch.Generator().manual_seed(cfg.seed)
    policy = LogisticPolicy(1)
    opt = torch.optim.SGD(policy.parameters(), lr=cfg.lr)
    n = demos["obs"].shape[0]
    for _ in range(cfg.steps):
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
        logits = policy.dist_params(demos["obs"][idx])[0]
        loss = torch.nn.functional.cross_entropy(logits, demos["actions"][idx].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


@torch.no_grad()
def far_states(policy: LogisticPolicy, env: EnvParams, cfg: FarBufferParams) -> dict[str, torch.Tensor]:
    """FAR states visited by π* in phase 2 (from the apple), with π*'s logits on them."""
    gen = torch.Generator().manual_seed(cfg.seed)
    sim = AppleRetrieval(env.c, env.M, env.T, (1, cfg.size))
    obs = sim.reset(2)
    seen = []
    while not bool(sim.done.all()) and sum(len(s) for s in seen) < cfg.size:
        live = ~sim.done
        seen.append(obs[live])
        p_right = torch.sigmoid(policy.dist_params(obs)[..., 1])
        obs, _, _ = sim.step((torch.rand(sim.batch, generator=gen) < p_right).long())
    states = torch.cat(seen)[: cfg.size]
    return {"obs": states, "targets": policy.dist_params(states)[0]}


def retention_context(method: str, pretrained: LogisticPolicy | None, far: dict | None, fisher: dict | None, gen: torch.Generator):
    from retainrl.retention.methods import RetentionContext

    return RetentionContext(
        pretrained=pretrained,
        far_obs=None if far is None else far["obs"],
        far_targets=None if far is None else far["targets"],
        fisher=fisher,
        generator=gen,
    )


def finetune_seeds(
    method: str,
    p: Params,
    pretrained: LogisticPolicy,
    far: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor],
    *,
    env: EnvParams | None = None,
    seeds: int | None = None,
    seed_offset: int = 0,
    progress: bool = True,
    on_eval=None,
) -> tuple[dict[str, torch.Tensor], LogisticPolicy]:
    """Fine-tune ``seeds`` independent copies with one retention method, batched in one model."""
    from retainrl.algos import reinforce
    from retainrl.retention.methods import build_retention

    env = env or p.env
    n = seeds or p.finetune.seeds
    gen = torch.Generator().manual_seed(10_000 * (seed_offset + 1) + hash(method) % 997)
    retention = build_retention(
        method, retention_context(method, pretrained, far, fisher, gen), p.retention, learner=LEARNER, off_policy=reinforce.OFF_POLICY
    )
    if retention.starts_from_pretrained:
        init = pretrained.weight.detach().expand(n, 2)
    else:
        init = p.finetune.scratch_init_std * torch.randn(n, 2, generator=gen)
    policy = LogisticPolicy(n, init)
    curves = reinforce.train(policy, env, p.finetune, retention, gen, on_eval=on_eval, progress=progress, desc=f"apple {method}")
    return curves, policy
