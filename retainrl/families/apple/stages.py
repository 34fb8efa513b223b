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

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from retainrl.core.config import Strict
from retainrl.core.checkpoint import CheckpointParams
from retainrl.learners import reinforce as learner
from retainrl.learners.reinforce import Rollout
from retainrl.pipeline.far_buffer import pi_star_outputs
from retainrl.pipeline.finetune import retention_from, run_seed
from retainrl.retention.methods import RetentionParams, method_list
from retainrl.retention.params import FisherParams
from retainrl.retention.policy import RetainablePolicy

log = logging.getLogger(__name__)

LEFT, RIGHT = 0, 1


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
    methods: method_list(learner.LEARNER, off_policy=learner.OFF_POLICY) = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
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



class SweepParams(Strict):
    """Forgetting against M (at the base c) and against c (at the base M)."""

    methods: method_list(learner.LEARNER, off_policy=learner.OFF_POLICY) = ["finetune", "ewc", "bc"]
    M: list[int] = [5, 10, 20, 30, 40, 50]
    c: list[float] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5]


    @field_validator("M", "c")
    @classmethod
    def _positive(cls, values, info):
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"every {info.field_name} must be > 0 (got {values})")
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
    checkpoint: CheckpointParams = CheckpointParams()

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
    """A batch of independent AppleRetrieval episodes, state arrays of shape ``batch``.

    ``batch`` is a shape (e.g. (models, episodes)); all arrays keep it. The simulator is NumPy:
    on tiny arrays a NumPy op costs about a microsecond against several for a torch op, and the
    rollout never needs gradients (the learner recomputes log-probabilities in one batched torch
    call). ``reset(phase=2)`` starts the FAR part: at the apple, heading home, with a fresh budget
    of T steps, so FAR success measures the pre-trained skill itself whatever M is.
    """

    def __init__(self, c: float, M: int, T: int, batch: tuple[int, ...]):
        self.c, self.M, self.T = float(c), int(M), int(T)
        self.batch = tuple(batch)
        self._phase_obs = np.array([[1.0, -self.c], [1.0, self.c]], dtype=np.float32)

    def reset(self, phase: int = 1) -> np.ndarray:
        """Start every episode in ``phase`` with a budget of T steps."""
        self.x = np.full(self.batch, 0 if phase == 1 else self.M, dtype=np.int64)
        self.phase = np.full(self.batch, phase - 1, dtype=np.int64)  # 0: phase 1 (CLOSE), 1: phase 2 (FAR)
        self.t = 0
        self.done = np.zeros(self.batch, dtype=bool)
        self.reached_apple = self.phase == 1
        self.success = np.zeros(self.batch, dtype=bool)
        return self.obs()

    def obs(self) -> np.ndarray:
        return self._phase_obs[self.phase]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every live episode; returns (obs, reward, alive-before-step). Finished ones stay put."""
        alive = ~self.done
        right = action == RIGHT
        correct = right == (self.phase == 0)
        reward = np.where(correct, 1.0, -1.0).astype(np.float32) * alive
        self.x = np.where(alive, np.maximum(self.x + np.where(right, 1, -1), 0), self.x)
        to_phase2 = alive & (self.phase == 0) & (self.x >= self.M)
        self.phase = np.where(to_phase2, 1, self.phase)
        self.reached_apple |= to_phase2
        home = alive & (self.phase == 1) & (self.x == 0)
        self.success |= home
        self.t += 1
        self.done = self.done | home | (self.t >= self.T)
        return self.obs(), reward, alive


def expert_action(obs: np.ndarray) -> np.ndarray:
    """The optimal policy: right in phase 1 (s₂ < 0), left in phase 2 (s₂ > 0)."""
    return np.where(obs[..., 1] < 0, RIGHT, LEFT)


def sample_actions(weight: np.ndarray, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw right/left for obs (models, N, 2) under P(right) = σ(w·s), weight (models, 2)."""
    z = np.einsum("mnd,md->mn", obs, weight)
    return (rng.random(z.shape) * (1.0 + np.exp(-z)) < 1.0).astype(np.int64)


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


def evaluate_policy(policy: LogisticPolicy, env: EnvParams, episodes: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Success rates per model: CLOSE (reach the apple from home), FAR (reach home from the apple), full task."""
    weight = policy.weight.detach().cpu().numpy()
    out = {}
    for name, phase in (("close", 1), ("far", 2)):
        sim = AppleRetrieval(env.c, env.M, env.T, (weight.shape[0], episodes))
        obs = sim.reset(phase)
        while not sim.done.all():
            obs, _, _ = sim.step(sample_actions(weight, obs, rng))
        if name == "close":
            out["close"] = torch.from_numpy(sim.reached_apple.mean(-1))
            out["full"] = torch.from_numpy(sim.success.mean(-1))
        else:
            out["far"] = torch.from_numpy(sim.success.mean(-1))
    return out


def rollout(policy: LogisticPolicy, env: EnvParams, episodes: int, rng: np.random.Generator) -> Rollout:
    """Play ``episodes`` episodes per model (NumPy simulator); arrays come back as tensors."""
    weight = policy.weight.detach().cpu().numpy()
    sim = AppleRetrieval(env.c, env.M, env.T, (weight.shape[0], episodes))
    obs = sim.reset(1)
    rec_obs, rec_act, rec_rew, rec_alive = [], [], [], []
    while not sim.done.all():
        action = sample_actions(weight, obs, rng)
        rec_obs.append(obs)
        rec_act.append(action)
        obs, reward, alive = sim.step(action)
        rec_rew.append(reward)
        rec_alive.append(alive)
    dev = policy.weight.device
    return Rollout(
        obs=torch.from_numpy(np.stack(rec_obs, 1)).to(dev),
        actions=torch.from_numpy(np.stack(rec_act, 1)).to(dev),
        rewards=torch.from_numpy(np.stack(rec_rew, 1)).to(dev),
        alive=torch.from_numpy(np.stack(rec_alive, 1)).to(dev),
        success=torch.from_numpy(sim.success).to(dev),
    )


# --------------------------------------------------------------------------- study steps (pure)


def make_demos(env: EnvParams, cfg: DemoParams) -> dict[str, torch.Tensor]:
    """The optimal expert's demonstrations of the FAR part: phase-2 episodes from the apple."""
    sim = AppleRetrieval(env.c, env.M, env.T, (cfg.episodes,))
    obs = sim.reset(2)
    rec = {"obs": [], "actions": [], "episode": []}
    episode = np.arange(cfg.episodes)
    while not sim.done.all():
        action = expert_action(obs)
        live = ~sim.done
        rec["obs"].append(obs[live])
        rec["actions"].append(action[live])
        rec["episode"].append(episode[live])
        obs, _, _ = sim.step(action)
    if not sim.success.all():
        raise RuntimeError("the AppleRetrieval expert failed to get home; the environment is broken")
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in rec.items()}


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
def visit_far(policy: LogisticPolicy, env: EnvParams, cfg: FarBufferParams) -> torch.Tensor:
    """FAR states visited by π* in phase 2 (from the apple): ``far_buffer.size`` observations."""
    rng = np.random.default_rng(cfg.seed)
    weight = policy.weight.detach().cpu().numpy()
    sim = AppleRetrieval(env.c, env.M, env.T, (1, cfg.size))
    obs = sim.reset(2)
    seen: list[np.ndarray] = []
    while not sim.done.all() and sum(len(s) for s in seen) < cfg.size:
        seen.append(obs[~sim.done])
        obs, _, _ = sim.step(sample_actions(weight, obs, rng))
    return torch.from_numpy(np.concatenate(seen)[: cfg.size])


def far_buffer_in_memory(policy: LogisticPolicy, env: EnvParams, cfg: FarBufferParams) -> dict[str, torch.Tensor]:
    """What the far_buffer stage stores, without the files (the sweep remakes it per value of M or c)."""
    obs = visit_far(policy, env, cfg)
    return {"obs": obs, "targets": torch.as_tensor(pi_star_outputs(policy, obs.numpy())["targets"])}


def finetune_seeds(
    method: str,
    p: Params,
    pretrained: LogisticPolicy,
    far: dict[str, torch.Tensor] | None,
    fisher: dict[str, torch.Tensor] | None,
    *,
    env: EnvParams | None = None,
    seeds: int | None = None,
    seed_offset: int = 0,
    progress: bool = True,
    on_eval=None,
    checkpoint=None,
    retention=None,
) -> tuple[dict[str, torch.Tensor], LogisticPolicy]:
    """Fine-tune ``seeds`` independent copies with one retention method, batched in one model.

    The run draws from :func:`retainrl.pipeline.finetune.run_seed` (``method``, ``seed_offset``),
    the rule every family follows. ``retention``: a function of the run's generator giving its
    retention method (the finetune stage's, built from the method's needs); without it the method
    is built from ``pretrained``/``far``/``fisher`` in memory (the sweep, tests).
    ``checkpoint``: a :class:`retainrl.core.checkpoint.Checkpoint` to save to and resume from."""
    env = env or p.env
    n = seeds or p.finetune.seeds
    seed = run_seed(method, seed_offset)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    if retention is None:
        def retention(g):
            return retention_from(method, p.retention, g, pretrained=pretrained, fisher=fisher,
                                  far_obs=None if far is None else far["obs"], far_targets=None if far is None else far["targets"])
    method_ = retention(gen)
    if method_.starts_from_pretrained:
        init = pretrained.weight.detach().expand(n, 2)
    else:
        init = p.finetune.scratch_init_std * torch.randn(n, 2, generator=gen)
    policy = LogisticPolicy(n, init)
    curves = learner.train(
        policy,
        lambda pol, episodes, r: rollout(pol, env, episodes, r),
        lambda pol, r: evaluate_policy(pol, env, p.finetune.eval_episodes, r),
        p.finetune, method_, rng, gen, on_eval=on_eval, progress=progress, desc=f"apple {method}", checkpoint=checkpoint,
    )
    return curves, policy


FROZEN_STREAM = 9_999  # the frozen-π* row's random stream: apart from every method's (``run_seed``)


def frozen_curves(p: Params, pretrained: LogisticPolicy, iterations: np.ndarray) -> dict[str, np.ndarray]:
    """π* itself, never updated, evaluated at every checkpoint of the methods' schedule with as many
    seeds and ``finetune.eval_episodes`` sampled episodes as a method: the noise floor.

    Why: success is a sampled rate (500 episodes per checkpoint and seed), so start − min over 81
    checkpoints is positive for a policy that never changes. A method's forgetting is evidence of
    forgetting only above this row's. {close, far, full}: (seeds, checkpoints).
    """
    n = p.finetune.seeds
    policy = LogisticPolicy(n, pretrained.weight.detach().expand(n, 2))
    rng = np.random.default_rng(10_000 + FROZEN_STREAM)
    evals = [evaluate_policy(policy, p.env, p.finetune.eval_episodes, rng) for _ in iterations]
    return {k: np.stack([e[k].numpy() for e in evals], axis=1) for k in ("close", "far", "full")}


# --------------------------------------------------------------------------- stage API (I/O)


def load_pretrained(p: Params, paths, device=None) -> LogisticPolicy:
    """π* on ``device`` (the shared stages put the states they hand it there; rollouts run in NumPy)."""
    from retainrl.core.artifacts import load_tensors

    t = load_tensors(paths.pretrained / "policy.safetensors", "pre-trained policy (pretrain stage)")
    return LogisticPolicy(1, t["weight"]).to(device or "cpu")


def collect_demos(p: Params, paths, device) -> None:
    from retainrl.core.artifacts import atomic_path, save_json, save_npz

    demos = make_demos(p.env, p.demos)
    with atomic_path(paths.demos, directory=True) as out:
        save_npz(out / "demos.npz", **{k: v.numpy() for k, v in demos.items()})
        save_json(out / "summary.json", {"episodes": p.demos.episodes, "transitions": int(demos["obs"].shape[0])})
    log.info("expert demos: %d phase-2 episodes, %d transitions", p.demos.episodes, demos["obs"].shape[0])


def pretrain(p: Params, paths, device) -> None:
    from retainrl.core.artifacts import atomic_path, load_npz, save_json, save_tensors

    arrays = load_npz(paths.demos / "demos.npz", "expert demonstrations (collect_demos stage)", ("obs", "actions"))
    if arrays["obs"].shape[0] == 0:
        raise ValueError(f"{paths.demos / 'demos.npz'}: no demonstrations to clone")
    policy = clone({k: torch.as_tensor(v) for k, v in arrays.items()}, p.pretrain)
    rng = np.random.default_rng(p.pretrain.seed)
    scores = {k: float(v[0]) for k, v in evaluate_policy(policy, p.env, p.finetune.eval_episodes, rng).items()}
    with atomic_path(paths.pretrained, directory=True) as out:
        save_tensors(out / "policy.safetensors", {"weight": policy.weight})
        save_json(out / "scores.json", scores)
    log.info("π*: w=%s, success close=%.2f far=%.2f full=%.2f", policy.weight.tolist(), scores["close"], scores["far"], scores["full"])


def far_states(p: Params, paths, pretrained: LogisticPolicy, device) -> dict[str, np.ndarray]:
    """The generic far_buffer stage's question: which states are FAR (π*'s own phase-2 walk)."""
    return {"obs": visit_far(pretrained, p.env, p.far_buffer).numpy()}


def train(p: Params, paths, device, run) -> None:
    """The generic finetune stage's loop: every seed of one method batched in one model, CLOSE/FAR/full
    success logged through dvclive; curves and weights into ``run.out``."""
    from dvclive import Live

    from retainrl.core.artifacts import save_npz, save_tensors

    ckpt = run.checkpoint()
    with Live(str(run.out / "live"), save_dvc_exp=False, dvcyaml=None, report=None) as live:

        def on_eval(it, scores):
            live.step = it
            for k, v in scores.items():
                live.log_metric(f"{k}_success", float(v.mean()))
                for s, x in enumerate(v.tolist()):
                    live.log_metric(f"seeds/{k}_success_{s}", x, plot=False)

        pretrained = run.pretrained() if run.cls.starts_from_pretrained else None
        curves, policy = finetune_seeds(run.method, p, pretrained, None, None, on_eval=on_eval, checkpoint=ckpt,
                                        retention=lambda gen: run.retention(0, gen))
    save_npz(run.out / "curves.npz", **{k: v.numpy() for k, v in curves.items()})
    save_tensors(run.out / "policy.safetensors", {"weight": policy.weight})
