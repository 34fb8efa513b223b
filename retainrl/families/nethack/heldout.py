"""Held-out evaluation starts and the expert on the evaluation protocol (stage ``eval_starts``).

Why a stage of its own: the FAR start states used to be the states where the *demo* games first
reached Dlvl ``far.start_depth``. Those 50 games are what π* was cloned on and what fills the BC
buffer, so FAR was in-sample for π* and for BC, and with 50 starts cycled over 100 episodes the
episodes were not independent draws. Here the scripted expert plays fresh games from
``evaluate.far_seed`` (a master seed that no demo, BC or buffer game uses) and each game gives one
FAR start: ``evaluate.episodes`` distinct starts, each played once per policy and sampling seed.

The same expert also plays the protocol itself, so the report can say how far π* is from its
teacher: CLOSE = the evaluation's CLOSE games (seeds from ``evaluate.seed``) for
``evaluate.max_steps`` steps from the start; FAR = ``evaluate.max_steps`` steps on from each
held-out start. The expert is deterministic, so it plays each episode once. On FAR it keeps the
memory of its own way down (it played the prefix), which a policy started at the FAR state lacks;
the expert's FAR score is therefore an upper reference, not a like-for-like rival.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from retainrl.core.config import ConfigError
from retainrl.families.nethack.games import Progress, cpu_cores, game_seeds, make_env, replay, reset_seeded
from retainrl.families.nethack.params import Params

log = logging.getLogger(__name__)

STARTS_FILE = "far_starts.npz"  # seeds, actions (concatenated prefixes), offsets: what replay needs
EXPERT_FILE = "expert.json"  # the expert's episodes on CLOSE and FAR, and how many games it took
#: Held-out games tried per FAR start wanted before the stage gives up (the default expert reaches
#: Dlvl 4 in every demo game; a game that dies or stalls first yields no start).
MAX_GAMES_PER_START = 3


def starts_dir(paths) -> Path:
    """Where the stage writes: ``data/nethack/eval_starts``, beside the demos."""
    return Path(paths.demos).parent / "eval_starts"


def expert_episode(env, expert, obs: dict, max_steps: int) -> dict:
    """The expert plays ``max_steps`` env steps on from ``obs`` (env already there); the same
    per-episode record as a policy's (``results.run_episodes``), without a KL."""
    pg = Progress.start(obs)
    s0, d0 = pg.score, pg.max_depth
    steps, died = 0, False
    for t in range(1, max_steps + 1):
        obs, _, term, trunc, _ = env.step(expert.act(obs))
        steps = t
        if term or trunc:
            died = bool(term)
            break
        pg.update(obs)
    return {"score": pg.score, "score_gain": pg.score - s0, "start_depth": d0, "max_depth": pg.max_depth,
            "levels": pg.max_depth - d0, "turns": pg.turns, "xplvl": pg.xplvl, "steps": steps, "died": died}


def expert_to_depth(env, expert, seeds, depth: int, cap: int) -> tuple[dict, list[int]] | None:
    """The expert from the start of game ``seeds`` until it first stands on Dlvl ``depth``:
    (that observation, the actions that led there), or None if the game ends or ``cap`` steps pass first."""
    expert.reset()
    obs = reset_seeded(env, seeds)
    pg = Progress.start(obs)
    actions: list[int] = []
    while pg.max_depth < depth:
        if len(actions) >= cap:
            return None
        a = expert.act(obs)
        actions.append(a)
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            return None
        pg.update(obs)
    return obs, actions


class ExpertPlayer:
    """One NLE env and the scripted expert, playing whole games of the protocol on request.

    Each game starts from its own seeds with the expert reset, so a game's record does not depend
    on which games this player played before: the stage can hand games to any process.
    """

    def __init__(self, character: str, max_steps: int):
        from retainrl.families.nethack.expert import Expert

        self.env = make_env(character, max_steps)
        self.expert = Expert()

    def far_game(self, seeds, depth: int, cap: int, max_steps: int) -> dict | None:
        """A held-out FAR start (the expert's way down to Dlvl ``depth``) and the expert's episode
        from it, or None when the game yields no start."""
        got = expert_to_depth(self.env, self.expert, seeds, depth, cap)
        if got is None:
            return None
        obs, prefix = got
        return {"prefix": np.asarray(prefix, np.uint8), "episode": expert_episode(self.env, self.expert, obs, max_steps)}

    def close_game(self, seeds, max_steps: int) -> dict:
        """The expert's CLOSE episode: ``max_steps`` steps from the start of game ``seeds``."""
        self.expert.reset()
        return expert_episode(self.env, self.expert, reset_seeded(self.env, seeds), max_steps)

    def close(self) -> None:
        self.env.close()


_PLAYER: ExpertPlayer | None = None  # a pool process's own player


def _start_player(character: str, max_steps: int) -> None:
    import atexit

    global _PLAYER
    _PLAYER = ExpertPlayer(character, max_steps)
    atexit.register(_PLAYER.close)


def _play(job: tuple[str, tuple]) -> dict | None:
    assert _PLAYER is not None
    name, args = job
    return getattr(_PLAYER, name)(*args)


def play_in_order(character: str, max_steps: int, jobs: list[tuple[str, tuple]], processes: int):
    """Yield ``ExpertPlayer.<name>(*args)`` for each job, in job order, on ``processes`` processes.

    The games are independent and deterministic, so the records are the same for any process
    count. A caller may stop early (the FAR starts stop at the n-th success): closing the
    generator cancels the games not yet started.
    """
    processes = max(1, min(processes, len(jobs)))
    if processes == 1:
        player = ExpertPlayer(character, max_steps)
        try:
            for name, args in jobs:
                yield getattr(player, name)(*args)
        finally:
            player.close()
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from retainrl.core.procs import pool_initializer

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding NLE
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=pool_initializer,  # workers die with the stage
                             initargs=(os.getpid(), _start_player, character, max_steps)) as pool:
        futures = [pool.submit(_play, job) for job in jobs]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def eval_starts(p: Params, paths, device=None, processes: int | None = None) -> dict:
    """Stage: ``evaluate.episodes`` held-out FAR starts, and the expert's CLOSE and FAR episodes.

    The expert's games are independent, so they are played on every core (``processes`` None:
    one per core); the FAR starts are the first ``evaluate.episodes`` candidate games, in seed
    order, that reach Dlvl ``far.start_depth``, whatever the process count.
    """
    from tqdm import tqdm

    from retainrl.core.artifacts import atomic_path, save_json

    ev, depth, n = p.evaluate, p.far.start_depth, p.evaluate.episodes
    character, env_steps = p.env.character, p.env.max_steps + ev.max_steps
    processes = cpu_cores() if processes is None else processes
    candidates = game_seeds(ev.far_seed, MAX_GAMES_PER_START * n)
    seeds, prefixes, far_eps, tried = [], [], [], 0
    games = play_in_order(character, env_steps, [("far_game", (s, depth, p.env.max_steps, ev.max_steps)) for s in candidates],
                          processes)
    with tqdm(total=n, desc="held-out FAR starts (expert games)", unit="start") as bar:
        for s, got in zip(candidates, games):
            tried += 1
            if got is None:
                continue
            far_eps.append(got["episode"])
            seeds.append(s)
            prefixes.append(got["prefix"])
            bar.update()
            if len(seeds) == n:
                break
    games.close()
    if len(seeds) < n:
        raise ConfigError(f"evaluate.episodes: the expert reached Dlvl {depth} in only {len(seeds)} of {tried} held-out games "
                          f"(evaluate.far_seed {ev.far_seed}); ask for fewer episodes or a lower far.start_depth")
    close_jobs = [("close_game", (s, ev.max_steps)) for s in game_seeds(ev.seed, n)]
    close_eps = list(tqdm(play_in_order(character, env_steps, close_jobs, processes), total=n, desc="the expert on CLOSE",
                          unit="game"))
    # the stored prefixes must bring a fresh replay to the expert's FAR start (as evaluate restores it)
    env = make_env(character, env_steps)
    try:
        for k in (0, n - 1):
            obs, _, done = replay(env, seeds[k], prefixes[k])
            if done or Progress.start(obs).max_depth < depth:
                raise ConfigError(f"held-out FAR start {k} (seeds {seeds[k].tolist()}) does not replay to Dlvl {depth}")
    finally:
        env.close()
    lengths = np.array([len(a) for a in prefixes], np.int64)
    expert_summary = {
        "games_played": tried, "starts": n, "far_seed": ev.far_seed, "max_steps": ev.max_steps,
        "close_score_gain": float(np.mean([e["score_gain"] for e in close_eps])),
        "far_score_gain": float(np.mean([e["score_gain"] for e in far_eps])),
        "far_levels": float(np.mean([e["levels"] for e in far_eps])),
        "prefix_steps_median": float(np.median(lengths)),
    }
    log.info("held-out FAR starts: %d from %d expert games; expert on the protocol: %s", n, tried, expert_summary)
    with atomic_path(starts_dir(paths), directory=True) as tmp:
        with (tmp / STARTS_FILE).open("wb") as fh:
            np.savez_compressed(fh, seeds=np.stack(seeds).astype(np.int64), actions=np.concatenate(prefixes),
                                offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        save_json(tmp / EXPERT_FILE, {"summary": expert_summary, "close": close_eps, "far": far_eps})
    return expert_summary


def load_starts(directory: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(games, starts) in the shapes ``games.restore_far_state`` takes: start k replays
    ``actions[offsets[k]:offsets[k + 1]]`` from the start of game ``seeds[k]``."""
    from retainrl.core.artifacts import load_npz

    games = load_npz(Path(directory) / STARTS_FILE, "held-out FAR starts (eval_starts stage)", required=("seeds", "actions", "offsets"))
    n = len(games["seeds"])
    if games["offsets"].shape != (n + 1,) or games["offsets"][-1] != len(games["actions"]):
        raise ConfigError(f"{Path(directory) / STARTS_FILE}: inconsistent (seeds {games['seeds'].shape}, offsets {games['offsets'].shape})")
    starts = {"game": np.arange(n, dtype=np.int64), "seeds": games["seeds"], "prefix": np.diff(games["offsets"])}
    return games, starts


def load_expert(directory: str | Path) -> dict:
    from retainrl.core.artifacts import require

    return json.loads(require(Path(directory) / EXPERT_FILE, "the expert on the evaluation protocol (eval_starts stage)").read_text())
