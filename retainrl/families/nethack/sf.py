"""NetHack inside sample-factory: the env adapter, the policy's encoder, and BC pre-training of π*.

Why sample-factory's own ``ActorCritic``: the study fine-tunes π* with APPO in sample-factory, so
π* must be a model sample-factory builds from its config and loads from its checkpoint layout
(``<experiment>/checkpoint_p0/checkpoint_*.pth`` with ``model`` and ``optimizer`` state dicts,
``<experiment>/config.json``). BC therefore trains exactly the network ``create_actor_critic``
builds (our encoder + sample-factory's GRU core + its action head), then pre-trains the critic
with everything else frozen (as the study did before fine-tuning).

Demonstrations hold only seeds and actions; BC streams observations by replaying ``B`` games in
parallel and training on chunks of ``T`` steps with the GRU state carried across chunks
(truncated BPTT) and reset at game boundaries. Nothing is rendered to disk.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from retainrl.families.nethack.games import Progress

log = logging.getLogger(__name__)

SF_ENV = "nethack_monk"
MAP_SHAPE = (21, 79)
CROP = 9  # egocentric window (odd)
BLSTATS = 27
MSG_LEN = 256


# --------------------------------------------------------------------------- env adapter


N_ACTIONS = 121  # len(nle.nethack.ACTIONS)


def obs_space(teacher: bool = False):
    """The policy's observation; with ``teacher`` also π*'s logits on the same state (for KS)."""
    spaces = {
        "chars": gym.spaces.Box(0, 255, MAP_SHAPE, np.uint8),
        "blstats": gym.spaces.Box(-np.inf, np.inf, (BLSTATS,), np.float32),
        "misc": gym.spaces.Box(0, 1, (3,), np.float32),
        "message": gym.spaces.Box(0, 255, (MSG_LEN,), np.uint8),
    }
    if teacher:
        spaces["teacher_logits"] = gym.spaces.Box(-np.inf, np.inf, (N_ACTIONS,), np.float32)
    return gym.spaces.Dict(spaces)


def sf_obs(obs: dict) -> dict[str, np.ndarray]:
    """The policy's view of an NLE observation (copies: NLE reuses its arrays)."""
    return {
        "chars": obs["chars"].astype(np.uint8, copy=True),
        "blstats": obs["blstats"].astype(np.float32),
        "misc": obs["misc"].astype(np.float32),
        "message": obs["message"].astype(np.uint8, copy=True),
    }


class NetHackSF(gym.Env):
    """A gymnasium env for sample-factory: seeded games, or episodes started in FAR start states.

    ``seeds``: (n, 3) game seeds cycled through in order (reproducible episodes), or None for
    fresh NLE seeds. ``far``: (demos, far_start_states) to start episodes in the next FAR start
    state by replaying its prefix: every episode (``far_share`` 1), or that share of them, evenly
    spread (:func:`far_episode`), the others from ``seeds``. ``episode_log``: a JSONL
    file that gets one line per finished episode (this env's step count when it ended, score,
    deepest level, turns, experience level, death); the env may live in a rollout-worker
    process, so a file is how training episodes reach the caller.
    """

    def __init__(self, character: str = "mon-hum-neu-mal", max_steps: int = 30_000, seeds=None, far=None, offset: int = 0,
                 teacher: str | Path | None = None, episode_log: str | Path | None = None, steps: int = 0,
                 far_share: float = 1.0):
        from nle import nethack as nh

        from retainrl.families.nethack.games import make_env

        self.env = make_env(character, max_steps)
        # Kickstarting needs π*'s output on the states the learner trains on, with π*'s own
        # recurrent context: π* is stepped here, alongside the game, and its logits ride in the obs.
        self.teacher = None
        if teacher:
            self.teacher, tcfg = load_sf_policy(Path(teacher))
            self.teacher.eval()
            self.teacher_rnn = torch.zeros(1, tcfg.rnn_size)
        self.observation_space = obs_space(teacher=self.teacher is not None)
        self.action_space = gym.spaces.Discrete(len(nh.ACTIONS))
        self.seeds = seeds
        self.far = far
        self.far_share = far_share
        self.far_episodes = 0
        self.episode = offset
        self.render_mode = None
        self.episode_log = Path(episode_log) if episode_log else None
        # Every action this env takes, one byte each, in order: what a resumed run replays to put
        # the game that was in progress at the checkpoint back where it was (an NLE game cannot be
        # saved, but seeds + actions replay it exactly). Unbuffered: a SIGKILL loses none of it.
        self.action_log = None if self.episode_log is None else action_log_path(self.episode_log)
        self._actions = None
        self.resume: tuple[int, np.ndarray] | None = None  # (game index, its actions so far): see in_progress_game
        self.steps = steps  # env steps so far (a resumed run starts at the checkpoint's share)
        self.progress = None
        if self.action_space.n > 256:
            raise ValueError(f"{self.action_space.n} actions do not fit the one-byte action log")

    def reset(self, seed=None, options=None):
        if self.resume is not None:  # a resumed run's first episode: the game in progress at the checkpoint
            episode, actions = self.resume
            self.resume = None
            self.episode = episode
            out = self._new_game()
            for a in actions:  # replayed, not logged again (the log already holds them) nor counted in steps
                obs, _, term, trunc, _ = self.env.step(int(a))
                if term or trunc:
                    raise RuntimeError(f"game {episode} ended while its {len(actions)} logged actions were replayed: not the logged game")
                self.progress.update(obs)
                out = self._obs(obs)  # also steps π* (KS's teacher) through the replay, as it was stepped then
            return out, {}
        return self._new_game(), {}

    def _new_game(self) -> dict:
        from retainrl.families.nethack.games import reset_seeded, restore_far_state

        if self.far is not None and far_episode(self.episode, self.far_share):
            demos, far = self.far
            obs = restore_far_state(self.env, demos, far, self.far_episodes % len(far["game"]))
            self.far_episodes += 1
        elif self.seeds is not None:
            obs = reset_seeded(self.env, self.seeds[self.episode % len(self.seeds)])
        else:
            obs, _ = self.env.reset()
        self.episode += 1
        if self.teacher is not None:
            self.teacher_rnn.zero_()
        self.progress = Progress.start(obs)
        return self._obs(obs)

    def _obs(self, obs: dict) -> dict:
        out = sf_obs(obs)
        if self.teacher is not None:
            with torch.no_grad():
                res = self.teacher({k: torch.from_numpy(v)[None] for k, v in out.items()}, self.teacher_rnn)
            self.teacher_rnn = res["new_rnn_states"]
            out["teacher_logits"] = res["action_logits"][0].numpy().astype(np.float32)
        return out

    def step(self, action):
        if self.action_log is not None:
            if self._actions is None:  # opened on the first step: an env only probed for its spaces writes nothing
                self._actions = open(self.action_log, "ab", buffering=0)
            self._actions.write(bytes((int(action),)))
        obs, reward, term, trunc, info = self.env.step(int(action))
        self.steps += 1
        self.progress.update(obs)
        if (term or trunc) and self.episode_log is not None:
            pg = self.progress
            line = {"env_local_steps": self.steps, "score": pg.score, "max_depth": pg.max_depth, "turns": pg.turns,
                    "xplvl": pg.xplvl, "died": bool(term)}
            with open(self.episode_log, "a") as f:
                f.write(json.dumps(line) + "\n")
        return self._obs(obs), float(reward), bool(term), bool(trunc), info

    def render(self):
        return None

    def close(self):
        if self._actions is not None:
            self._actions.close()
        self.env.close()


def far_episode(e: int, share: float) -> bool:
    """Whether episode ``e`` starts from a FAR state when ``share`` of them do, evenly spread."""
    return int((e + 1) * share) > int(e * share)


def make_sf_env(full_env_name, cfg=None, env_config=None, render_mode=None):
    """sample-factory's env factory; each worker/env index gets its own slice of the seed cycle.

    In parallel mode the env lives in a rollout-worker process of its own: torch there gets one
    thread (kickstarting steps π* in the env), as the workers already use every core.
    """
    from retainrl.families.nethack.games import game_seeds

    idx = 0 if env_config is None else int(getattr(env_config, "env_id", 0) or 0)
    character = getattr(cfg, "nethack_character", "mon-hum-neu-mal")
    seed = int(getattr(cfg, "nethack_seed", 0))
    seeds = game_seeds(1_000_000 + 1000 * seed + idx, 1000)  # reproducible, disjoint from the demos' seeds
    if cfg is not None and not getattr(cfg, "serial_mode", True):
        torch.set_num_threads(1)
    log_dir = getattr(cfg, "nethack_episode_log", "")
    episode_log = Path(log_dir) / f"env_{idx:04d}.jsonl" if log_dir else None
    far_share, far = float(getattr(cfg, "nethack_far_share", 0.0)), None
    if far_share > 0:
        from retainrl.families.nethack.games import far_start_states, load_demos

        demos = load_demos(cfg.nethack_demos)
        far = (demos, far_start_states(demos))
    steps = int(getattr(cfg, "nethack_steps_offset", 0))
    env = NetHackSF(character=character, max_steps=int(getattr(cfg, "nethack_max_steps", 30_000)), seeds=seeds,
                    teacher=getattr(cfg, "nethack_teacher", "") or None, episode_log=episode_log,
                    steps=steps, far=far, far_share=far_share)
    if steps > 0:  # a resumed run: the game in progress at the checkpoint, where it was
        env.resume = in_progress_game(episode_log, steps)
        env.far_episodes = sum(far_episode(e, far_share) for e in range(env.resume[0])) if far is not None else 0
    return env


def action_log_path(episode_log: Path) -> Path:
    """The action log beside an env's episode log (``env_0001.jsonl`` → ``actions_0001.u8``)."""
    return episode_log.with_name(episode_log.stem.replace("env_", "actions_", 1) + ".u8")


def in_progress_game(episode_log: Path | None, local_steps: int) -> tuple[int, np.ndarray]:
    """(index, actions so far) of the game an env was playing when it had taken ``local_steps``
    steps: the resumed run's checkpoint. The logs must be cut to that point (:func:`cut_episode_log`):
    the episodes they hold as finished came before it, and the game in progress began where the
    last of them ended. Replaying its actions puts the env exactly where it was; what cannot come
    back is the policy's recurrent state, which starts from zeros as at an episode start.

    Why not start a fresh game: the first version restarted every env at game 0, so a resumed run
    replayed games it had trained on, and moved much further from π* than the uninterrupted run
    (``experiments/nethack_resume_check.py``)."""
    if episode_log is None:
        raise ValueError("a resumed NetHack env needs its episode log (--nethack_episode_log) to know where its game stood")
    actions_file = action_log_path(episode_log)
    actions = np.frombuffer(actions_file.read_bytes(), np.uint8) if actions_file.is_file() else np.zeros(0, np.uint8)
    if len(actions) < local_steps:  # parallel mode: envs do not step in lockstep, a slow one is behind the share
        log.warning("%s: %d logged actions, fewer than this env's share %d of the checkpoint: replaying those",
                    actions_file, len(actions), local_steps)
    n = min(len(actions), local_steps)
    ends = [json.loads(line)["env_local_steps"] for line in episode_log.read_text().splitlines()] if episode_log.is_file() else []
    ends = [e for e in ends if e <= n]
    start = max(ends, default=0)
    return len(ends), actions[start:n].copy()


# --------------------------------------------------------------------------- encoder


def _symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def make_encoder_cls():
    from sample_factory.model.encoder import Encoder

    class NetHackEncoder(Encoder):
        """Map (embedded chars, strided convs) + egocentric crop + bottom line + message → 512."""

        def __init__(self, cfg, space):
            super().__init__(cfg)
            e = 16
            self.embed = nn.Embedding(256, e)
            self.map_conv = nn.Sequential(
                nn.Conv2d(e, 16, 3, stride=2, padding=1), nn.ELU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ELU()
            )
            self.map_fc = nn.Sequential(nn.Linear(16 * 6 * 20, 256), nn.ELU())
            self.crop_conv = nn.Sequential(nn.Conv2d(e, 16, 3, padding=1), nn.ELU(), nn.Conv2d(16, 16, 3, padding=1), nn.ELU())
            self.crop_fc = nn.Sequential(nn.Linear(16 * CROP * CROP, 128), nn.ELU())
            self.stats_fc = nn.Sequential(nn.Linear(BLSTATS + 3, 64), nn.ELU())
            self.msg_embed = nn.Embedding(256, 32, padding_idx=0)
            self.msg_fc = nn.Sequential(nn.Linear(32, 64), nn.ELU())
            self.out = nn.Sequential(nn.Linear(256 + 128 + 64 + 64, 512), nn.ELU())
            r = CROP // 2
            self.register_buffer("offs", torch.arange(-r, r + 1), persistent=False)

        def forward(self, obs):
            chars = obs["chars"].long()
            b = chars.shape[0]
            emb = self.embed(chars).permute(0, 3, 1, 2)  # B, e, 21, 79
            m = self.map_fc(self.map_conv(emb).flatten(1))
            r = CROP // 2
            padded = nn.functional.pad(chars, (r, r, r, r))
            x = obs["blstats"][:, 0].long().clamp(0, MAP_SHAPE[1] - 1) + r
            y = obs["blstats"][:, 1].long().clamp(0, MAP_SHAPE[0] - 1) + r
            ys = (y[:, None] + self.offs[None, :])[:, :, None]
            xs = (x[:, None] + self.offs[None, :])[:, None, :]
            crop = padded[torch.arange(b, device=chars.device)[:, None, None], ys, xs]
            c = self.crop_fc(self.crop_conv(self.embed(crop).permute(0, 3, 1, 2)).flatten(1))
            s = self.stats_fc(torch.cat([_symlog(obs["blstats"].float()), obs["misc"].float()], 1))
            msg = obs["message"].long()
            me = self.msg_embed(msg).sum(1) / (msg > 0).sum(1, keepdim=True).clamp_min(1)
            return self.out(torch.cat([m, c, s, self.msg_fc(me)], 1))

        def get_out_size(self) -> int:
            return 512

    return NetHackEncoder


_ENCODER_CLS = None


def make_nethack_encoder(cfg, space):
    """Module-level (picklable) encoder factory: sample-factory ships it to its worker processes."""
    global _ENCODER_CLS
    if _ENCODER_CLS is None:
        _ENCODER_CLS = make_encoder_cls()
    return _ENCODER_CLS(cfg, space)


_REGISTERED = False


def register() -> None:
    """Register the env and the encoder with sample-factory (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from sample_factory.algo.utils.context import global_model_factory
    from sample_factory.envs.env_utils import register_env

    register_env(SF_ENV, make_sf_env)
    global_model_factory().register_encoder_factory(make_nethack_encoder)
    _REGISTERED = True


def sf_config(train_dir: Path, experiment: str, extra: list[str] | None = None):
    """A sample-factory config for the NetHack policy (recurrent: GRU core, as in the study)."""
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args

    register()
    argv = [
        f"--env={SF_ENV}", "--algo=APPO", f"--train_dir={train_dir}", f"--experiment={experiment}",
        "--use_rnn=True", "--rnn_type=gru", "--rnn_size=256", "--rnn_num_layers=1",
        "--normalize_input=False", "--normalize_returns=True", "--device=cpu",
        "--learning_rate=0.0001", "--gamma=0.999", "--max_grad_norm=4.0", "--reward_clip=10",
        "--rollout=32", "--batch_size=4096", "--exploration_loss_coeff=0.001",
    ] + list(extra or [])
    parser, _ = parse_sf_args(argv)
    parser.add_argument("--nethack_character", default="mon-hum-neu-mal", type=str)
    parser.add_argument("--nethack_teacher", default="", type=str, help="π* experiment dir (kickstarting)")
    parser.add_argument("--nethack_seed", default=0, type=int)
    parser.add_argument("--nethack_max_steps", default=30_000, type=int, help="env steps per training episode")
    parser.add_argument("--nethack_episode_log", default="", type=str, help="dir for one JSONL episode log per env")
    parser.add_argument("--nethack_steps_offset", default=0, type=int, help="each env's step count at a resumed checkpoint")
    parser.add_argument("--nethack_far_share", default=0.0, type=float, help="share of training episodes from FAR start states")
    parser.add_argument("--nethack_demos", default="", type=str, help="demos dir whose FAR start states those episodes use")
    cfg = parse_full_cfg(parser, argv)
    # sample-factory stamps the checkout's commit into every config.json it saves; DVC already pins
    # the code, and the stamp made the same weights hash differently at every commit.
    cfg.git_hash, cfg.git_repo_name = "unknown", "not a git repository"  # its own values outside a checkout
    return cfg


#: config.json keys that say where a run ran (its temporary or resumable directory), not what it is
WHERE_KEYS = ("train_dir", "experiment", "nethack_episode_log")


def portable_config(exp_dir: Path) -> None:
    """Make a finished run's config.json the same bytes wherever and whenever it ran: drop the keys
    that name its working directory, and write the paths it read (π*, the demos) relative to the
    working directory (the repository root for a stage). Why: the run directory is a DVC output, and
    an absolute path or a resumable-checkpoint key in it made every rerun, and every clone, a
    different artifact, so every stage downstream reran though the weights were the same bits."""
    f = Path(exp_dir) / "config.json"
    cfg = json.loads(f.read_text())
    cwd = str(Path.cwd().resolve()) + os.sep
    cfg = {k: (v.removeprefix(cwd) if isinstance(v, str) else v) for k, v in cfg.items() if k not in WHERE_KEYS}
    f.write_text(json.dumps(cfg, indent=2) + "\n")


# --------------------------------------------------------------------------- BC


class ReplayStream:
    """``batch`` games replayed side by side; ``chunk(T)`` gives T steps of (obs, action, first).

    Games are taken in a fixed order (cycling), so BC is reproducible. ``first`` marks the first
    step of a game (the GRU state is reset there).
    """

    def __init__(self, demos: dict, batch: int, character: str = "mon-hum-neu-mal", games=None):
        from retainrl.families.nethack.games import make_env

        self.demos = demos
        self.games = np.arange(len(demos["seeds"])) if games is None else np.asarray(games)
        self.envs = [make_env(character, 10**7) for _ in range(batch)]
        self.next_game = 0
        self.slots = [self._start(i) for i in range(batch)]

    def _start(self, slot: int) -> dict:
        from retainrl.families.nethack.games import game_actions, iter_replay

        g = int(self.games[self.next_game % len(self.games)])
        self.next_game += 1
        return {"it": iter_replay(self.envs[slot], self.demos["seeds"][g], game_actions(self.demos, g)), "t": 0}

    def chunk(self, T: int):
        B = len(self.slots)
        out = {k: np.zeros((T, B) + s.shape, s.dtype) for k, s in obs_space().spaces.items()}
        actions = np.zeros((T, B), np.int64)
        first = np.zeros((T, B), np.float32)
        for b in range(B):
            for t in range(T):
                slot = self.slots[b]
                try:
                    obs, a = next(slot["it"])
                except StopIteration:
                    slot = self.slots[b] = self._start(b)
                    obs, a = next(slot["it"])
                first[t, b] = slot["t"] == 0
                for k, v in sf_obs(obs).items():
                    out[k][t, b] = v
                actions[t, b] = a
                slot["t"] += 1
        return {k: torch.from_numpy(v) for k, v in out.items()}, torch.from_numpy(actions), torch.from_numpy(first)

    def close(self):
        for e in self.envs:
            e.close()


def unroll(ac, obs: dict, first: torch.Tensor, rnn: torch.Tensor):
    """Run the actor-critic over a (T, B) chunk; returns the action logits (T, B, A) and the last state."""
    T = first.shape[0]
    logits = []
    for t in range(T):
        rnn = rnn * (1.0 - first[t])[:, None]
        head = ac.forward_head({k: v[t] for k, v in obs.items()})
        core, rnn = ac.forward_core(head, rnn)
        logits.append(ac.forward_tail(core, values_only=False, sample_actions=False)["action_logits"])
    return torch.stack(logits), rnn


def behavioural_cloning(demos: dict, cfg, *, steps: int, batch: int, unroll_len: int, lr: float,
                        seed: int = 0, character: str = "mon-hum-neu-mal", progress: bool = True):
    """BC of sample-factory's ActorCritic on the expert's actions; returns (actor_critic, metrics).

    The critic is left untrained here: regressing it on the *expert's* score-to-go (an earlier
    version did) fits returns π* never gets (critic ≈ 500 where π*'s clipped return-to-go is
    ≈ 15), and that error then drives APPO's first updates. ``critic_warmup`` fits it on π*'s own
    games instead.
    """
    from nle import nethack as nh
    from sample_factory.model.actor_critic import create_actor_critic
    from tqdm import tqdm

    torch.manual_seed(seed)
    import gymnasium as gym

    ac = create_actor_critic(cfg, obs_space(), gym.spaces.Discrete(len(nh.ACTIONS)))
    ac.train()
    stream = ReplayStream(demos, batch, character)
    rnn = torch.zeros(batch, cfg.rnn_size)
    opt = torch.optim.Adam(ac.parameters(), lr=lr)
    metrics = {"bc_loss": [], "bc_acc": []}
    try:
        for _ in tqdm(range(steps), desc="BC (actor)", disable=not progress):
            obs, actions, first = stream.chunk(unroll_len)
            logits, rnn = unroll(ac, obs, first, rnn)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), actions.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(ac.parameters(), cfg.max_grad_norm)
            opt.step()
            rnn = rnn.detach()
            metrics["bc_loss"].append(float(loss.detach()))
            metrics["bc_acc"].append(float((logits.detach().argmax(-1) == actions).float().mean()))
    finally:
        stream.close()
    return ac, metrics


def save_sf_checkpoint(ac, cfg, exp_dir: Path, lr: float) -> Path:
    """Write the model where sample-factory's learner looks for it (and its config.json)."""
    ckpt_dir = Path(exp_dir) / "checkpoint_p0"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.Adam(ac.parameters(), lr=lr)
    path = ckpt_dir / "checkpoint_000000000_0.pth"
    torch.save({"train_step": 0, "env_steps": 0, "best_performance": -1e9, "model": ac.state_dict(),
                "optimizer": opt.state_dict(), "curr_lr": lr}, path)
    (Path(exp_dir) / "config.json").write_text(json.dumps(vars(cfg), indent=2, default=str))
    return path


def load_sf_policy(exp_dir: Path, weights: bool = True):
    """Rebuild the ActorCritic from a checkpoint directory (what the fine-tuning learner will do)."""
    import gymnasium as gym
    from nle import nethack as nh
    from sample_factory.algo.learning.learner import Learner
    from sample_factory.model.actor_critic import create_actor_critic
    from sample_factory.utils.attr_dict import AttrDict

    register()
    cfg = AttrDict(json.loads((Path(exp_dir) / "config.json").read_text()))
    ac = create_actor_critic(cfg, obs_space(), gym.spaces.Discrete(len(nh.ACTIONS)))
    if not weights:
        return ac, cfg
    ckpts = Learner.get_checkpoints(str(Path(exp_dir) / "checkpoint_p0"))
    state = Learner.load_checkpoint(ckpts, "cpu")
    if state is None:
        from retainrl.core.config import ConfigError

        raise ConfigError(f"{exp_dir}: no sample-factory checkpoint found")
    ac.load_state_dict(state["model"])
    return ac, cfg


# --------------------------------------------------------------------------- APPO runs


def snapshot_schedule(env_steps: int, snapshots: int) -> list[int]:
    """Evenly spaced env steps at which snapshots are taken; the last is ``env_steps`` (the final policy)."""
    return sorted({int(round(env_steps * (k + 1) / snapshots)) for k in range(snapshots)})


def load_snapshot(exp_dir: Path, path: Path):
    """π's network from ``exp_dir/config.json`` with the weights of one snapshot file."""
    ac, cfg = load_sf_policy(exp_dir, weights=False)
    ac.load_state_dict(torch.load(path, map_location="cpu")["model"])
    return ac, cfg


def run_appo(pretrained: Path | None, exp_dir: Path, retention, *, env_steps: int, num_envs: int, rollout: int,
             batch_size: int, lr: float, entropy: float, epochs: int = 1, freeze_encoder: bool = True, seed: int = 0,
             device: str = "cpu", max_episode_steps: int = 30_000, snapshots: int = 1, workers: int = 1,
             batched_sampling: bool = True, train_only: tuple[str, ...] = (), save_every_s: float | None = None,
             far_share: float = 0.0, demos: Path | None = None) -> dict:
    """Fine-tune π* with APPO (sample-factory) plus a retention method; writes into ``exp_dir``.

    ``workers`` 1 runs sample-factory's serial mode (synchronous APPO, everything in this process:
    the right choice on a small CPU box, and reproducible); more runs its parallel mode with that
    many rollout-worker processes, a learner process and asynchronous APPO (the study's setup,
    for a GPU machine). ``batched_sampling`` uses sample-factory's batched sampler (one tensor
    batch per worker instead of per-env bookkeeping). ``pretrained`` None trains from scratch
    (random init, nothing frozen). ``epochs`` is sample-factory's ``num_epochs``: SGD passes over
    each batch. For a method that uses π*'s outputs on the online states (KS) the envs step π*
    alongside the game (``--nethack_teacher``): only they hold π*'s recurrent state. ``train_only`` (parameter-name prefixes) freezes everything else:
    ``("critic_linear",)`` is the critic warm-up (the policy plays and stays π*). ``far_share``
    of the training episodes start from the FAR start states of ``demos`` (``NetHackSF``).

    Resume: with ``save_every_s``, sample-factory checkpoints the learner that often (wall clock),
    and a call on an ``exp_dir`` that holds such a checkpoint (a killed run) goes on from it
    (``retainrl.learners.appo`` says what comes back). The episode log is cut back to the
    episodes that ended before that checkpoint, and each env's step count starts at its share of
    the checkpoint's env steps, so ``train_episodes.json`` reads as one run; each env replays the
    game it was playing at the checkpoint up to that point (:func:`in_progress_game`).

    Besides sample-factory's checkpoints, ``exp_dir`` gets ``snapshots/step_<n>.pth`` (see
    ``retainrl.learners.appo``) and ``train_episodes.json``: every training episode that ended, from the
    envs' logs, with ``env_steps`` ≈ the run's env steps at that time (the env's own step count ×
    the number of envs, which step in lockstep within a worker).
    """
    import shutil
    import time

    from sample_factory.algo.utils.misc import ExperimentStatus
    from sample_factory.train import make_runner

    from retainrl.learners.appo import attach

    n_envs = workers * num_envs
    resumed_at = resume_point(exp_dir)
    if pretrained is not None and resumed_at is None:
        shutil.copytree(pretrained, exp_dir, dirs_exist_ok=True)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if pretrained is None:
        freeze_encoder = False
    (exp_dir / "checkpoint_p0" / "checkpoint_temp").unlink(missing_ok=True)  # a save cut short by a kill
    episode_log = exp_dir / "episode_log"
    if resumed_at is None:
        shutil.rmtree(episode_log, ignore_errors=True)
        episode_log.mkdir()
    else:
        log.info("resuming the APPO run in %s from its checkpoint at %d env steps", exp_dir, resumed_at)
        cut_episode_log(episode_log, resumed_at // n_envs)
    teacher = [f"--nethack_teacher={pretrained}"] if retention.uses_online_states and pretrained is not None else []
    if far_share > 0:
        if demos is None:
            raise ValueError("run_appo: far_share > 0 needs the demos whose FAR start states the episodes start from")
        teacher += [f"--nethack_far_share={far_share}", f"--nethack_demos={Path(demos).resolve()}"]
    mode = (["--num_workers=1", "--serial_mode=True", "--async_rl=False"] if workers == 1
            else [f"--num_workers={workers}", "--serial_mode=False", "--async_rl=True"])
    cfg = sf_config(exp_dir.parent, exp_dir.name, mode + [
        f"--num_envs_per_worker={num_envs}", "--worker_num_splits=1", f"--batched_sampling={batched_sampling}",
        f"--batch_size={batch_size}", f"--rollout={rollout}", "--num_batches_per_epoch=1",
        f"--num_epochs={epochs}", f"--train_for_env_steps={env_steps}",
        f"--save_every_sec={100000 if save_every_s is None else max(1, round(save_every_s))}",
        f"--nethack_steps_offset={0 if resumed_at is None else resumed_at // n_envs}",
        "--experiment_summaries_interval=100000", "--with_wandb=False", "--restart_behavior=resume",
        "--decorrelate_envs_on_one_worker=False", f"--learning_rate={lr}", f"--exploration_loss_coeff={entropy}",
        f"--nethack_seed={seed}", f"--seed={seed}", f"--device={device}", f"--nethack_max_steps={max_episode_steps}",
        f"--nethack_episode_log={episode_log}",
    ] + teacher)
    t0 = time.perf_counter()
    cfg, runner = make_runner(cfg)
    status = runner.init()
    if status == ExperimentStatus.SUCCESS:
        for worker in runner.learners.values():
            attach(worker.learner, retention, freeze_encoder, exp_dir / "snapshots", snapshot_schedule(env_steps, snapshots),
                   train_only)
        status = runner.run()
    wall = time.perf_counter() - t0
    # sample-factory saves `git diff` of whatever repository the process runs in: the user's
    # uncommitted work, unrelated to the run (DVC already pins the code a stage depends on), would
    # otherwise ship inside the cached, pushed artifact.
    (exp_dir / "git.diff").unlink(missing_ok=True)
    if status == ExperimentStatus.SUCCESS:  # a failed run keeps its log and config for a look
        # sample-factory's own log and TensorBoard events carry wall-clock times (the events also the
        # host name): the stage logs what matters, and the artifact must be the same bytes on a rerun
        (exp_dir / "sf_log.txt").unlink(missing_ok=True)
        shutil.rmtree(exp_dir / ".summary", ignore_errors=True)
        portable_config(exp_dir)
    # Only the final checkpoint stays: π*'s copy the run started from (snapshots/step_000000000.pth
    # holds the same weights) and the periodic ones are gone, however many were written.
    for old in sorted((exp_dir / "checkpoint_p0").glob("checkpoint_*.pth"))[:-1]:
        old.unlink()
    episodes = collect_episode_log(episode_log, n_envs)
    shutil.rmtree(episode_log)
    (exp_dir / "train_episodes.json").write_text(json.dumps(episodes) + "\n")
    snaps = sorted((exp_dir / "snapshots").glob("step_*.pth"))
    if not snaps:  # the learner never initialised: the caller reports the status
        last = {"env_steps": 0, "actor_updates": 0, "retention_loss_last": 0.0}
    else:
        last = torch.load(snaps[-1], map_location="cpu")
    done = int(runner.env_steps.get(0, last["env_steps"]))
    return {"status": int(status), "actor_updates": int(last["actor_updates"]),
            "retention_loss_last": float(last["retention_loss_last"]), "env_steps": done, "wall_s": wall,
            "env_steps_per_s": done / max(wall, 1e-9), "train_episodes": len(episodes),
            "workers": workers, "batched_sampling": bool(batched_sampling)}


def resume_point(exp_dir: Path) -> int | None:
    """The env steps of the newest sample-factory checkpoint in ``exp_dir`` written by a run
    (π*'s copy, at 0 steps, does not count), or None: a fresh run."""
    best = None
    for f in (Path(exp_dir) / "checkpoint_p0").glob("checkpoint_*_*.pth"):
        _, train_step, env_steps = f.stem.split("_")
        if int(env_steps) > 0 and (best is None or int(train_step) > best[0]):
            best = (int(train_step), int(env_steps))
    return None if best is None else best[1]


def cut_episode_log(log_dir: Path, env_local_steps: int) -> None:
    """Drop the episodes that ended after a resumed checkpoint, and the actions taken after it
    (their training was lost with the kill; the resumed run takes those steps again)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for f in log_dir.glob("env_*.jsonl"):
        kept = [line for line in f.read_text().splitlines() if json.loads(line)["env_local_steps"] <= env_local_steps]
        f.write_text("".join(line + "\n" for line in kept))
    for f in log_dir.glob("actions_*.u8"):
        if f.stat().st_size > env_local_steps:
            os.truncate(f, env_local_steps)


def collect_episode_log(log_dir: Path, n_envs: int) -> list[dict]:
    """The envs' JSONL episode logs merged in (approximate) order of the run's env steps."""
    out = []
    for f in sorted(Path(log_dir).glob("env_*.jsonl")):
        env = int(f.stem.split("_")[1])
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            out.append({"env_steps": rec["env_local_steps"] * n_envs, "env": env, **rec})
    return sorted(out, key=lambda r: (r["env_steps"], r["env"]))
