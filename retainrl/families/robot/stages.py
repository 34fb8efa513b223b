"""RoboticSequence: Meta-World v3 tasks stitched into one long episode (SAC, state coverage gap).

The sequence (default drawer-close → peg-unplug-side → push-wall; the ``paper`` profile: the
study's hammer → push → peg-unplug-side → push-wall) is one episode: a stage ends
on success, and the next stage's task starts at once with a fresh clock, or after T steps
(the episode ends). For SAC both are terminal: no bootstrapping across a success or a timeout.
On success the reward becomes r' = β·r·(T − t) (t = steps taken in the stage, the successful
one included), so finishing early pays as much as staying in the success state would.

The agent's observation is [Meta-World obs (39, goal observable), t/T, one-hot stage id];
the stage id also selects one output head per stage in every network. Object and goal
positions are drawn anew at every stage start.

CLOSE = the first stages (drawer-close; the study: hammer, push), FAR = a suffix
(peg-unplug-side, push-wall). π* is cloned from Meta-World's scripted experts on FAR only, so
fine-tuning from π* first spends its capacity on CLOSE, where π* has no skill, and forgets FAR
before it ever gets there. Why drawer-close: of the CLOSE candidates probed at the default
budget (3000 env steps per seed), it is the only one SAC gets any success on: reach,
button-press-topdown and window-close stay at 0 (``experiments/probe_robot_close.py``), as the
study's hammer → push did for every method in the earlier default runs. A CLOSE nobody passes
hides the study's payoff, which is measured on the whole sequence.
Starting an episode at stage k (``reset(stage=k)``) is how FAR is entered for evaluation.

Pre-training (a choice, documented because it matters). The study's π* was SAC trained on the
FAR stages; ours is built from the scripted experts, in one ``pretrain`` stage:

1. the actor is cloned from the experts (MSE on the action plus a σ fit, with DAgger rounds
   labelled by the expert): this is what makes π* good on FAR in minutes;
2. exploration data: π*'s own FAR episodes with Gaussian noise on its actions
   (``pretrain.explore_episodes``, ``explore_noise``), so the critic sees actions around π*'s;
3. the critics are regressed on the Monte-Carlo returns of all those (complete) FAR episodes,
   then refined by offline TD with SAC's soft targets, π* fixed (``fit_critic``; the fit against
   held-out returns is saved in ``scores.json``);
4. EM's memory is a uniform sample of those transitions (10% of the replay, as in the study).

Why step 2: a critic fitted on expert-like actions only has an unreliable action-gradient on
FAR states. Step 2 widens its data, and EM's memory then holds π*'s own exploratory transitions
like the study's (whose EM kept transitions of SAC pre-training) — but it does not save EM here.
Why the regression in step 3: offline TD alone left the critic at Q ≈ 17 where the returns
average ≈ 570 (held-out correlation 0.40); the success bonus puts returns in the thousands and TD
propagates them only as fast as the target network moves.

Known limitation, measured (EM): any SAC actor update on FAR states destroys the cloned skills
within a few hundred updates, whatever the critic. Offline SAC on EM's memory alone (what EM's
first updates are) takes both FAR stages from 100% to ≤ 10% within 250 updates with the old TD
critic, with the Monte-Carlo-fitted critic (held-out correlation 0.99), with a conservative
(CQL-style) critic, with no entropy bonus (α = 0), and (by 500 updates) with a 10× smaller actor
learning rate. Online SAC on the FAR stages from π* (RLPD-style: half of every batch from the
pre-training data) drops both to 0% by 2,500 steps and brings push-wall back to 80% by 20,000,
peg-unplug-side not yet. The scripted experts are precise high-gain controllers whose success
hinges on centimetres, finer than any critic we can fit resolves; a cloned actor, unlike the
study's SAC-trained π*, does not sit at its critic's maximum, so SAC's actor loss moves it away.
A SAC-trained π* (long online training on FAR, the study's recipe) is the fix; it is not
affordable on the 2-core default profile.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from retainrl.core.config import Strict
from retainrl.core.checkpoint import CheckpointParams
from retainrl.learners import sac as learner
from retainrl.pipeline.finetune import retention_from, run_seed
from retainrl.retention.methods import RetentionParams, method_list
from retainrl.retention.params import BCParams, EMParams, EWCParams, FisherParams, KSParams, L2Params

log = logging.getLogger(__name__)

BASE_OBS_DIM = 39
ACT_DIM = 4

#: Meta-World v3 tasks that have a scripted expert in ``metaworld.policies`` (names without "-v3").
KNOWN_TASKS = (
    "assembly basketball bin-picking box-close button-press-topdown button-press-topdown-wall button-press "
    "button-press-wall coffee-button coffee-pull coffee-push dial-turn disassemble door-close door-lock door-open "
    "door-unlock drawer-close drawer-open faucet-close faucet-open hammer hand-insert handle-press-side handle-press "
    "handle-pull-side handle-pull lever-pull peg-insertion-side peg-unplug-side pick-out-of-hole pick-place "
    "pick-place-wall plate-slide-back-side plate-slide-back plate-slide-side plate-slide push-back push push-wall "
    "reach reach-wall shelf-place soccer stick-pull stick-push sweep-into sweep window-close window-open"
).split()


# --------------------------------------------------------------------------- params


class EnvParams(Strict):
    tasks: list[str] = ["drawer-close", "peg-unplug-side", "push-wall"]
    #: The FAR stages: a non-empty proper suffix of ``tasks`` (π* is trained on them only).
    far: list[str] = ["peg-unplug-side", "push-wall"]
    T: int = Field(200, gt=0, description="step limit per stage")
    beta: float = Field(1.5, ge=0, description="success bonus r' = beta * r * (T - t)")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks):
        unknown = [t for t in tasks if t not in KNOWN_TASKS]
        if unknown:
            raise ValueError(f"unknown Meta-World task(s) {unknown}; known: {', '.join(KNOWN_TASKS)}")
        if len(tasks) < 2:
            raise ValueError(f"a sequence needs at least two tasks, a CLOSE and a FAR part (got {tasks})")
        return tasks

    @field_validator("far")
    @classmethod
    def _far_suffix(cls, far, info: ValidationInfo):
        tasks = info.data.get("tasks")
        if tasks is None:  # tasks already failed; its own error says why
            return far
        if not far or len(far) >= len(tasks) or tasks[len(tasks) - len(far) :] != far:
            raise ValueError(f"must be a non-empty proper suffix of tasks {tasks} (got {far}); CLOSE is what comes before it")
        return far

    @property
    def n_stages(self) -> int:
        return len(self.tasks)

    @property
    def far_stages(self) -> list[int]:
        return list(range(self.n_stages - len(self.far), self.n_stages))

    @property
    def obs_dim(self) -> int:
        return BASE_OBS_DIM + 1 + self.n_stages


class DemoParams(Strict):
    episodes: int = Field(40, gt=0, description="expert episodes per FAR stage (failures are dropped)")
    seed: int = 0


class PretrainParams(Strict):
    """BC of the actor with DAgger rounds labelled by the scripted expert, exploratory FAR
    episodes, then offline TD for the critics (see the module docstring for why)."""

    bc_steps: int = Field(2000, gt=0, description="BC gradient steps per round")
    dagger_rounds: int = Field(2, ge=0)
    dagger_episodes: int = Field(10, gt=0, description="π* episodes per FAR stage per DAgger round")
    #: Critic pre-training: regression on Monte-Carlo returns, then offline TD (see ``fit_critic``).
    critic_mc_steps: int = Field(3000, ge=0)
    critic_steps: int = Field(1500, ge=0, description="offline TD steps after the Monte-Carlo regression")
    #: π* episodes per FAR stage with Gaussian noise on its actions, for the critic and EM's memory.
    explore_episodes: int = Field(20, ge=0)
    explore_noise: float = Field(0.3, ge=0, description="std of the Gaussian noise added to π*'s action in [-1, 1]")
    #: Online SAC on the FAR stages only (episodes start at the first FAR stage and run through the
    #: rest), from the cloned π* and its pre-trained critics, with every pre-training transition
    #: kept in the replay, using ``finetune``'s SAC settings. The study's π* was SAC-trained; 0
    #: keeps π* cloned (the default profile: on 2 cores 20k such steps first destroy the cloned π*
    #: and then regain only part of it, experiments/results/robot_em_probe.json ``online_far``).
    online_steps: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, gt=0)
    eval_episodes: int = Field(20, gt=0)
    #: π* must succeed on each FAR stage run alone in at least this share of episodes.
    gate: float = Field(0.9, ge=0, le=1)
    seed: int = 0


class FarBufferParams(Strict):
    size: int = Field(4000, gt=0)
    seed: int = 0


class NetParams(Strict):
    hidden: int = Field(256, gt=0)
    layers: int = Field(4, ge=1)


class FinetuneParams(Strict):
    methods: method_list(learner.LEARNER, off_policy=learner.OFF_POLICY) = ["scratch", "finetune", "l2", "ewc", "bc", "ks", "em"]
    seeds: int = Field(3, gt=0)
    steps: int = Field(3000, gt=0, description="env steps per seed")
    batch_size: int = Field(128, gt=0)
    replay_size: int = Field(100_000, gt=0)
    lr: float = Field(1e-3, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    init_alpha: float = Field(1.0, gt=0)
    update_every: int = Field(50, gt=0)
    updates_per_step: float = Field(0.5, gt=0, description="SAC updates per env step (the study: 1)")
    random_steps: int = Field(1000, ge=0, description="uniform random actions at the start (scratch only)")
    eval_every: int = Field(500, gt=0)
    eval_episodes: int = Field(5, gt=0)
    #: Save the actor of every model at these many evenly spaced points (plus the final full agent).
    checkpoints: int = Field(2, ge=0)



def _robot_retention() -> RetentionParams:
    """The study's coefficients for RoboticSequence (EWC 100, BC 1, L2 1000, EM 10%)."""
    return RetentionParams(
        l2=L2Params(coef=1000.0),
        ewc=EWCParams(coef=100.0),
        bc=BCParams(coef=1.0, batch_size=128),
        ks=KSParams(coef=1.0, decay=0.9999, floor=0.0),
        em=EMParams(share=0.1),
    )


class Params(Strict):
    env: EnvParams = EnvParams()
    net: NetParams = NetParams()
    demos: DemoParams = DemoParams()
    pretrain: PretrainParams = PretrainParams()
    far_buffer: FarBufferParams = FarBufferParams()
    fisher: FisherParams = FisherParams()
    finetune: FinetuneParams = FinetuneParams()
    retention: RetentionParams = Field(default_factory=_robot_retention)
    checkpoint: CheckpointParams = CheckpointParams()

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.retention.regularize_critic:
            raise ValueError("retention.regularize_critic: not supported for RoboticSequence (the critic takes actions; only the actor is retained)")
        return self


# --------------------------------------------------------------------------- environment


def _camel(task: str) -> str:
    return re.sub(r"(^|-)([a-z])", lambda m: m.group(2).upper(), task)


def make_task_env(task: str, seed: int):
    """A goal-observable Meta-World v3 env whose object and goal positions are re-drawn at each
    ``reset()`` from the stream ``seed()`` sets (Meta-World freezes them by default)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-v3-goal-observable"](seed=seed)
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.max_path_length = 10**9  # the sequence enforces its own per-stage limit
    return env


#: Idle Meta-World envs by task. Building one costs ~0.4 s (XML parsing, MuJoCo compile), more
#: than a whole evaluation episode; an env is fully re-initialised by ``seed()`` + ``reset()``
#: (``RoboticSequence._enter``), so sequences hand theirs back on ``close()`` and the next
#: sequence reuses them.
_POOL: dict[str, list] = {}


def acquire_task_env(task: str, seed: int):
    free = _POOL.get(task)
    return free.pop() if free else make_task_env(task, seed)


def make_expert(task: str):
    import metaworld.policies as policies

    return getattr(policies, f"Sawyer{_camel(task)}V3Policy")()


class RoboticSequence:
    """The stitched episode. ``step`` returns (obs, reward, terminal, done, info):

    * ``terminal``: no bootstrapping (stage success or timeout);
    * ``done``: the episode is over (timeout, the last stage solved, or the single stage ended);
    * ``info``: ``stage`` (where the step was taken), ``success`` (that stage just succeeded),
      ``completed`` (stages solved so far in this episode), ``t`` (stage steps taken).

    ``reset(stage=k)`` starts at stage k; with ``single=True`` the episode ends with that stage
    (how one stage is evaluated alone). ``task_envs`` may inject stand-ins for tests.

    ``get_state``/``set_state`` (resume): a MuJoCo scene mid-episode is more than qpos/qvel
    (Meta-World keeps targets, initial object positions and counters in Python), so the state is
    where the episode began (the sequence's RNG before ``reset``, which task envs were built by
    then, the start stage) plus the actions taken since; ``set_state`` replays them. Entering a
    stage re-initialises its task env completely (``seed()`` + ``reset()``, as the env pool relies
    on), so the replay lands on the same observation, which the learner checks.
    """

    def __init__(self, env: EnvParams, seed: int, task_envs: list | None = None):
        self.p = env
        self.rng = np.random.default_rng(seed)
        self._pooled = task_envs is None
        self.envs = task_envs if task_envs is not None else [None] * env.n_stages  # built on first entry
        self.start_stage = 0
        self.single = False
        self.reset()

    def get_state(self) -> dict:
        return {**self._episode, "actions": np.asarray(self._episode["actions"], np.float64).reshape(-1, ACT_DIM)}

    def set_state(self, state: dict) -> np.ndarray:
        """Replay the saved episode from its start; returns the observation it ends on."""
        for k, built in enumerate(state["built"]):
            if built and self.envs[k] is None:
                self.envs[k] = acquire_task_env(self.p.tasks[k], 0)  # re-seeded whenever its stage is entered
            elif not built and self.envs[k] is not None:
                if self._pooled:
                    _POOL.setdefault(self.p.tasks[k], []).append(self.envs[k])
                self.envs[k] = None
        self.rng.bit_generator.state = state["rng"]
        self.reset(stage=state["start_stage"], single=state["single"])
        for a in state["actions"]:
            self.step(a)
        return self._obs(self.raw)

    def _obs(self, raw: np.ndarray) -> np.ndarray:
        onehot = np.zeros(self.p.n_stages, np.float32)
        onehot[self.stage] = 1.0
        return np.concatenate([np.asarray(raw, np.float32), [self.t / self.p.T], onehot]).astype(np.float32)

    def _enter(self, stage: int) -> np.ndarray:
        self.stage = stage
        self.t = 0
        if self.envs[stage] is None:
            self.envs[stage] = acquire_task_env(self.p.tasks[stage], int(self.rng.integers(2**31)))
        # Meta-World ignores reset(seed=...): positions come from the env's own np_random, which
        # seed() re-makes. Seeding it here makes every episode a function of this sequence's RNG
        # alone, whatever env object the pool hands out and whatever it did before.
        self.envs[stage].seed(int(self.rng.integers(2**31)))
        raw, _ = self.envs[stage].reset()
        self.raw = raw
        return self._obs(raw)

    def reset(self, stage: int | None = None, single: bool | None = None) -> np.ndarray:
        if stage is not None:
            if not 0 <= stage < self.p.n_stages:
                raise ValueError(f"stage must be in [0, {self.p.n_stages}) (got {stage})")
            self.start_stage = stage
        if single is not None:
            self.single = single
        self.completed = 0
        self._episode = {"rng": self.rng.bit_generator.state, "built": [e is not None for e in self.envs],
                         "start_stage": self.start_stage, "single": self.single, "actions": []}
        return self._enter(self.start_stage)

    def step(self, action: np.ndarray):
        stage = self.stage
        action = np.asarray(action, np.float64)
        self._episode["actions"].append(action.copy())
        raw, r, _, _, info = self.envs[stage].step(np.clip(action, -1, 1))
        self.t += 1
        success = bool(info.get("success", 0.0))
        timeout = self.t >= self.p.T
        reward = float(r)
        if success:
            reward = self.p.beta * reward * (self.p.T - self.t)
            self.completed += 1
        terminal = success or timeout
        last = stage == self.p.n_stages - 1
        out = {"stage": stage, "success": success, "t": self.t, "completed": self.completed}
        if success and not last and not self.single:
            return self._enter(stage + 1), reward, True, False, out
        self.raw = raw
        return self._obs(raw), reward, terminal, terminal, out

    def close(self) -> None:
        """Hand the task envs back to the pool (the sequence must not be used afterwards)."""
        if self._pooled:
            for task, e in zip(self.p.tasks, self.envs):
                if e is not None:
                    _POOL.setdefault(task, []).append(e)
            self.envs = [None] * self.p.n_stages
            self._pooled = False

    def expert_action(self) -> np.ndarray:
        """The scripted Meta-World expert's action for the current stage and state (clipped)."""
        if not hasattr(self, "_experts"):
            self._experts = [make_expert(t) for t in self.p.tasks]
        return np.clip(self._experts[self.stage].get_action(self.raw), -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- rollouts


@torch.no_grad()
def rollout_stage_alone(agent, seqs: list[RoboticSequence], stage: int, episodes: int, *, deterministic=True, generator=None, record=False):
    """Run ``episodes`` episodes of ``stage`` alone per model (model i in ``seqs[i]``).

    Returns success (M, episodes) and, with ``record``, the visited obs per model (lists)."""
    device = next(agent.parameters()).device
    m = len(seqs)
    success = np.zeros((m, episodes), bool)
    visited = [[] for _ in range(m)]
    for ep in range(episodes):
        obs = np.stack([s.reset(stage=stage, single=True) for s in seqs])
        live = np.ones(m, bool)
        while live.any():
            o = torch.as_tensor(obs, device=device).unsqueeze(1)
            act = agent.sample(o, deterministic=deterministic, generator=generator)[0].squeeze(1).cpu().numpy()
            for i in np.nonzero(live)[0]:
                if record:
                    visited[i].append(obs[i].copy())
                obs[i], _, _, done, info = seqs[i].step(act[i])
                if done:
                    live[i] = False
                    success[i, ep] = info["success"]
    return (success, visited) if record else success


@torch.no_grad()
def rollout_full(agent, seqs: list[RoboticSequence], episodes: int, *, deterministic=True):
    """Stages completed in full episodes from stage 0 (M, episodes)."""
    device = next(agent.parameters()).device
    m = len(seqs)
    completed = np.zeros((m, episodes))
    for ep in range(episodes):
        obs = np.stack([s.reset(stage=0, single=False) for s in seqs])
        live = np.ones(m, bool)
        while live.any():
            act = agent.sample(torch.as_tensor(obs, device=device).unsqueeze(1), deterministic=deterministic)[0].squeeze(1).cpu().numpy()
            for i in np.nonzero(live)[0]:
                obs[i], _, _, done, info = seqs[i].step(act[i])
                if done:
                    live[i] = False
                    completed[i, ep] = info["completed"]
    return completed


def evaluate_agent(agent, seqs: list[RoboticSequence], env: EnvParams, episodes: int, stages: list[int] | None = None) -> dict[str, np.ndarray]:
    """Success of each stage run alone (M, n_stages) and stages completed in a full episode (M,)."""
    stages = list(range(env.n_stages)) if stages is None else stages
    succ = np.full((len(seqs), env.n_stages), np.nan)
    for k in stages:
        succ[:, k] = rollout_stage_alone(agent, seqs, k, episodes).mean(1)
    return {"success": succ, "completed": rollout_full(agent, seqs, episodes).mean(1)}


# --------------------------------------------------------------------------- study steps (pure)


def make_demos(env: EnvParams, cfg: DemoParams) -> dict[str, np.ndarray]:
    """Scripted-expert episodes on each FAR stage run alone; only successful episodes are kept.
    Observations are what the agent sees (stage time and stage id appended)."""
    rec: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next_obs", "terminal", "stage", "episode")}
    seq = RoboticSequence(env, 10_000 + cfg.seed)
    kept = {}
    ep_id = 0
    for k in env.far_stages:
        n_ok = 0
        for _ in range(cfg.episodes):
            obs = seq.reset(stage=k, single=True)
            ep = {key: [] for key in rec}
            done = False
            while not done:
                a = seq.expert_action()
                nxt, r, term, done, info = seq.step(a)
                for key, v in (("obs", obs), ("act", a), ("rew", r), ("next_obs", nxt), ("terminal", term), ("stage", k), ("episode", ep_id)):
                    ep[key].append(v)
                obs = nxt
            if info["success"]:
                n_ok += 1
                for key in rec:
                    rec[key].extend(ep[key])
            ep_id += 1
        kept[env.tasks[k]] = n_ok
        log.info("expert on %s: %d/%d episodes successful", env.tasks[k], n_ok, cfg.episodes)
        if n_ok == 0:
            raise RuntimeError(f"the scripted expert never solved {env.tasks[k]!r}; cannot collect demonstrations")
    seq.close()
    out = {k: np.asarray(v, np.float32 if k not in ("stage", "episode") else np.int64) for k, v in rec.items()}
    out["expert_success"] = np.asarray([kept[env.tasks[k]] / cfg.episodes for k in env.far_stages], np.float32)
    return out


def _bc_loss(agent, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """10 · MSE of the squashed mean to the expert's action, plus the Gaussian NLL of the pre-tanh
    action with the mean detached (it only fits σ to the residuals).

    Why not the plain NLL: the scripted experts are high-gain controllers whose actions hinge on
    centimetre differences; under the NLL the network can explain them away as noise (large σ)
    and π* ends up imprecise (0% on peg-unplug-side); fitting the mean by MSE gets 100%.
    """
    mean, log_std = agent.dist_params(obs).chunk(2, -1)
    u = torch.atanh(act.clamp(-0.995, 0.995))
    nll = (0.5 * ((u - mean.detach()) / log_std.exp()).pow(2) + log_std).sum(-1).mean()
    return nll + 10.0 * (torch.tanh(mean) - act).pow(2).sum(-1).mean()


def behaviour_clone(agent, obs: np.ndarray, act: np.ndarray, cfg: PretrainParams, gen: torch.Generator, opt=None, desc="bc"):
    from tqdm import tqdm

    device = next(agent.parameters()).device
    o, a = torch.as_tensor(obs, device=device), torch.as_tensor(act, device=device)
    opt = opt or torch.optim.Adam(agent.actor_parameters(), lr=cfg.lr)
    loss = torch.tensor(0.0)
    for _ in tqdm(range(cfg.bc_steps), desc=desc, mininterval=2.0):
        idx = torch.randint(o.shape[0], (min(cfg.batch_size, o.shape[0]),), generator=gen).to(device)
        loss = _bc_loss(agent, o[idx], a[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log.info("%s: final loss %.3f on %d pairs", desc, loss.item(), o.shape[0])
    return opt


def collect_pi_star_transitions(agent, env: EnvParams, episodes: int, seed: int, label: bool, noise: float = 0.0):
    """π*'s own episodes on each FAR stage alone (stochastic; plus Gaussian ``noise`` on the
    squashed action), with expert labels for DAgger."""
    rng = np.random.default_rng(seed)
    seq = RoboticSequence(env, seed)
    gen = torch.Generator().manual_seed(seed)
    rec = {k: [] for k in ("obs", "act", "expert", "rew", "next_obs", "terminal")}
    device = next(agent.parameters()).device
    with torch.no_grad():
        for k in env.far_stages:
            for _ in range(episodes):
                obs = seq.reset(stage=k, single=True)
                done = False
                while not done:
                    if label:
                        rec["expert"].append(seq.expert_action())
                    a = agent.sample(torch.as_tensor(obs, device=device)[None, None], generator=gen)[0][0, 0].cpu().numpy()
                    if noise:
                        a = np.clip(a + noise * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
                    nxt, r, term, done, _ = seq.step(a)
                    for key, v in (("obs", obs), ("act", a), ("rew", r), ("next_obs", nxt), ("terminal", term)):
                        rec[key].append(v)
                    obs = nxt
    seq.close()
    return {k: np.asarray(v, np.float32) for k, v in rec.items() if v}


def discounted_returns(rew: np.ndarray, terminal: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return G_t = Σ γ^k r_{t+k} of every transition of complete episodes stored back
    to back (in RoboticSequence every stage-alone episode ends with a terminal: success or timeout)."""
    if len(rew) and not terminal[-1]:
        raise ValueError("discounted_returns: the last transition is not terminal (an episode was cut)")
    out = np.empty(len(rew), np.float32)
    acc = 0.0
    for i in range(len(rew) - 1, -1, -1):
        acc = float(rew[i]) + (0.0 if terminal[i] else gamma * acc)
        out[i] = acc
    return out


def critic_fit_quality(agent, obs: torch.Tensor, act: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """min(Q1, Q2) on held-out pre-training transitions against their Monte-Carlo returns."""
    with torch.no_grad():
        q = torch.min(*agent.q(obs, act))[0]
    q, g = q.double(), returns.double()
    corr = float(torch.corrcoef(torch.stack([q, g]))[0, 1]) if len(g) > 1 else float("nan")
    return {"mean_abs_error": float((q - g).abs().mean()), "corr": corr, "mean_q": float(q.mean()), "mean_return": float(g.mean())}


def fit_critic(agent, trans: dict[str, np.ndarray], cfg: FinetuneParams, pcfg: PretrainParams, gen: torch.Generator) -> dict:
    """Pre-train both critics on the FAR transitions (demos, DAgger rollouts, π*'s rollouts,
    exploration) so fine-tuning starts with a usable critic; returns the measured fit.

    1. Regression on the Monte-Carlo returns of those complete episodes (``critic_mc_steps``).
       Why: the success bonus puts returns in the thousands; offline TD alone from a random
       critic propagates them at the speed of the target network (τ = 0.005) and, measured,
       ends with Q ≈ 17 where the returns average ≈ 570 (correlation 0.40). The regression
       gets correlation ≈ 0.99 in a minute.
    2. Offline TD with SAC's soft targets (π* fixed, clipped double Q; ``critic_steps``), which
       turns the behaviour's returns into π*'s soft Q-values, the quantity SAC fine-tuning uses.

    The fit (vs Monte-Carlo returns on a held-out 5%) is logged and saved in ``scores.json``.
    """
    from tqdm import tqdm

    from retainrl.learners.sac import SACConfig, SACLearner
    from retainrl.retention.methods import Finetune, RetentionContext

    learner = SACLearner(agent, SACConfig(lr=pcfg.lr, gamma=cfg.gamma, tau=cfg.tau, init_alpha=cfg.init_alpha), Finetune(RetentionContext(), RetentionParams()), gen)
    device = next(agent.parameters()).device
    t = {k: torch.as_tensor(v, device=device) for k, v in trans.items()}
    t["return"] = torch.as_tensor(discounted_returns(trans["rew"], trans["terminal"], cfg.gamma), device=device)
    n = t["obs"].shape[0]
    perm = torch.randperm(n, generator=gen).to(device)
    n_hold = max(1, n // 20) if n > 1 else 0
    hold, train = perm[:n_hold], perm[n_hold:]

    def batch():
        idx = train[torch.randint(len(train), (min(pcfg.batch_size, len(train)),), generator=gen).to(device)]
        return {k: v[idx].unsqueeze(0) for k, v in t.items()}

    def quality() -> dict[str, float]:
        return critic_fit_quality(agent, t["obs"][hold], t["act"][hold], t["return"][hold]) if n_hold else {}

    fit = {"transitions": n, "held_out": n_hold, "before": quality()}
    for _ in tqdm(range(pcfg.critic_mc_steps), desc="critic MC", mininterval=2.0):
        b = batch()
        q1, q2 = agent.q(b["obs"], b["act"])
        loss = ((q1 - b["return"]).pow(2) + (q2 - b["return"]).pow(2)).mean(1).sum()
        learner.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        learner.critic_opt.step()
    with torch.no_grad():
        torch._foreach_copy_(learner.target.critic_parameters(), agent.critic_parameters())
    fit["monte_carlo"] = quality()
    for _ in tqdm(range(pcfg.critic_steps), desc="critic TD", mininterval=2.0):
        loss = learner.critic_loss(batch())
        learner.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        learner.critic_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(learner.target.critic_parameters(), agent.critic_parameters(), cfg.tau)
    fit["td"] = quality()
    log.info("critic fit vs held-out Monte-Carlo returns (|Q−G|, corr): before %s, after MC %s, after TD %s",
             *(f"{fit[k].get('mean_abs_error', float('nan')):.1f}, {fit[k].get('corr', float('nan')):.3f}" for k in ("before", "monte_carlo", "td")))
    return fit


def online_sac(agent, trans: dict[str, np.ndarray], p: Params, gen: torch.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """``pretrain.online_steps`` of SAC on the FAR stages only, from the cloned π* (see
    ``PretrainParams.online_steps``); the pre-training transitions (a random half-replay's worth
    at most) stay in the replay for good (demonstrations kept in the buffer, as in SAC from
    demonstrations / RLPD).

    Returns every transition of the final replay (pre-training + online: EM's memory is sampled
    from them, as the study's EM keeps the pre-training run's transitions) and the FAR success
    curve of the run.
    """
    from retainrl.learners import sac
    from retainrl.retention.methods import Finetune, RetentionContext
    from retainrl.retention.replay import ProtectedReplay

    cfg, device = p.finetune, next(agent.parameters()).device
    n = min(trans["obs"].shape[0], cfg.replay_size // 2)  # at most half the replay: room for online data
    if n < trans["obs"].shape[0]:
        keep = torch.randperm(trans["obs"].shape[0], generator=gen)[:n].sort().values.numpy()
        trans = {k: v[keep] for k, v in trans.items()}
    scfg = sac.SACConfig(batch_size=cfg.batch_size, lr=cfg.lr, gamma=cfg.gamma, tau=cfg.tau, init_alpha=cfg.init_alpha,
                         update_every=cfg.update_every, updates_per_step=cfg.updates_per_step, random_steps=0)
    learner = sac.SACLearner(agent, scfg, Finetune(RetentionContext(), RetentionParams()), gen)
    replay = ProtectedReplay(cfg.replay_size, sac.replay_specs(agent.spec, 1), device)
    replay.protect(em_transitions(trans, 1), (n + 0.5) / cfg.replay_size)  # all n of them
    seed = 50_000 + p.pretrain.seed
    seq = RoboticSequence(p.env, seed)
    seq.reset(stage=p.env.far_stages[0])  # every auto-reset starts there again
    eval_seqs = [RoboticSequence(p.env, seed + 1)]
    curve = []

    def evaluate(step: int) -> None:
        curve.append({"step": step, **{p.env.tasks[k]: float(rollout_stage_alone(agent, eval_seqs, k, cfg.eval_episodes).mean())
                                       for k in p.env.far_stages}})
        log.info("online SAC on FAR, step %d: %s", step, curve[-1])

    sac.train(learner, sac.VecEnv([seq]), replay, p.pretrain.online_steps, eval_every=cfg.eval_every, on_eval=evaluate, desc="online SAC (FAR)")
    for e in (seq, *eval_seqs):
        e.close()
    filled = {k: v[: len(replay), 0].cpu().numpy() for k, v in replay.data.items()}
    return filled, {"steps": p.pretrain.online_steps, "transitions": len(replay), "curve": curve}


def memory_size(p: Params) -> int:
    """EM's memory: the study keeps 10k transitions = 10% of a 100k replay."""
    return int(p.retention.em.share * p.finetune.replay_size)


TRANSITION_KEYS = ("obs", "act", "rew", "next_obs", "terminal")


def agent_spec(p: Params):
    from retainrl.learners.sac import AgentSpec

    return AgentSpec(obs_dim=p.env.obs_dim, act_dim=ACT_DIM, n_stages=p.env.n_stages, hidden=p.net.hidden, layers=p.net.layers)


def pretrain_agent(p: Params, demos: dict[str, np.ndarray], device) -> tuple:
    """BC + DAgger for the actor, exploration, offline TD for the critics, then (optional)
    online SAC on the FAR stages.

    Returns (π*, per-stage success, EM's memory of pre-training transitions, the critic's fit).
    """
    from retainrl.learners.sac import SACAgent

    gen = torch.Generator().manual_seed(p.pretrain.seed)
    agent = SACAgent(agent_spec(p), 1, generator=gen).to(device)
    obs, act = demos["obs"], demos["act"]
    agent.set_normalizer(torch.as_tensor(obs, device=device), BASE_OBS_DIM)
    opt = behaviour_clone(agent, obs, act, p.pretrain, gen, desc="bc round 0")
    td = {k: demos[k] for k in TRANSITION_KEYS}
    for r in range(1, p.pretrain.dagger_rounds + 1):
        roll = collect_pi_star_transitions(agent, p.env, p.pretrain.dagger_episodes, 20_000 + 100 * r + p.pretrain.seed, label=True)
        obs, act = np.concatenate([obs, roll["obs"]]), np.concatenate([act, roll["expert"]])
        td = {k: np.concatenate([td[k], roll[k]]) for k in td}
        opt = behaviour_clone(agent, obs, act, p.pretrain, gen, opt, desc=f"bc round {r} (DAgger)")
    for i, (episodes, noise) in enumerate(((p.pretrain.dagger_episodes, 0.0), (p.pretrain.explore_episodes, p.pretrain.explore_noise))):
        if episodes:
            roll = collect_pi_star_transitions(agent, p.env, episodes, 30_000 + 1000 * i + p.pretrain.seed, label=False, noise=noise)
            td = {k: np.concatenate([td[k], roll[k]]) for k in td}
    critic_fit = fit_critic(agent, td, p.finetune, p.pretrain, gen)
    online = None
    if p.pretrain.online_steps:
        td, online = online_sac(agent, td, p, gen)
    idx = torch.randperm(td["obs"].shape[0], generator=gen)[: memory_size(p)].sort().values.numpy()
    memory = {k: v[idx] for k, v in td.items()}
    seqs = [RoboticSequence(p.env, 40_000 + p.pretrain.seed)]
    scores = evaluate_agent(agent, seqs, p.env, p.pretrain.eval_episodes)
    seqs[0].close()
    if online is not None:
        scores["online_sac"] = online
    return agent, scores, memory, critic_fit


def check_gate(p: Params, success: np.ndarray) -> None:
    bad = {p.env.tasks[k]: float(success[k]) for k in p.env.far_stages if success[k] < p.pretrain.gate}
    if bad:
        raise RuntimeError(
            f"pretrain gate failed: π* must succeed on every FAR stage alone in ≥ {p.pretrain.gate:.0%} of "
            f"{p.pretrain.eval_episodes} episodes, got {bad}; raise robot.demos.episodes, robot.pretrain.bc_steps, "
            f"robot.pretrain.dagger_rounds or (online SAC) robot.pretrain.online_steps"
        )


# --------------------------------------------------------------------------- stage API (I/O)


def _load_agent(path, what: str, device):
    from retainrl.learners.sac import AgentSpec, SACAgent
    from retainrl.core.artifacts import load_metadata, load_tensors

    tensors = load_tensors(path, what)
    spec = AgentSpec(**load_metadata(path)["spec"])
    n = next(iter(tensors.values())).shape[0]
    agent = SACAgent(spec, n)
    agent.load_state_dict(tensors)
    return agent.to(device)


def _save_agent(path, agent, **meta) -> None:
    from dataclasses import asdict

    from retainrl.core.artifacts import save_tensors

    save_tensors(path, agent.state_dict(), {"spec": asdict(agent.spec), **meta})


def load_pretrained(p: Params, paths, device=None):
    return _load_agent(paths.pretrained / "agent.safetensors", "pre-trained agent π* (pretrain stage)", device)


def _load_demos(paths) -> dict[str, np.ndarray]:
    from retainrl.core.artifacts import load_npz

    return load_npz(paths.demos / "demos.npz", "expert demonstrations (collect_demos stage)", TRANSITION_KEYS)


def _load_memory(paths) -> dict[str, np.ndarray]:
    from retainrl.core.artifacts import load_npz

    return load_npz(paths.pretrained / "memory.npz", "pre-training transitions for EM (pretrain stage)", TRANSITION_KEYS)


def collect_demos(p: Params, paths, device) -> None:
    from retainrl.core.artifacts import atomic_path, save_json, save_npz

    demos = make_demos(p.env, p.demos)
    with atomic_path(paths.demos, directory=True) as out:
        save_npz(out / "demos.npz", **demos)
        save_json(
            out / "summary.json",
            {
                "episodes_per_stage": p.demos.episodes,
                "expert_success": {p.env.tasks[k]: float(s) for k, s in zip(p.env.far_stages, demos["expert_success"])},
                "transitions": int(demos["obs"].shape[0]),
            },
        )


def pretrain(p: Params, paths, device) -> None:
    from retainrl.core.artifacts import atomic_path, save_json, save_npz

    agent, scores, memory, critic_fit = pretrain_agent(p, _load_demos(paths), device)
    success = scores["success"]
    summary = {
        "success": {t: float(success[0, k]) for k, t in enumerate(p.env.tasks)},
        "completed": float(scores["completed"][0]),
        "far": float(np.mean([success[0, k] for k in p.env.far_stages])),
        "episodes": p.pretrain.eval_episodes,
        "memory": int(memory["obs"].shape[0]),
        "critic_fit": critic_fit,
        **({"online_sac": scores["online_sac"]} if "online_sac" in scores else {}),
    }
    log.info("π*: per-stage success %s, stages completed from stage 0: %.2f", summary["success"], summary["completed"])
    check_gate(p, success[0])
    with atomic_path(paths.pretrained, directory=True) as out:
        _save_agent(out / "agent.safetensors", agent)
        save_npz(out / "memory.npz", **memory)
        save_json(out / "scores.json", summary)


def far_states(p: Params, paths, pretrained, device=None) -> dict[str, np.ndarray]:
    """The generic far_buffer stage's question: states π* visits on each FAR stage alone
    (stochastic rollouts), ``far_buffer.size`` in all, the same share per stage."""
    gen = torch.Generator().manual_seed(p.far_buffer.seed)
    seq = [RoboticSequence(p.env, 50_000 + p.far_buffer.seed)]
    states: list[np.ndarray] = []
    per_stage = -(-p.far_buffer.size // len(p.env.far_stages))
    for k in p.env.far_stages:
        got: list[np.ndarray] = []
        while len(got) < per_stage:
            _, visited = rollout_stage_alone(pretrained, seq, k, 1, deterministic=False, generator=gen, record=True)
            got.extend(visited[0])
        states.extend(got[:per_stage])
    seq[0].close()
    return {"obs": np.stack(states)[: p.far_buffer.size].astype(np.float32)}


def retention_loaders(p: Params, paths, device) -> dict:
    """What the generic finetune driver cannot load itself: EM's pre-training transitions, one
    copy per stacked model."""
    return {"pretrain_transitions": lambda: em_transitions(_load_memory(paths), p.finetune.seeds)}


def em_transitions(memory: dict[str, np.ndarray], n_models: int) -> dict[str, torch.Tensor]:
    """Pre-training transitions, the same for every stacked model: (N, M, ...)."""
    out = {}
    for key in TRANSITION_KEYS:
        v = torch.as_tensor(memory[key])
        out[key] = v.unsqueeze(1).expand(v.shape[0], n_models, *v.shape[1:]).contiguous()
    return out


def finetune_seeds(method: str, p: Params, pretrained, far, fisher_diag, memory, device, *, seeds: int | None = None, steps: int | None = None, progress=True, on_eval=None, seed_offset: int = 0, checkpoint=None, retention=None):
    """Fine-tune ``seeds`` stacked models with one method on the full sequence; returns (curves, agent).

    The run draws from :func:`retainrl.pipeline.finetune.run_seed` (``method``, ``seed_offset``),
    the rule every family follows. ``retention``: a function of the run's generator giving its
    retention method (the finetune stage's, built from the method's needs); without it the method
    is built in memory from ``pretrained``, ``far``, ``fisher_diag`` and ``memory`` (the
    pre-training transitions EM keeps). ``checkpoint``: a
    :class:`retainrl.core.checkpoint.Checkpoint` to save to and resume from; the curves so far
    and the evaluation sequences go into it beside the learner's state, and a resumed run calls
    ``on_eval(step, scores, None)`` again for the evaluations before the checkpoint (no agent: it
    is gone), so a logger sees the whole run."""
    from retainrl.learners import sac
    from retainrl.retention.replay import ProtectedReplay

    cfg = p.finetune
    m = seeds or cfg.seeds
    steps = steps or cfg.steps
    base = run_seed(method, seed_offset)
    gen = torch.Generator().manual_seed(base)
    if retention is None:
        def retention(g):
            return retention_from(
                method, p.retention, g, pretrained=pretrained,
                far_obs=None if far is None else far["obs"].to(device), far_targets=None if far is None else far["targets"].to(device),
                fisher=None if fisher_diag is None else {k: v.to(device) for k, v in fisher_diag.items()},
                pretrain_transitions=None if memory is None else em_transitions(memory, m))
    retention = retention(gen)
    if retention.starts_from_pretrained:
        agent = pretrained.replicate(m)
    else:
        agent = sac.SACAgent(agent_spec(p), m, generator=gen).to(device)
        with torch.no_grad():  # the same fixed input scaling as π* (preprocessing, not a skill)
            agent.obs_shift.copy_(pretrained.obs_shift.expand_as(agent.obs_shift))
            agent.obs_scale.copy_(pretrained.obs_scale.expand_as(agent.obs_scale))
    scfg = sac.SACConfig(
        batch_size=cfg.batch_size, lr=cfg.lr, gamma=cfg.gamma, tau=cfg.tau, init_alpha=cfg.init_alpha,
        update_every=cfg.update_every, updates_per_step=cfg.updates_per_step, random_steps=cfg.random_steps,
    )
    learner = sac.SACLearner(agent, scfg, retention, gen)
    replay = ProtectedReplay(cfg.replay_size, sac.replay_specs(agent.spec, m), device)
    venv = sac.VecEnv([RoboticSequence(p.env, base * 100 + i) for i in range(m)])
    eval_seqs = eval_sequences(p, method, m, seed_offset)
    curves: dict[str, list] = {"step": [], "success": [], "completed": []}
    if checkpoint is not None:

        def restore(saved: dict) -> None:
            curves.update(saved["curves"])
            for seq, st in zip(eval_seqs, saved["seqs"]):
                seq.set_state(st)
            for i, step in enumerate(curves["step"]):
                if on_eval:
                    on_eval(step, {"success": curves["success"][i], "completed": curves["completed"][i]}, None)

        checkpoint.attach("evaluation", lambda: {"curves": curves, "seqs": [q.get_state() for q in eval_seqs]}, restore)

    def evaluate(step: int) -> None:
        scores = evaluate_agent(agent, eval_seqs, p.env, cfg.eval_episodes)
        curves["step"].append(step)
        curves["success"].append(scores["success"])
        curves["completed"].append(scores["completed"])
        log.info("%s step %d: success per stage %s, completed %.2f", method, step, np.round(scores["success"].mean(0), 2).tolist(), scores["completed"].mean())
        if on_eval:
            on_eval(step, scores, agent)

    sac.train(learner, venv, replay, steps, eval_every=cfg.eval_every, on_eval=evaluate, progress=progress, desc=f"robot {method}",
              checkpoint=checkpoint)
    for seq in venv.envs + eval_seqs:
        seq.close()
    out = {
        "step": np.asarray(curves["step"]),
        "success": np.stack(curves["success"], -1),  # (M, n_stages, K)
        "completed": np.stack(curves["completed"], -1),  # (M, K)
    }
    return out, agent


#: The name frozen π*'s evaluation sequences are seeded from, as a method's are from its name.
FROZEN = "frozen"


def eval_sequences(p: Params, name: str, m: int, seed_offset: int = 0) -> list:
    """The ``m`` evaluation sequences of the method (or ``FROZEN``) ``name``: seeded from the name and
    used only to evaluate, so π* evaluated on them K times plays what a run that never moved would."""
    base = 1000 * (seed_offset + 1) + sum(map(ord, name))
    return [RoboticSequence(p.env, base * 100 + 50 + i) for i in range(m)]


def frozen_curves(p: Params, paths, device, steps) -> dict[str, np.ndarray]:
    """Frozen π* on the methods' evaluation schedule (one evaluation per checkpoint step, every seed,
    ``finetune.eval_episodes`` each): the noise floor of forgetting's start − min. The same arrays as
    a finetune stage's ``curves.npz``."""
    from tqdm import tqdm

    cfg = p.finetune
    agent = load_pretrained(p, paths, device).replicate(cfg.seeds)
    seqs = eval_sequences(p, FROZEN, cfg.seeds)
    success, completed = [], []
    for _ in tqdm(list(steps), desc="robot frozen π*", mininterval=5.0):
        scores = evaluate_agent(agent, seqs, p.env, cfg.eval_episodes)
        success.append(scores["success"])
        completed.append(scores["completed"])
    for seq in seqs:
        seq.close()
    return {"step": np.asarray(steps), "success": np.stack(success, -1), "completed": np.stack(completed, -1)}


def train(p: Params, paths, device, run) -> None:
    """The generic finetune stage's loop: all seeds of one method in one stacked learner; curves,
    dvclive metrics and actor snapshots into ``run.out``.

    Resumable (``.checkpoints/robot_finetune@<method>/``): the actor snapshots written so far and
    the curves go into the checkpoint too, and a resumed run writes them and logs them to dvclive
    again before it goes on, so its outputs are those of an uninterrupted run."""
    from dvclive import Live

    from retainrl.core.artifacts import save_npz, save_tensors

    cfg = p.finetune
    out = run.out
    marks = set(np.linspace(0, cfg.steps, cfg.checkpoints + 1).round().astype(int)[1:].tolist()) if cfg.checkpoints else set()
    ckpt = run.checkpoint()
    (out / "checkpoints").mkdir()
    with Live(str(out / "live"), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        snapshots: dict[int, dict] = {}  # step → actor tensors (kept in the checkpoint as well)

        def save_snapshot(step, actor):
            snapshots[step] = actor
            save_tensors(out / "checkpoints" / f"actor_{step:08d}.safetensors", actor, {"step": step})

        def restore(saved):
            for step, actor in saved.items():
                save_snapshot(step, actor)

        ckpt.attach("snapshots", lambda: snapshots, restore)

        def on_eval(step, scores, agent):
            live.step = step
            for k, task in enumerate(p.env.tasks):
                live.log_metric(f"success/{task}", float(scores["success"][:, k].mean()))
            live.log_metric("completed", float(scores["completed"].mean()))
            last = max(snapshots, default=0)
            if agent is not None and any(step >= mk and mk > last for mk in marks):
                save_snapshot(step, {k: v.detach().clone() for k, v in agent.state_dict().items() if k.startswith("actor")})

        # the agent is always built from π* (a scratch run takes its fixed input scaling)
        curves, agent = finetune_seeds(run.method, p, run.pretrained(), None, None, None, device, on_eval=on_eval, checkpoint=ckpt,
                                       retention=lambda gen: run.retention(0, gen))
    save_npz(out / "curves.npz", **curves)
    _save_agent(out / "agent.safetensors", agent, method=run.method)


# --------------------------------------------------------------------------- evaluate / report
