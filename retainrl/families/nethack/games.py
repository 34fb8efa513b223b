"""Seeded, exactly replayable NetHack games: the env, replay of action sequences, demos on disk,
FAR start states (seeds + action prefix), and the progress counter of long game loops.

See the family's ``stages`` module for why replay is exact (fixed seeds, moon phase, pinned clock).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retainrl.core.errors import ConfigError
from retainrl.families.nethack.expert import BL_DEPTH, BL_SCORE, BL_TIME, BL_XL

log = logging.getLogger(__name__)

OBS_KEYS = (
    "glyphs", "chars", "colors", "specials", "blstats", "message", "misc",
    "inv_glyphs", "inv_letters", "inv_oclasses", "inv_strs",
    "tty_chars", "tty_colors", "tty_cursor",
)
DEMO_FILE = "games.npz"
FAR_FILE = "far_starts.npz"
META_FILE = "meta.json"
DEMO_ARRAYS = ("seeds", "actions", "offsets", "score", "max_depth", "turns", "steps", "done", "far_step")


# --------------------------------------------------------------------------- environment


def game_seeds(master: int, n: int) -> np.ndarray:
    """(n, 3) NLE seeds (core, disp, lgen), a pure function of (master, game index)."""
    out = np.empty((n, 3), np.int64)
    for i in range(n):
        out[i] = np.random.default_rng([master, i]).integers(1, 2**31 - 1, size=3)
    return out


def make_env(character: str = "mon-hum-neu-mal", max_steps: int = 30_000):
    """A seedable NetHack Challenge-style env (full keyboard, nothing auto-answered), clock pinned.

    The game library's wall clock is pinned (``clock``) so that seeds + actions replay
    the same game at any time of day, on any date.
    """
    from nle import nethack as nh
    from nle.env.tasks import NetHackScore

    from retainrl.families.nethack.clock import pin_game_clock

    pin_game_clock()

    options = tuple(o for o in nh.NETHACKOPTIONS if not o.startswith("pickup_types")) + ("pickup_types:$",)
    return NetHackScore(
        character=character,
        actions=nh.ACTIONS,
        allow_all_yn_questions=True,
        allow_all_modes=True,
        penalty_step=0.0,
        penalty_time=0.0,
        max_episode_steps=max_steps,
        fix_moon_phase=True,
        observation_keys=OBS_KEYS,
        options=options,
    )


def reset_seeded(env, seeds) -> dict:
    """Reset ``env`` to the start of the game that ``seeds`` = (core, disp, lgen) determine."""
    core, disp, lgen = (int(s) for s in seeds)
    env.unwrapped.seed(core, disp, False, lgen=lgen)
    obs, _ = env.reset()
    return obs


def replay(env, seeds, actions) -> tuple[dict, float, bool]:
    """Replay ``actions`` from the start of the seeded game; returns (obs, total reward, done)."""
    obs = reset_seeded(env, seeds)
    total, done = 0.0, False
    for i, a in enumerate(actions):
        if done:
            raise ConfigError(f"replay: the game ended at step {i} of {len(actions)}; actions do not match the seeds")
        obs, r, term, trunc, _ = env.step(int(a))
        total += r
        done = term or trunc
    return obs, total, done


def iter_replay(env, seeds, actions):
    """Yield (observation, action) for every step of a stored game, re-rendered by replay.

    This is how BC reads demonstrations: the demos hold only seeds and actions, and the
    observations the expert saw are regenerated at raw NLE speed (observation arrays are
    reused by NLE, so copy what you keep).
    """
    obs = reset_seeded(env, seeds)
    for i, a in enumerate(actions):
        yield obs, int(a)
        obs, _, term, trunc, _ = env.step(int(a))
        if (term or trunc) and i + 1 < len(actions):
            raise ConfigError(f"replay: the game ended at step {i + 1} of {len(actions)}; actions do not match the seeds")


def check_replay(env, rec: "GameRecord") -> None:
    """Replay a recorded game and fail, naming its seeds, unless it ends as the expert's did.

    Cheap (raw NLE speed) insurance that the stored seeds + actions are the game: any source
    of nondeterminism left in NLE would show up here, at collection time, not later as a
    silently different BC dataset or FAR start state.
    """
    pg = Progress.start(reset_seeded(env, rec.seeds))
    for i, a in enumerate(rec.actions):
        obs, _, term, trunc, _ = env.step(int(a))
        if term or trunc:
            if i + 1 < len(rec.actions):
                raise ConfigError(f"replay of game {rec.seeds.tolist()}: it ended at step {i + 1} of {len(rec.actions)}")
            break
        pg.update(obs)
    if (pg.score, pg.turns, pg.max_depth) != (rec.score, rec.turns, rec.max_depth):
        raise ConfigError(
            f"replay of game {rec.seeds.tolist()} does not reproduce it: score/turns/depth "
            f"{(pg.score, pg.turns, pg.max_depth)} vs the expert's {(rec.score, rec.turns, rec.max_depth)}"
        )


@dataclass
class Progress:
    """Score, game turns, experience level and deepest dungeon level of one game so far, from
    blstats. One bookkeeping for the expert's record, its replay check and training episodes.

    The final observation of a game has zeroed blstats (dungeon level 0): it is ignored, so the
    values are the last in-game ones.
    """

    score: int = 0
    turns: int = 0
    xplvl: int = 0
    max_depth: int = 0

    @classmethod
    def start(cls, obs: dict) -> "Progress":
        pg = cls()
        pg.update(obs)
        return pg

    def update(self, obs: dict) -> bool:
        """Take in one observation; True when it is on a level deeper than any before."""
        bl = obs["blstats"]
        depth = int(bl[BL_DEPTH])
        if depth == 0:
            return False
        self.score, self.turns, self.xplvl = int(bl[BL_SCORE]), int(bl[BL_TIME]), int(bl[BL_XL])
        deeper = depth > self.max_depth
        self.max_depth = max(self.max_depth, depth)
        return deeper


@dataclass
class GameRecord:
    seeds: np.ndarray
    actions: np.ndarray  # uint8 indices into nle.nethack.ACTIONS
    score: int
    max_depth: int
    turns: int
    done: bool
    far_step: int  # actions[:far_step] reach start_depth for the first time; -1 if never
    seconds: float



def load_demos(demo_dir: str | Path) -> dict[str, np.ndarray]:
    """Load games.npz; an empty, truncated or foreign file fails with its path in the message."""
    from retainrl.core.artifacts import load_npz, require

    path = require(Path(demo_dir) / DEMO_FILE, "NetHack demonstrations")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: demo file is empty; re-run collect_demos")
    data = load_npz(path, "NetHack demonstrations", required=DEMO_ARRAYS)
    n = len(data["seeds"])
    if n == 0:
        raise ConfigError(f"{path}: demo file holds no games; re-run collect_demos")
    if data["seeds"].shape != (n, 3) or data["offsets"].shape != (n + 1,) or data["offsets"][-1] != len(data["actions"]):
        raise ConfigError(f"{path}: demo file is inconsistent (seeds {data['seeds'].shape}, offsets {data['offsets'].shape}, actions {data['actions'].shape})")
    return data


def game_actions(demos: dict[str, np.ndarray], i: int) -> np.ndarray:
    o = demos["offsets"]
    return demos["actions"][o[i] : o[i + 1]]


def far_start_states(demos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FAR start states: (seeds, prefix length) where each game first reached the start depth.

    Restoring one costs ``prefix`` env steps of replay (stored, so its cost is known up front).
    """
    games = np.flatnonzero(demos["far_step"] >= 0)
    return {
        "game": games.astype(np.int64),
        "seeds": demos["seeds"][games],
        "prefix": demos["far_step"][games].astype(np.int64),
    }


def restore_far_state(env, demos: dict[str, np.ndarray], far: dict[str, np.ndarray], k: int) -> dict:
    """Put ``env`` in the k-th FAR start state by replaying its action prefix; returns the observation."""
    g = int(far["game"][k])
    prefix = game_actions(demos, g)[: int(far["prefix"][k])]
    obs, _, done = replay(env, far["seeds"][k], prefix)
    if done:
        raise ConfigError(f"FAR start state {k}: the replayed game ended before the start state")
    return obs



def cpu_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
