"""Soft Actor-Critic with many independent models (seeds) stacked in one set of weight tensors.

Why stacked weights: on a CPU, a 4×256 MLP on a batch of 128 is dominated by per-op overhead
(Python, dispatch, small GEMMs). Storing the weights of M models as (M, in, out) tensors and
running one ``baddbmm`` per layer trains M seeds for little more than the cost of one. Each
model's loss is averaged over its own batch and the models' losses are *summed*, so every
model gets exactly the gradient it would get alone, and Adam (element-wise) keeps them
independent: stacking is a speed trick, not a change of algorithm.

The agent (:class:`SACAgent`) holds the actor and the two critics of all models. Parameter
names starting with ``critic`` are the critic's (retention leaves them alone by default); the
target critics and the entropy temperature live in :class:`SACLearner`, outside the policy, so
no retention method can touch them.

Multi-head: the last layer of every network has one output block per stage; the stage id is a
one-hot block of the observation and selects the block (Continual-World-style heads).

The learner loop, top to bottom (:meth:`SACLearner.train`): act in M environments (one per
model), store the transitions in one replay buffer whose slots hold all models' data side by
side, and every ``update_every`` env steps do as many SAC updates (critic TD with clipped double
Q and terminal masks, actor with the retention method's auxiliary loss, temperature towards the
target entropy, Polyak averaging), evaluating on a schedule. No method-specific branches: the
method object supplies its loss and replay set-up and says whether it wants online states or
starts from π*.

Resume (``train(checkpoint=...)``): after a whole env step (its update burst and evaluation
included) the learner's state (weights, targets, temperature, the three Adam states, the update
counter, the torch stream), the filled part of the replay buffer and every environment's state
(``env.get_state()``; ``env.set_state(s)`` returns the observation it restored, which must be the
saved one) go into the checkpoint, so a resumed run is the uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from retainrl.core.checkpoint import Checkpoint
from retainrl.retention.methods import RetentionMethod
from retainrl.retention.policy import RetainablePolicy
from retainrl.retention.replay import ProtectedReplay

log = logging.getLogger(__name__)

OFF_POLICY = True
LEARNER = "sac"
LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0


class StackedMLP(nn.Module):
    """M independent MLPs: Linear → LayerNorm → LeakyReLU → (Linear → LeakyReLU)* → Linear.

    Weights are (M, in, out); inputs (M, B, in). Each model is initialised like ``nn.Linear``
    (uniform ±1/√fan_in) from its own slice of the generator stream.
    """

    def __init__(self, n_models: int, n_in: int, hidden: int, layers: int, n_out: int, generator: torch.Generator | None = None):
        super().__init__()
        dims = [n_in] + [hidden] * layers + [n_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter((torch.rand(n_models, a, b, generator=generator) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(n_models, b, generator=generator) * 2 - 1) * bound))
        self.ln_weight = nn.Parameter(torch.ones(n_models, hidden))
        self.ln_bias = nn.Parameter(torch.zeros(n_models, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b.unsqueeze(1), x, w)
            if i == 0:
                x = F.layer_norm(x, x.shape[-1:]) * self.ln_weight.unsqueeze(1) + self.ln_bias.unsqueeze(1)
            if i < n - 1:
                x = F.leaky_relu(x)
        return x


@dataclass(frozen=True)
class AgentSpec:
    """Shapes of the agent: observation = [base obs, stage time, one-hot stage id (n_stages)]."""

    obs_dim: int
    act_dim: int
    n_stages: int
    hidden: int = 256
    layers: int = 4

    @property
    def stage_slice(self) -> slice:
        return slice(self.obs_dim - self.n_stages, self.obs_dim)


class SACAgent(RetainablePolicy):
    """Actor and twin critics of M stacked models; ``dist_params`` is the pre-tanh Gaussian."""

    family = "gaussian"

    def __init__(self, spec: AgentSpec, n_models: int = 1, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = spec
        self.n_models = n_models
        s = spec
        self.actor = StackedMLP(n_models, s.obs_dim, s.hidden, s.layers, s.n_stages * 2 * s.act_dim, generator)
        self.critic1 = StackedMLP(n_models, s.obs_dim + s.act_dim, s.hidden, s.layers, s.n_stages, generator)
        self.critic2 = StackedMLP(n_models, s.obs_dim + s.act_dim, s.hidden, s.layers, s.n_stages, generator)
        # Fixed input standardisation (set once from the demonstrations, then never trained):
        # object positions vary by a few centimetres, which an unscaled MLP barely resolves.
        self.register_buffer("obs_shift", torch.zeros(n_models, 1, s.obs_dim))
        self.register_buffer("obs_scale", torch.ones(n_models, 1, s.obs_dim))

    def set_normalizer(self, obs: torch.Tensor, dims: int, min_scale: float = 0.05) -> None:
        """Standardise the first ``dims`` observation entries with the mean/std of ``obs``
        (the stage time and stage one-hot stay as they are)."""
        with torch.no_grad():
            self.obs_shift.zero_()
            self.obs_scale.fill_(1.0)
            self.obs_shift[..., :dims] = obs[:, :dims].mean(0)
            self.obs_scale[..., :dims] = obs[:, :dims].std(0).clamp_min(min_scale)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_shift) / self.obs_scale

    # -- shapes ---------------------------------------------------------------------------
    def _stack(self, obs: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(B, D) → shared by every model; (M, B, D) → one batch per model; (K, B, D) with a
        single model → flattened (π* evaluated on several models' online states)."""
        if obs.dim() == 2:
            return obs.unsqueeze(0).expand(self.n_models, -1, -1), (self.n_models, obs.shape[0])
        if obs.dim() == 3 and obs.shape[0] == self.n_models:
            return obs, tuple(obs.shape[:2])
        if obs.dim() == 3 and self.n_models == 1:
            return obs.reshape(1, -1, obs.shape[-1]), tuple(obs.shape[:2])
        raise ValueError(f"observations of shape {tuple(obs.shape)} do not fit {self.n_models} stacked models")

    def stage_of(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[..., self.spec.stage_slice].argmax(-1)

    def _head(self, out: torch.Tensor, stage: torch.Tensor, width: int) -> torch.Tensor:
        out = out.reshape(*out.shape[:-1], self.spec.n_stages, width)
        idx = stage.reshape(*stage.shape, 1, 1).expand(*stage.shape, 1, width)
        return out.gather(-2, idx).squeeze(-2)

    # -- policy ---------------------------------------------------------------------------
    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        x, shape = self._stack(obs)
        raw = self._head(self.actor(self._norm(x)), self.stage_of(x), 2 * self.spec.act_dim)
        mean, pre_std = raw.chunk(2, dim=-1)
        # A smooth squash keeps log σ in range and its gradient alive (a hard clamp kills it).
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(pre_std) + 1)
        return torch.cat([mean, log_std], -1).reshape(*shape, -1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dist_params(obs)

    def sample(self, obs: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """Tanh-squashed action and its log-probability (reparameterised; per model and state)."""
        mean, log_std = self.dist_params(obs).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean), None
        if generator is not None and generator.device != mean.device:  # CPU generator, CUDA model
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        else:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * noise
        a = torch.tanh(u)
        logp = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp

    # -- critics --------------------------------------------------------------------------
    def q(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, shape = self._stack(obs)
        a = act if act.dim() == 3 else act.unsqueeze(0).expand(self.n_models, -1, -1)
        xa = torch.cat([self._norm(x), a.reshape(x.shape[0], x.shape[1], -1)], -1)
        stage = self.stage_of(x)
        q1 = self._head(self.critic1(xa), stage, 1).squeeze(-1).reshape(shape)
        q2 = self._head(self.critic2(xa), stage, 1).squeeze(-1).reshape(shape)
        return q1, q2

    # -- stacking -------------------------------------------------------------------------
    def replicate(self, n_models: int) -> "SACAgent":
        """A stack of ``n_models`` copies of this (single-model) agent: every seed starts at θ*."""
        if self.n_models != 1:
            raise ValueError("replicate() needs a single-model agent")
        out = SACAgent(self.spec, n_models)
        out.load_state_dict({k: v.detach().expand(n_models, *v.shape[1:]).clone() for k, v in self.state_dict().items()})
        return out.to(next(self.parameters()).device)

    def select(self, index: int) -> "SACAgent":
        """Model ``index`` of the stack as a single-model agent."""
        out = SACAgent(self.spec, 1)
        out.load_state_dict({k: v.detach()[index : index + 1].clone() for k, v in self.state_dict().items()})
        return out.to(next(self.parameters()).device)

    def actor_parameters(self):
        return [p for n, p in self.named_parameters() if not self.is_critic_param(n)]

    def critic_parameters(self):
        return [p for n, p in self.named_parameters() if self.is_critic_param(n)]


@dataclass
class SACConfig:
    """The learner's knobs (filled from the family's params)."""

    batch_size: int = 128
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: −act_dim
    update_every: int = 50
    updates_per_step: float = 1.0
    random_steps: int = 1000  # uniform random actions, only for models not started from π*


def replay_specs(spec: AgentSpec, n_models: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """One replay slot holds one transition of every model (models side by side)."""
    m, d, a = n_models, spec.obs_dim, spec.act_dim
    return {
        "obs": ((m, d), torch.float32),
        "act": ((m, a), torch.float32),
        "rew": ((m,), torch.float32),
        "next_obs": ((m, d), torch.float32),
        "terminal": ((m,), torch.float32),
    }


class SACLearner:
    """SAC updates for a stacked agent (targets and temperature kept here, outside the policy)."""

    def __init__(self, agent: SACAgent, cfg: SACConfig, retention: RetentionMethod, generator: torch.Generator):
        self.agent = agent
        self.cfg = cfg
        self.retention = retention
        self.gen = generator
        self.device = next(agent.parameters()).device
        self.target = copy.deepcopy(agent).requires_grad_(False)
        m = agent.n_models
        self.log_alpha = torch.full((m,), math.log(cfg.init_alpha), device=self.device, requires_grad=True)
        self.target_entropy = -float(agent.spec.act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.actor_opt = torch.optim.Adam(agent.actor_parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(agent.critic_parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.updates = 0

    def get_state(self) -> dict:
        """Everything an update changes or draws from (for a checkpoint)."""
        return {"agent": self.agent.state_dict(), "target": self.target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "updates": self.updates, "generator": self.gen.get_state()}

    def set_state(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.updates = state["updates"]
        self.gen.set_state(state["generator"])

    def critic_loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clipped double-Q TD error; terminal transitions (success or timeout) do not bootstrap."""
        with torch.no_grad():
            a2, logp2 = self.agent.sample(b["next_obs"], generator=self.gen)
            q1t, q2t = self.target.q(b["next_obs"], a2)
            alpha = self.log_alpha.exp().unsqueeze(1)
            y = b["rew"] + self.cfg.gamma * (1 - b["terminal"]) * (torch.min(q1t, q2t) - alpha * logp2)
        q1, q2 = self.agent.q(b["obs"], b["act"])
        return ((q1 - y).pow(2) + (q2 - y).pow(2)).mean(1).sum()

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, logp = self.agent.sample(obs, generator=self.gen)
        critic = self.agent.critic_parameters()
        for c in critic:  # the actor's loss must not leave gradients (or spend time) on the critics
            c.requires_grad_(False)
        try:
            q1, q2 = self.agent.q(obs, a)
        finally:
            for c in critic:
                c.requires_grad_(True)
        alpha = self.log_alpha.exp().detach().unsqueeze(1)
        return (alpha * logp - torch.min(q1, q2)).mean(1).sum(), logp

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAC step on a batch whose tensors are (M, B, ...)."""
        loss_q = self.critic_loss(b)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_q.backward()
        self.critic_opt.step()

        loss_pi, logp = self.actor_loss(b["obs"])
        online = b["obs"] if self.retention.uses_online_states else None
        aux = self.retention.aux_loss(self.agent, online, self.updates)
        total = loss_pi if aux is None else loss_pi + aux
        self.actor_opt.zero_grad(set_to_none=True)
        total.backward()
        self.actor_opt.step()

        loss_alpha = -(self.log_alpha.unsqueeze(1) * (logp.detach() + self.target_entropy)).mean(1).sum()
        self.alpha_opt.zero_grad(set_to_none=True)
        loss_alpha.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            src = self.agent.critic_parameters()
            dst = self.target.critic_parameters()
            torch._foreach_lerp_(dst, src, self.cfg.tau)
        self.updates += 1
        return {"critic": loss_q.item(), "actor": loss_pi.item(), "aux": 0.0 if aux is None else aux.item()}


def to_models_first(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replay samples are (B, M, ...); the networks want (M, B, ...)."""
    return {k: v.transpose(0, 1) for k, v in batch.items()}


class VecEnv:
    """M environments, one per stacked model, stepped in lockstep with auto-reset.

    ``make(i)`` builds environment i; it must offer ``reset() -> obs`` and
    ``step(action) -> (obs, reward, terminal, done, info)``.
    """

    def __init__(self, envs: list):
        self.envs = envs
        self.obs = np.stack([e.reset() for e in envs]).astype(np.float32)

    def step(self, actions: np.ndarray):
        next_obs, rew, term, done, infos = [], [], [], [], []
        for env, a in zip(self.envs, actions):
            o, r, t, d, info = env.step(a)
            next_obs.append(o)
            rew.append(r)
            term.append(t)
            done.append(d)
            infos.append(info)
        next_obs = np.stack(next_obs).astype(np.float32)
        obs = self.obs
        self.obs = np.stack([e.reset() if d else o for e, d, o in zip(self.envs, done, next_obs)]).astype(np.float32)
        return obs, next_obs, np.asarray(rew, np.float32), np.asarray(term, np.float32), np.asarray(done), infos

    def get_state(self) -> dict:
        return {"envs": [e.get_state() for e in self.envs], "obs": self.obs.copy()}

    def set_state(self, state: dict) -> None:
        """Put every environment back where it was; fail loudly if one does not come back to the
        observation it was saved at (a resumed run would silently differ)."""
        for i, (env, s) in enumerate(zip(self.envs, state["envs"])):
            obs = np.asarray(env.set_state(s), np.float32)
            if not np.array_equal(obs, state["obs"][i]):
                raise RuntimeError(f"environment {i} did not return to its saved state: this checkpoint cannot be resumed "
                                   f"exactly (remove it to start over)")
        self.obs = state["obs"].copy()


def replay_state(replay: ProtectedReplay) -> dict:
    """The filled slots of ``replay`` and its cursors (slots beyond ``len`` are still zeros)."""
    n = len(replay)
    return {"data": {k: v[:n].cpu().clone() for k, v in replay.data.items()}, "n_protected": replay.n_protected,
            "cursor": replay.cursor, "n_online": replay.n_online}


def load_replay_state(replay: ProtectedReplay, state: dict) -> None:
    for k, v in replay.data.items():
        v.zero_()
        v[: len(state["data"][k])] = state["data"][k].to(v.device)
    replay.n_protected, replay.cursor, replay.n_online = state["n_protected"], state["cursor"], state["n_online"]


def train(
    learner: SACLearner,
    venv: VecEnv,
    replay: ProtectedReplay,
    steps: int,
    *,
    eval_every: int,
    on_eval: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "sac",
    checkpoint: Checkpoint | None = None,
) -> dict[str, float]:
    """Run ``steps`` env steps per model with updates in bursts; call ``on_eval(step)`` at 0 and on schedule.

    With ``checkpoint``, the run's state is saved after a step when it is due and a run that finds
    one resumes after that step (the module docstring says what is saved). ``on_eval`` is not
    called again for the evaluations before the checkpoint: what the caller keeps of them (curves,
    the evaluation envs) it attaches to the checkpoint itself (:meth:`Checkpoint.attach`).
    """
    cfg, agent = learner.cfg, learner.agent
    learner.retention.setup_replay(replay)
    random_steps = 0 if learner.retention.starts_from_pretrained else cfg.random_steps
    n_updates = max(1, round(cfg.update_every * cfg.updates_per_step))
    m = agent.n_models
    stats: dict[str, float] = {}

    def state(step: int) -> dict:
        return {"progress": f"step {step}/{steps}", "step": step, "learner": learner.get_state(),
                "replay": replay_state(replay), "envs": venv.get_state(), "stats": stats}

    start = 1
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        learner.set_state(saved["learner"])
        load_replay_state(replay, saved["replay"])
        venv.set_state(saved["envs"])
        stats = saved["stats"]
        start = saved["step"] + 1
    elif on_eval:
        on_eval(0)
    for step in tqdm(range(start, steps + 1), desc=desc, disable=not progress, mininterval=2.0, initial=start - 1, total=steps):
        if step <= random_steps:
            actions = torch.rand(m, agent.spec.act_dim, generator=learner.gen) * 2 - 1
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(venv.obs, device=learner.device).unsqueeze(1)
                actions = agent.sample(obs_t, generator=learner.gen)[0].squeeze(1).cpu()
        obs, next_obs, rew, term, done, _ = venv.step(actions.numpy())
        replay.add(
            {
                "obs": torch.as_tensor(obs).unsqueeze(0),
                "act": actions.unsqueeze(0).float(),
                "rew": torch.as_tensor(rew).unsqueeze(0),
                "next_obs": torch.as_tensor(next_obs).unsqueeze(0),
                "terminal": torch.as_tensor(term).unsqueeze(0),
            }
        )
        if step % cfg.update_every == 0 and len(replay) >= cfg.batch_size:
            for _ in range(n_updates):
                stats = learner.update(to_models_first(replay.sample(cfg.batch_size, learner.gen)))
        if on_eval and (step % eval_every == 0 or step == steps):
            on_eval(step)
        if checkpoint is not None and step < steps:
            checkpoint.maybe_save(lambda: state(step))
    return stats
