"""MiniGrid RoomChain training stages: demos → BC π* on FAR → FAR buffer, Fisher → PPO fine-tuning.

The environment and its expert are in :mod:`retainrl.families.minigrid.env`, the networks in
:mod:`retainrl.families.minigrid.nets`; fine-tuning is the project's PPO(+RND) learner
(:mod:`retainrl.learners.ppo_rnd`) with every retention method of the registry.

CLOSE is the rooms before ``env.close_rooms`` (shut doors), FAR the rooms from it on (open
doors, the goal). Three scores, all success rates from held-out episodes:

* FAR: started at a random cell of room ``close_rooms``, reach the goal;
* CLOSE: started in room 0, reach room ``close_rooms``;
* full task: the same episodes from room 0, reach the goal.

Seeds: every random stream is a ``numpy`` SeedSequence keyed by what it is for (demos, BC,
buffer, training envs, evaluation), so training and evaluation never share a layout stream, and
every method is scored on the same evaluation episodes at the same checkpoint (paired).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from retainrl.core.config import Strict
from retainrl.core.checkpoint import CheckpointParams
from retainrl.learners import ppo_rnd as learner
from retainrl.learners.ppo_rnd_params import PPORNDParams
from retainrl.retention.methods import RetentionParams, method_list
from retainrl.retention.params import FisherParams

log = logging.getLogger(__name__)

#: first element of every SeedSequence: which stream it is (so no two purposes share draws)
DEMO_STREAM, BC_STREAM, BUFFER_STREAM, TRAIN_STREAM, EVAL_STREAM = range(5)


# --------------------------------------------------------------------------- params


class EnvParams(Strict):
    rooms: int = Field(4, ge=2, description="rooms in the chain")
    room_size: int = Field(5, ge=4, description="room side, walls included")
    close_rooms: int = Field(2, ge=1, description="rooms before the FAR part: each ends in a shut door")
    max_steps: int = Field(100, gt=0, description="episode step limit")

    @model_validator(mode="after")
    def _far_exists(self):
        if self.close_rooms >= self.rooms:
            raise ValueError(f"close_rooms must be < rooms = {self.rooms} so that FAR rooms exist (got {self.close_rooms})")
        return self


class DemoParams(Strict):
    episodes: int = Field(300, gt=0, description="expert episodes from room 0; their FAR segments are cloned")
    seed: int = 0


class PretrainParams(Strict):
    #: few BC steps leave π* some entropy: a fully deterministic π* would never explore CLOSE
    steps: int = Field(300, gt=0, description="BC gradient steps")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, gt=0)
    hidden: int = Field(64, gt=0, description="width of the actor-critic's two hidden layers")
    seed: int = 0


class FarBufferParams(Strict):
    size: int = Field(1000, gt=0, description="FAR states π* visits from FAR starts, with its outputs")
    seed: int = 0


class FinetuneParams(PPORNDParams):
    """PPO(+RND) from room 0. ``updates`` × ``envs`` × ``steps`` agent steps per seed."""

    methods: method_list(learner.LEARNER, off_policy=False) = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
    seeds: int = Field(5, gt=0)
    seed: int = 0
    # PPO+RND's knobs (PPORNDParams); what differs from the study's Montezuma values: a small grid
    # world with dense rooms learns faster with a larger step, a shorter horizon and more exploration
    updates: int = Field(40, gt=0)
    lr: float = Field(1e-3, gt=0)
    gamma_ext: float = Field(0.99, gt=0, le=1)
    int_coef: float = Field(0.5, ge=0, description="weight of RND's exploration bonus")
    epochs: int = Field(8, gt=0)
    clip: float = Field(0.2, gt=0)
    entropy: float = Field(0.01, ge=0)
    eval_every: int = Field(5, gt=0, description="updates between evaluations")
    eval_episodes: int = Field(50, gt=0, description="episodes per score (FAR; CLOSE and full task) per evaluation")


class Params(Strict):
    env: EnvParams = EnvParams()
    demos: DemoParams = DemoParams()
    pretrain: PretrainParams = PretrainParams()
    far_buffer: FarBufferParams = FarBufferParams()
    fisher: FisherParams = FisherParams(estimator="exact", states=256)
    finetune: FinetuneParams = FinetuneParams()
    retention: RetentionParams = RetentionParams()
    checkpoint: CheckpointParams = CheckpointParams()


# --------------------------------------------------------------------------- helpers


def make_env(p: Params, *key: int, start_room: int = 0):
    from retainrl.families.minigrid.env import ChainEnv

    e = p.env
    return ChainEnv(e.rooms, e.room_size, e.close_rooms, e.max_steps, seed=list(key), start_room=start_room)


def new_policy(p: Params):
    from retainrl.families.minigrid.nets import ActorCritic

    return ActorCritic(hidden=p.pretrain.hidden)


def load_pretrained(p: Params, paths, device=None):
    from safetensors.torch import load_file

    from retainrl.core.artifacts import require

    model = new_policy(p)
    model.load_state_dict(load_file(str(require(Path(paths.pretrained) / "policy.safetensors", "MiniGrid π* (pretrain stage)"))))
    return model.to(torch.device(device or "cpu")).eval()


@torch.no_grad()
def play(model, envs: list, *, start_room: int, gen: torch.Generator, device=None) -> tuple[np.ndarray, np.ndarray]:
    """One episode in each env from ``start_room``, all in lockstep (one batched forward per step),
    actions sampled from the policy, each played to its end. Returns per episode the furthest room
    it reached and whether it reached the goal (1.0 or 0.0)."""
    dev = torch.device(device or "cpu")
    obs = [e.reset(start_room) for e in envs]
    live = list(range(len(envs)))
    reached, won = np.full(len(envs), float(start_room)), np.zeros(len(envs))
    while live:
        logits = model.dist_params(torch.as_tensor(np.stack([obs[i] for i in live])).to(dev)).cpu()
        actions = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1).tolist()
        still = []
        for i, a in zip(live, actions):
            obs[i], r, terminated, truncated, info = envs[i].step(a)
            reached[i] = max(reached[i], info["reached"])
            if terminated and r > 0:
                won[i] = 1.0
            if not (terminated or truncated):
                still.append(i)
        live = still
    return reached, won


def score(model, p: Params, tag: int, episodes: int, device=None) -> dict[str, np.ndarray]:
    """FAR, CLOSE and full-task success per episode on the evaluation episodes of ``tag``.

    The layouts and the sampling stream depend on ``tag`` only, so every policy scored with the
    same tag plays the same episodes (π* on the same schedule is the frozen noise floor), and none
    of them is a training layout (their own stream)."""
    far_envs = [make_env(p, EVAL_STREAM, tag, 0, k) for k in range(episodes)]
    _, far = play(model, far_envs, start_room=p.env.close_rooms, gen=torch.Generator().manual_seed(tag * 2 + 1), device=device)
    envs = [make_env(p, EVAL_STREAM, tag, 1, k) for k in range(episodes)]
    reached, full = play(model, envs, start_room=0, gen=torch.Generator().manual_seed(tag * 2 + 2), device=device)
    return {"far": far, "close": (reached >= p.env.close_rooms).astype(float), "full": full}


def eval_tag(seed: int, update: int) -> int:
    """The evaluation episodes of a checkpoint: the same for every method (and for frozen π*)."""
    return seed * 10_000 + update


# --------------------------------------------------------------------------- stages


def collect_demos(p: Params, paths, device=None) -> Path:
    """Stage ``collect_demos``: the shortest-path expert plays ``demos.episodes`` episodes from room 0;
    writes every step's obs, action and room (``demos.npz``) and the expert's success (``stats.json``)."""
    from tqdm import tqdm

    from retainrl.core.artifacts import atomic_path
    from retainrl.families.minigrid.env import expert_action

    env = make_env(p, DEMO_STREAM, p.demos.seed)
    obs_l, act_l, room_l, ep_l, wins = [], [], [], [], 0
    for ep in tqdm(range(p.demos.episodes), desc="minigrid expert", mininterval=5.0):
        o, done = env.reset(), False
        while not done:
            a = expert_action(env)
            obs_l.append(o)
            act_l.append(a)
            room_l.append(env.room())
            ep_l.append(ep)
            o, r, terminated, truncated, _ = env.step(a)
            done = terminated or truncated
        wins += int(terminated and r > 0)
    if wins < p.demos.episodes:
        raise RuntimeError(f"the RoomChain expert solved only {wins}/{p.demos.episodes} episodes: the environment is broken")
    with atomic_path(paths.demos, directory=True) as tmp:
        with (tmp / "demos.npz").open("wb") as fh:
            np.savez_compressed(fh, obs=np.stack(obs_l), actions=np.asarray(act_l), rooms=np.asarray(room_l),
                                episode=np.asarray(ep_l))
        (tmp / "stats.json").write_text(json.dumps({"episodes": p.demos.episodes, "solved": wins, "steps": len(act_l),
                                                    "mean_length": len(act_l) / p.demos.episodes}, indent=2) + "\n")
    log.info("MiniGrid demos: %d episodes, %d steps -> %s", p.demos.episodes, len(act_l), paths.demos)
    return paths.demos


def pretrain(p: Params, paths, device=None) -> Path:
    """Stage ``pretrain``: BC (cross-entropy) of the actor on the demos' FAR segment → π*; writes
    ``policy.safetensors`` and π*'s FAR/CLOSE/full-task success (``scores.json``)."""
    from safetensors.torch import save_file

    from retainrl.core.artifacts import atomic_path, load_npz

    demos = load_npz(Path(paths.demos) / "demos.npz", "MiniGrid demos (collect_demos stage)", required=("obs", "actions", "rooms"))
    far = demos["rooms"] >= p.env.close_rooms
    obs, actions = torch.as_tensor(demos["obs"][far]), torch.as_tensor(demos["actions"][far]).long()
    cfg = p.pretrain
    torch.manual_seed(cfg.seed)
    model = new_policy(p)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([BC_STREAM, cfg.seed]).generate_state(1)[0]))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        idx = torch.randint(len(obs), (min(cfg.batch_size, len(obs)),), generator=gen)
        loss = torch.nn.functional.cross_entropy(model.dist_params(obs[idx]), actions[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    s = score(model, p, eval_tag(10**6, 0), p.finetune.eval_episodes, device)  # its own held-out episodes
    scores = {"far_success": float(s["far"].mean()), "close_success": float(s["close"].mean()),
              "full_success": float(s["full"].mean()), "bc_loss": loss.item(), "far_states": int(far.sum())}
    with atomic_path(paths.pretrained, directory=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "policy.safetensors"))
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    log.info("π*: %s -> %s", scores, paths.pretrained)
    return paths.pretrained


def far_states(p: Params, paths, pretrained, device=None) -> dict[str, np.ndarray]:
    """The generic far_buffer stage's question: π* played from FAR starts (room ``close_rooms``)
    until ``far_buffer.size`` states."""
    env = make_env(p, BUFFER_STREAM, p.far_buffer.seed, start_room=p.env.close_rooms)
    gen = torch.Generator().manual_seed(p.far_buffer.seed)
    dev = torch.device(device or "cpu")
    seen: list[np.ndarray] = []
    with torch.no_grad():
        while len(seen) < p.far_buffer.size:
            o, done = env.reset(), False
            while not done and len(seen) < p.far_buffer.size:
                seen.append(o)
                logits = pretrained.dist_params(torch.as_tensor(o)[None].to(dev)).cpu()
                a = torch.multinomial(logits.softmax(-1), 1, generator=gen).item()
                o, _, terminated, truncated, _ = env.step(a)
                done = terminated or truncated
    return {"obs": np.stack(seen)}


def train(p: Params, paths, device, run) -> None:
    """The generic finetune stage's loop: PPO(+RND) from room 0, ``finetune.seeds`` runs one after
    another (``run.seeds_in_turn``), each scored on the evaluation episodes of its checkpoints
    (the same for every method: paired). A killed run resumes from its checkpoint, bit for bit."""
    import copy

    from retainrl.families.minigrid.nets import GridRND

    cfg = p.finetune
    dev = torch.device(device or "cpu")

    def train_one(k: int, seed: int, ckpt):
        gen = run.generator(seed)
        retention = run.retention(seed, gen)
        torch.manual_seed(seed)
        rnd = GridRND()
        model = copy.deepcopy(run.pretrained()) if retention.starts_from_pretrained else new_policy(p).to(dev)
        envs = [make_env(p, TRAIN_STREAM, seed, i) for i in range(cfg.envs)]

        def on_eval(update, m):
            s = score(m, p, eval_tag(seed, update), cfg.eval_episodes, dev)
            return {key: float(v.mean()) for key, v in s.items()}

        curves = learner.train(model, rnd, envs, cfg, retention, gen, device=dev, on_eval=on_eval,
                               desc=f"minigrid {run.method} seed {seed}", checkpoint=ckpt)
        log.info("%s seed %d: FAR %s", run.method, seed, [round(e["far"], 2) for e in curves["eval"]])
        return curves, model.state_dict()

    run.seeds_in_turn([cfg.seed + k for k in range(cfg.seeds)], train_one)
