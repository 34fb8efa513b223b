"""Montezuma's Revenge: the study's Atari environment family.

What the study did (Wolczyk et al. 2024, §4): PPO+RND, π* trained on the rooms from the 7th room
of a fixed route onwards (FAR), fine-tuned from the start of the game (CLOSE rooms first); per
room, success when started in that room is a coin, a new item, or leaving by another exit.

What this module gives:

* :class:`Params` – the ``montezuma`` section of params.yaml (see docs/montezuma.md);
* :class:`MontezumaEnv` – ALE with the study's preprocessing (84×84 gray, max-pool of the last two
  of 4 skipped frames, 4 stacked frames, sticky actions 0.25, at most 4500 agent steps), started
  from reset or from any stored emulator state;
* :class:`RoomSuccess` – the study's per-room success rule;
* :func:`collect_demos` – the stage: the deterministic Go-Explore search
  (:mod:`retainrl.families.montezuma.search`), the best trajectory replayed from reset, its room
  order and CLOSE/FAR split, written atomically to ``paths.demos``;
* :func:`load_demos`, :func:`split_route`, :func:`room_start_states` – what later stages read;
* :func:`room_success_rates` – the evaluation metric: success rate when started in each room;
* :func:`pretrain` – BC of the CNN actor-critic and fitting of the RND predictor on the FAR
  segment of the demo (networks in :mod:`retainrl.families.montezuma.nets`);
* :func:`far_states` – π*'s FAR states (the generic far_buffer stage adds π*'s outputs; the
  generic fisher stage estimates EWC's Fisher on them);
* :func:`train` – the generic finetune stage's loop: PPO+RND (:mod:`retainrl.learners.ppo_rnd`)
  from the first CLOSE room with one retention method, FAR/CLOSE room success evaluated along
  the way; ``results.evaluate`` and ``results.report`` – FAR vs CLOSE per method.

One ale-py 0.11.2 quirk shapes the code: after ``restoreState`` the RAM and screen that
``getRAM``/``getScreenGrayscale`` return are still those of the last *emulated* frame. The search
therefore remembers what it needs with each state, demos store the RAM at each room entry, and
:meth:`MontezumaEnv.reset` emulates one NOOP frame after a restore to read both, then restores
again so that the episode starts exactly at the stored state.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from retainrl.core.config import ConfigError, Strict
from retainrl.retention.params import FisherParams
from retainrl.retention.methods import RetentionParams
from retainrl.retention.methods import method_list
from retainrl.core.checkpoint import CheckpointParams
from retainrl.learners import ppo_rnd as learner
from retainrl.learners.ppo_rnd_params import PPORNDParams
from retainrl.families.montezuma.ale import GAMES, RamInfo, array_to_state, decode_ram, make_ale, state_to_array

log = logging.getLogger(__name__)

#: The first 505 steps of a route found by the search (seed 0): room 1 (key, door) → 2 → 6, no life lost.
ROUTE_PREFIX = "retainrl/families/montezuma/data/route_prefix.npz"
DEMOS_NPZ = "demos.npz"
ROUTE_JSON = "route.json"
#: The search's wall-clock timings, kept out of the demos (a DVC out must be byte-identical on a
#: rerun; seconds never are): ``reports/montezuma/search/timing.json``, a git-tracked out.
TIMING_JSON = "timing.json"


def search_report_dir(paths) -> Path:
    """Where ``collect_demos`` writes the search's timings (declared in dvc.yaml, cache: false)."""
    return paths.root / "reports" / paths.env / "search"


# --------------------------------------------------------------------------- params


class EnvParams(Strict):
    game: str = Field("montezuma_revenge", description="ale-py ROM id")
    sticky: float = Field(0.25, ge=0, lt=1, description="sticky actions (ALE's repeat_action_probability, done per frame by the env) for training/evaluation")
    frame_skip: int = Field(4, gt=0)
    frame_size: int = Field(84, gt=0)
    frame_stack: int = Field(4, gt=0)
    max_steps: int = Field(4500, gt=0, description="agent steps per episode")

    @field_validator("game")
    @classmethod
    def _known_game(cls, game):
        if game not in GAMES:
            raise ValueError(f"unknown game {game!r}; allowed: {', '.join(GAMES)}")
        return game


class SearchParams(Strict):
    """The deterministic Go-Explore search (see :mod:`retainrl.families.montezuma.search`)."""

    frame_budget: int = Field(4_000_000, gt=0, description="emulator frames the search may spend")
    #: stop early once the best trajectory has visited this many rooms (None: spend the budget)
    stop_rooms: int | None = Field(None, gt=0)
    #: wall-clock guard in seconds (None: none); the search stops at whichever limit comes first
    time_limit: float | None = Field(None, gt=0)
    seed: int = 0
    x_bin: int = Field(16, gt=0, description="cell width in pixels")
    y_bin: int = Field(16, gt=0, description="cell height in pixels")
    explore_steps: int = Field(100, gt=0)
    repeat_prob: float = Field(0.95, ge=0, le=1)
    death_margin: int = Field(8, ge=0, description="steps before a death whose cells are dropped")
    room_bonus: float = Field(1.0, ge=0)
    frontier_bonus: float = Field(1.0, ge=0)
    #: open-loop replays of the found actions under sticky actions, to report how robust the demo is
    sticky_checks: int = Field(5, ge=0)
    #: npz with ``actions`` of a known route prefix whose cells seed the archive (None: start
    #: from an empty archive). The smoke profile uses the bundled ROUTE_PREFIX to get past room 1
    #: in seconds; the default profile searches from scratch.
    warm_start: str | None = None

    @field_validator("warm_start")
    @classmethod
    def _warm_start_exists(cls, path):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"file not found: {path!r} (paths are relative to the repository root)")
        return path


class RouteParams(Strict):
    #: 1-based position on the route of the first FAR room (the study: the 7th room)
    far_boundary: int = Field(7, ge=2, description="route position of the first FAR room")
    #: leave out of the route the rooms the demo only peeks into (entered, then left back the same
    #: way with no reward or item): they are not on the path, and their "success" would be a failure
    drop_detours: bool = True
    #: how many route rooms before the FAR boundary make up CLOSE, the part fine-tuning trains on:
    #: training episodes start at the entry of the first of them (None: every room before the
    #: boundary, from the game's start, the study's design). The default's one room is what PPO+RND
    #: can learn in its CPU budget, so that fine-tuning can reach FAR and use π*'s skills there.
    close_rooms: int | None = Field(1, ge=1, description="route rooms before the FAR boundary that fine-tuning starts in (None: the game's start)")


class PretrainParams(Strict):
    """BC of the actor on the demo's FAR segment and fitting of the RND predictor to it."""

    steps: int = Field(600, gt=0, description="BC gradient steps of the actor")
    #: gradient steps fitting the RND predictor to the FAR segment (so FAR states are not novel)
    rnd_steps: int = Field(200, ge=0)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    hidden: int = Field(448, gt=0, description="width of the CNN's last layer")
    seed: int = 0


class FarBufferParams(Strict):
    """States π* visits when started in FAR rooms (sticky actions on), with its outputs (for BC)."""

    size: int = Field(2000, gt=0)
    #: steps per rollout from a FAR start state before starting over from the next one
    rollout_steps: int = Field(200, gt=0)
    seed: int = 0


class FinetuneParams(PPORNDParams):
    """PPO+RND fine-tuning from the start of the game (the study's hyperparameters by default,
    except the scale: ``envs`` × ``steps`` × ``updates`` fit a 2-core CPU)."""

    methods: method_list(learner.LEARNER, off_policy=learner.OFF_POLICY) = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
    #: independent runs per method (seed, seed + 1, …), one after another in the stage's process
    seeds: int = Field(2, gt=0)
    seed: int = 0
    # PPO+RND's knobs: PPORNDParams, whose defaults are the study's Montezuma values (the scale aside)
    eval_every: int = Field(2, gt=0, description="updates between room-success evaluations")
    eval_episodes: int = Field(8, gt=0, description="episodes per room per evaluation")
    eval_close_episodes: int = Field(4, gt=0, description="episodes per CLOSE room per evaluation")
    eval_max_steps: int = Field(200, gt=0, description="agent steps before an undecided room counts as failure")



class Params(Strict):
    env: EnvParams = EnvParams()
    search: SearchParams = SearchParams()
    route: RouteParams = RouteParams()
    pretrain: PretrainParams = PretrainParams()
    far_buffer: FarBufferParams = FarBufferParams()
    #: Montezuma's CNN has ~1.7M actor weights: the exact estimator's per-state Jacobian over 18
    #: logits does not fit in memory, so the default here is the sampled (Monte-Carlo) one.
    fisher: FisherParams = FisherParams(estimator="sampled", states=256)
    finetune: FinetuneParams = FinetuneParams()
    retention: RetentionParams = RetentionParams()
    checkpoint: CheckpointParams = CheckpointParams()

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.env.frame_size != 84:
            raise ValueError(f"env.frame_size: the Nature CNN of the agent needs 84 (got {self.env.frame_size})")
        if self.route.close_rooms is not None and self.route.close_rooms > self.route.far_boundary - 1:
            raise ValueError(
                f"route.close_rooms: {self.route.close_rooms} is more than the {self.route.far_boundary - 1} rooms before "
                f"route.far_boundary={self.route.far_boundary} (null: all of them, from the game's start)"
            )
        if self.search.stop_rooms is not None and self.search.stop_rooms < self.route.far_boundary:
            raise ValueError(
                f"route.far_boundary: {self.route.far_boundary} is beyond search.stop_rooms="
                f"{self.search.stop_rooms}; the search would stop before reaching any FAR room"
            )
        return self


def parse_params(raw: dict | None) -> Params:
    """Validate the ``montezuma`` section; a bad value raises ConfigError naming the dotted key.

    (``config.load_params`` does the same once the family is registered in FAMILIES.)
    """
    from pydantic import ValidationError

    from retainrl.core.config import _format_validation

    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_validation(err, "montezuma")) from None


# --------------------------------------------------------------------------- environment


class MontezumaEnv:
    """One ALE Montezuma's Revenge with the study's preprocessing.

    Observations are uint8 arrays of shape (frame_stack, frame_size, frame_size): the max of the
    last two raw gray frames of each skipped block (removes Atari sprite flicker), resized with
    area interpolation. ``reset(state)`` starts inside the game from a stored emulator state (a
    uint8 array from demos), which is how FAR rooms are reached without playing CLOSE ones.
    The episode ends at game over or after ``max_steps`` agent steps (truncation).
    """

    def __init__(self, p: EnvParams | None = None, *, seed: int = 0, sticky: float | None = None,
                 start: np.ndarray | None = None):
        p = p or EnvParams()
        self.p = p
        #: where ``reset()`` without a state starts an episode (None: the game's start); fine-tuning
        #: envs start at the first CLOSE room's entry (:func:`training_start`)
        self.start = start
        # Sticky actions are done here, per emulated frame exactly as ALE does them (with probability
        # ``sticky`` the previous frame's action is repeated), not by ALE: ALE keeps the repeated
        # action outside its saveable state, so a run restored from a checkpoint would diverge.
        self.sticky = float(p.sticky if sticky is None else sticky)
        self._sticky_rng = np.random.default_rng(seed)
        self.ale = make_ale(p.game, sticky=0.0, frame_skip=1, seed=seed)
        self.actions = list(self.ale.getMinimalActionSet())
        self._last_action = self.actions[0]
        self.n_actions = len(self.actions)
        h, w = self.ale.getScreenDims()
        self._raw = np.zeros((2, h, w), dtype=np.uint8)
        self._stack = np.zeros((p.frame_stack, p.frame_size, p.frame_size), dtype=np.uint8)
        self.steps = 0
        self._ram = None

    def _frame(self) -> np.ndarray:
        import cv2

        frame = np.maximum(self._raw[0], self._raw[1])
        return cv2.resize(frame, (self.p.frame_size, self.p.frame_size), interpolation=cv2.INTER_AREA)

    def ram(self) -> RamInfo:
        """Decoded RAM of the current state (right after a restore: of one NOOP frame later)."""
        return decode_ram(self.ale.getRAM() if self._ram is None else self._ram)

    def reset(self, state: np.ndarray | None = None) -> np.ndarray:
        """Start a new episode at ``state`` (an array from demos), else at ``start``, else at the game's start."""
        state = self.start if state is None else state
        self.ale.reset_game()
        self._ram = None
        self._last_action = self.actions[0]  # ALE's reset does the same: the repeated action is NOOP
        if state is not None:
            # getRAM/getScreen are stale after a restore: emulate one NOOP frame to read them,
            # then restore again so the episode starts exactly at the stored state (demos replay).
            saved = array_to_state(state)
            self.ale.restoreState(saved)
            self.ale.act(self.actions[0])
            self._ram = self.ale.getRAM().copy()
            self.ale.getScreenGrayscale(self._raw[0])
            self.ale.restoreState(saved)
        else:
            self.ale.getScreenGrayscale(self._raw[0])
        self._raw[1] = self._raw[0]
        self._stack[:] = self._frame()
        self.steps = 0
        return self._stack.copy()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One agent step (``frame_skip`` frames); returns obs, reward, terminated, truncated, info."""
        reward = 0.0
        self._ram = None
        a = self.actions[int(action)]
        skip = self.p.frame_skip
        for i in range(skip):
            if self.sticky > 0 and self._sticky_rng.random() < self.sticky:
                frame_action = self._last_action
            else:
                frame_action = a
            self._last_action = frame_action
            reward += self.ale.act(frame_action)
            if i >= skip - 2:
                self.ale.getScreenGrayscale(self._raw[i - (skip - 2)])
            if self.ale.game_over():
                break
        if skip == 1:
            self._raw[0] = self._raw[1]
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = self._frame()
        self.steps += 1
        terminated = self.ale.game_over()
        truncated = not terminated and self.steps >= self.p.max_steps
        info = self.ram()
        return self._stack.copy(), reward, terminated, truncated, {"ram": info, "room": info.room, "lives": info.lives}

    def clone(self) -> np.ndarray:
        return state_to_array(self.ale.cloneState())

    def get_state(self) -> dict:
        """Everything a resumed run needs to continue this env bit for bit: the emulator (with its
        RNG), the sticky-action stream and the action it would repeat, the frame buffers, the step
        count and the RAM cache."""
        return {"ale": state_to_array(self.ale.cloneState(include_rng=True)), "raw": self._raw.copy(),
                "stack": self._stack.copy(), "steps": self.steps, "ram": None if self._ram is None else self._ram.copy(),
                "sticky_rng": self._sticky_rng.bit_generator.state, "last_action": int(self._last_action)}

    def set_state(self, state: dict) -> None:
        self.ale.restoreState(array_to_state(state["ale"]))
        self._sticky_rng.bit_generator.state = state["sticky_rng"]
        self._last_action = type(self.actions[0])(state["last_action"])
        self._raw[:] = state["raw"]
        self._stack[:] = state["stack"]
        self.steps = int(state["steps"])
        self._ram = None if state["ram"] is None else np.asarray(state["ram"]).copy()


# --------------------------------------------------------------------------- room success


@dataclass
class RoomSuccess:
    """The study's per-room success when an episode starts in a room.

    Success: a positive reward (a coin, a key, a door opened, a monster killed), a change of
    inventory (a new item), or leaving the room by an exit other than the one it was entered by.
    Montezuma's exits each lead to a different neighbour room, so "another exit" is "a room other
    than ``entered_from``" (``entered_from`` is None for the start room: any exit counts).
    Failure: losing a life, or walking back out the way it came. ``update`` returns True
    (success), False (failure) or None (undecided).
    """

    room: int
    inventory: int
    lives: int
    entered_from: int | None = None

    @classmethod
    def start(cls, info: RamInfo, entered_from: int | None = None) -> "RoomSuccess":
        return cls(room=info.room, inventory=info.inventory, lives=info.lives, entered_from=entered_from)

    def update(self, info: RamInfo, reward: float) -> bool | None:
        if info.lives < self.lives:
            return False
        if reward > 0 or info.inventory != self.inventory:
            return True
        if info.room != self.room:
            return self.entered_from is None or info.room != self.entered_from
        return None


def run_room_episode(env: MontezumaEnv, state: np.ndarray, entered_from: int | None, policy, max_steps: int) -> bool:
    """Start ``env`` at ``state`` and act with ``policy(obs) -> action`` until RoomSuccess decides.

    Undecided after ``max_steps`` (or at game over) counts as failure.
    """
    obs = env.reset(state)
    judge = RoomSuccess.start(env.ram(), entered_from)
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        verdict = judge.update(info["ram"], reward)
        if verdict is not None:
            return verdict
        if terminated or truncated:
            break
    return False


class RoomEvaluator:
    """The study's room success for a network policy, every (room, episode) pair at once.

    One env per pair, stepped in lockstep with one batched forward pass per step (episodes that
    are decided drop out), so an evaluation costs ``max_steps`` forwards instead of
    ``rooms × episodes × max_steps``. The envs are kept between calls (building an ALE costs
    milliseconds); each has its own sticky-action seed, so results are repeatable run to run.
    """

    def __init__(self, p: EnvParams, seed: int = 0):
        self.p = p
        self.seed = seed
        self.envs: list[MontezumaEnv] = []

    def _pool(self, n: int) -> list[MontezumaEnv]:
        while len(self.envs) < n:
            self.envs.append(MontezumaEnv(self.p, seed=self.seed * 10_000 + len(self.envs)))
        return self.envs[:n]

    def get_state(self) -> list[dict]:
        """The pool's envs (their sticky-action RNGs carry over from one evaluation to the next)."""
        return [env.get_state() for env in self.envs]

    def set_state(self, states: list[dict]) -> None:
        for env, st in zip(self._pool(len(states)), states):
            env.set_state(st)

    def rates(self, model, starts: list[dict], *, episodes: int, max_steps: int, seed: int = 0, device=None) -> dict[int, float]:
        """Success rate per room of ``starts`` (from :func:`room_start_states`); actions are
        sampled from ``model``'s logits (an ActorCritic) with a generator seeded by ``seed``."""
        import torch

        jobs = [start for start in starts for _ in range(episodes)]
        if not jobs:
            return {}
        dev = torch.device(device or "cpu")
        gen = torch.Generator().manual_seed(seed)
        envs = self._pool(len(jobs))
        obs = np.stack([env.reset(job["state"]) for env, job in zip(envs, jobs)])
        judges = [RoomSuccess.start(env.ram(), job["entered_from"]) for env, job in zip(envs, jobs)]
        won = np.zeros(len(jobs), dtype=bool)
        active = np.arange(len(jobs))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for _ in range(max_steps):
                if active.size == 0:
                    break
                logits = model.dist_params(torch.as_tensor(obs[active]).to(dev)).float().cpu()
                actions = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1).numpy()
                keep = []
                for k, i in enumerate(active):
                    o, reward, terminated, truncated, info = envs[i].step(int(actions[k]))
                    verdict = judges[i].update(info["ram"], reward)
                    if verdict is not None:
                        won[i] = verdict
                    elif not (terminated or truncated):
                        obs[i] = o
                        keep.append(i)
                active = np.asarray(keep, dtype=np.int64)
        model.train(was_training)
        out: dict[int, list[bool]] = {}
        for job, w in zip(jobs, won):
            out.setdefault(int(job["room"]), []).append(bool(w))
        return {room: float(np.mean(v)) for room, v in out.items()}


# --------------------------------------------------------------------------- route and demos


def split_route(rooms: list[int], far_boundary: int) -> tuple[list[int], list[int]]:
    """CLOSE = rooms before the ``far_boundary``-th (1-based) room of the route, FAR = it and after."""
    if far_boundary > len(rooms):
        raise ConfigError(
            f"montezuma.route.far_boundary: {far_boundary} is beyond the {len(rooms)} rooms the demos "
            f"reach (route {rooms}); lower it or raise montezuma.search.frame_budget"
        )
    return list(rooms[: far_boundary - 1]), list(rooms[far_boundary - 1 :])


def far_segments(arrays: dict[str, np.ndarray], far_boundary: int, env_params=None) -> dict[str, np.ndarray]:
    """Observations, actions and rooms of the demo from the entry of route room ``far_boundary`` on.

    One segment per FAR room: the env is reset at the room's stored entry state (a fresh frame
    stack, exactly how evaluation and the FAR buffer start an episode there) and the demo's
    actions are replayed up to the entry of the next FAR room (the last one: to the end).
    ``arrays`` is what :func:`load_demos` returns first. Observations are not stored in the
    demo (the replay is deterministic without sticky actions), which keeps demos tiny.
    """
    rooms = [int(r) for r in arrays["rooms"]]
    close, _ = split_route(rooms, far_boundary)
    env = MontezumaEnv(env_params or EnvParams(), sticky=0.0)
    actions = arrays["actions"]
    out_obs, out_act, out_room = [], [], []
    for j in range(len(close), len(rooms)):
        start = int(arrays["entry_steps"][j])
        stop = int(arrays["entry_steps"][j + 1]) if j + 1 < len(rooms) else len(actions)
        obs = env.reset(arrays["entry_states"][j])
        for a in actions[start:stop]:
            out_obs.append(obs)
            out_act.append(int(a))
            out_room.append(env.ram().room)
            obs, _, terminated, _, _ = env.step(int(a))
            if terminated:
                break
    if not out_act:
        raise ConfigError(
            f"montezuma.route.far_boundary: the demo has no steps from route room #{far_boundary} "
            f"(room {rooms[len(close)]}) on; lower it or let the search go further"
        )
    return {"obs": np.stack(out_obs), "actions": np.asarray(out_act, dtype=np.int64), "rooms": np.asarray(out_room)}


def sticky_replay_rooms(actions: np.ndarray, p: EnvParams, seeds: int) -> list[int]:
    """Distinct rooms reached when the demo's actions are replayed open-loop with sticky actions.

    Why: the study trains with sticky actions 0.25, so a demo that only works deterministically
    says little about how hard each room is; this number is reported, never required.
    """
    from retainrl.families.montezuma.search import FRAME_SKIP

    out = []
    for seed in range(seeds):
        ale = make_ale(p.game, sticky=p.sticky, frame_skip=FRAME_SKIP, seed=seed + 1)
        acts = list(ale.getMinimalActionSet())
        ale.reset_game()
        rooms = {decode_ram(ale.getRAM()).room}
        for a in actions:
            ale.act(acts[int(a)])
            if ale.game_over():
                break
            rooms.add(int(ale.getRAM()[3]))
        out.append(len(rooms))
    return out


def collect_demos(p: Params, paths, device=None) -> Path:
    """Stage ``collect_demos``: search, verify by replay, split the route, write ``paths.demos``.

    Writes ``demos.npz`` (``actions`` as indices into the minimal action set; per route room its
    ``rooms``, ``entered_from``, ``entry_steps``, ``entry_states`` (uint8 emulator states) and
    ``entry_ram``) and ``route.json`` (route, CLOSE/FAR, search statistics in frames), and the
    search's wall-clock timings to ``reports/montezuma/search/timing.json`` (outside the demos, so
    a rerun reproduces the demos byte for byte). ``device`` is unused: the search runs on the emulator.
    """
    from retainrl.core.artifacts import atomic_path
    from retainrl.families.montezuma.search import GoExplore, rooms_per_budget

    s = p.search
    log.info("go-explore search: budget %d frames, seed %d", s.frame_budget, s.seed)
    search = GoExplore(
        game=p.env.game, seed=s.seed, x_bin=s.x_bin, y_bin=s.y_bin, explore_steps=s.explore_steps,
        repeat_prob=s.repeat_prob, death_margin=s.death_margin, room_bonus=s.room_bonus,
        frontier_bonus=s.frontier_bonus,
    )
    if s.warm_start is not None:
        with np.load(s.warm_start) as data:
            search.warm_start(data["actions"])
    result = search.run(s.frame_budget, target_rooms=s.stop_rooms, time_limit=s.time_limit)
    log.info(
        "search done: %d rooms %s, score %g, %d frames in %.1fs (%d cells, %d iterations)",
        len(result.rooms), result.rooms, result.score, result.frames, result.seconds, result.cells, result.iterations,
    )
    progress = rooms_per_budget(result.progress)
    search_stats = {  # deterministic: frames, not seconds
        "frames": result.frames,
        "cells": result.cells,
        "iterations": result.iterations,
        "progress": [{k: v for k, v in row.items() if k != "seconds"} for row in progress],
        "params": s.model_dump(),
    }
    out = write_demos(p, paths, result.actions, search_stats, expect=(result.rooms, result.score))
    timing = {"seconds": round(result.seconds, 2), "frames_per_s": round(result.frames / max(result.seconds, 1e-9)),
              "progress": [{"frames": row["frames"], "rooms": row["rooms"], "seconds": row["seconds"]} for row in progress]}
    with atomic_path(search_report_dir(paths), directory=True) as tmp:
        (tmp / TIMING_JSON).write_text(json.dumps(timing, indent=2) + "\n")
    return out


def write_demos(p: Params, paths, actions: np.ndarray, search_stats: dict, expect: tuple | None = None) -> Path:
    """Replay ``actions`` from reset, build the route (detours dropped if ``route.drop_detours``),
    split it at ``route.far_boundary`` and write ``paths.demos`` atomically."""
    from retainrl.core.artifacts import atomic_path
    from retainrl.families.montezuma.search import replay

    rep = replay(actions, game=p.env.game)
    if rep["lost_life"] or (expect is not None and (rep["rooms"] != expect[0] or rep["score"] != expect[1])):
        raise RuntimeError(
            f"replay from reset does not reproduce the search's trajectory (rooms {rep['rooms']} vs "
            f"{expect and expect[0]}, score {rep['score']} vs {expect and expect[1]}, lost life {rep['lost_life']})"
        )
    if p.route.drop_detours:
        chosen = rep["route"]
    else:
        chosen = {k: rep[k] for k in ("rooms", "entry_steps", "entered_from", "entry_states")}
    detours = [r for r in rep["rooms"] if r not in rep["route"]["rooms"]]
    pick = lambda key: list(chosen[key])  # noqa: E731
    rooms = pick("rooms")
    close, far = split_route(rooms, p.route.far_boundary)
    sticky = sticky_replay_rooms(actions, p.env, p.search.sticky_checks)
    ram = []
    ale = make_ale(p.env.game)
    for st in pick("entry_states"):
        ale.restoreState(array_to_state(st))
        ale.act(ale.getMinimalActionSet()[0])  # RAM is stale after a restore; read it one NOOP frame on
        ram.append(ale.getRAM().copy())
    route = {
        "game": p.env.game,
        "rooms": rooms,
        "entered_from": pick("entered_from"),
        "entry_steps": pick("entry_steps"),
        "far_boundary": p.route.far_boundary,
        "close": close,
        "far": far,
        "rooms_in_order_of_entry": rep["rooms"],
        "detours": detours,
        "detours_dropped": p.route.drop_detours,
        "score": rep["score"],
        "steps": int(len(actions)),
        "verified_by_replay": True,
        "sticky_replay_rooms": sticky,
        "search": search_stats,
    }
    with atomic_path(paths.demos, directory=True) as tmp:
        with (tmp / DEMOS_NPZ).open("wb") as fh:
            np.savez_compressed(
                fh,
                actions=np.asarray(actions).astype(np.uint8),
                rooms=np.asarray(rooms, dtype=np.int64),
                entered_from=np.asarray(pick("entered_from"), dtype=np.int64),
                entry_steps=np.asarray(pick("entry_steps"), dtype=np.int64),
                entry_states=np.stack(pick("entry_states")).astype(np.uint8),
                entry_ram=np.stack(ram).astype(np.uint8),
            )
        (tmp / ROUTE_JSON).write_text(json.dumps(route, indent=2) + "\n")
    log.info("route %s (detours %s%s): CLOSE %s, FAR %s -> %s", rooms, detours, " dropped" if p.route.drop_detours else " kept", close, far, paths.demos)
    return paths.demos


def load_demos(paths) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of ``demos.npz`` and the parsed ``route.json`` (clear error when missing)."""
    from retainrl.core.artifacts import load_json, load_npz

    arrays = load_npz(
        Path(paths.demos) / DEMOS_NPZ, "Montezuma demos",
        required=("actions", "rooms", "entered_from", "entry_steps", "entry_states"),
    )
    return arrays, load_json(Path(paths.demos) / ROUTE_JSON, "Montezuma route")


def room_start_states(paths, p: Params, which: str = "far") -> list[dict]:
    """Start states of the CLOSE or FAR rooms, from demos, for evaluation and pre-training.

    CLOSE is the task's part before FAR: the last ``route.close_rooms`` rooms before the boundary
    (all of them when it is None). Each item: ``room``, ``entered_from`` (None for the game's start
    room), ``state`` (uint8).
    """
    arrays, route = load_demos(paths)
    rooms = [int(r) for r in arrays["rooms"]]
    close, far = split_route(rooms, p.route.far_boundary)
    first = len(close) - (p.route.close_rooms or len(close))
    chosen = {"close": range(first, len(close)), "far": range(len(close), len(rooms))}
    if which not in chosen:
        raise ConfigError(f"which: must be 'close' or 'far' (got {which!r})")
    out = []
    for i in chosen[which]:
        came = int(arrays["entered_from"][i])
        out.append({"room": rooms[i], "entered_from": None if came < 0 else came, "state": arrays["entry_states"][i]})
    return out


def training_start(paths, p: Params) -> np.ndarray | None:
    """Where fine-tuning episodes start: the entry state of the first CLOSE room, or None (the
    game's start) when CLOSE is the whole route before the boundary (``route.close_rooms: null``)."""
    if p.route.close_rooms is None:
        return None
    return room_start_states(paths, p, "close")[0]["state"]


def pretrain(p: Params, paths, device=None) -> Path:
    """Stage ``pretrain``: BC of the actor and RND predictor on the FAR part of the demo.

    Writes ``policy.safetensors`` (ActorCritic), ``rnd.safetensors`` (RND incl. its observation
    statistics) and ``metrics.json`` (BC loss and accuracy on the segment) to ``paths.pretrained``.
    Why a single demo suffices as a start: the study's π* is good on FAR and bad on CLOSE; this
    gives exactly that coverage gap. A stronger π* (PPO+RND started in FAR rooms) is future work.
    """
    import torch
    from safetensors.torch import save_file

    from retainrl.core.artifacts import atomic_path
    from retainrl.families.montezuma.nets import ActorCritic, behaviour_clone
    from retainrl.learners.rnd import RND

    device = torch.device(device or "cpu")
    arrays, route = load_demos(paths)
    seg = far_segments(arrays, p.route.far_boundary, p.env)
    cfg = p.pretrain
    torch.manual_seed(cfg.seed)
    model = ActorCritic(n_actions=18, frame_stack=p.env.frame_stack, hidden=cfg.hidden)
    log.info("BC on %d FAR steps (rooms %s) for %d steps", len(seg["actions"]), sorted(set(seg["rooms"].tolist())), cfg.steps)
    losses = behaviour_clone(model, seg["obs"], seg["actions"], steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, device=device)
    rnd = RND().to(device)
    obs = torch.as_tensor(seg["obs"]).to(device)
    rnd.update_stats(obs)
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    rnd_losses = []
    for _ in range(cfg.rnd_steps):
        idx = torch.randint(len(obs), (min(cfg.batch_size, len(obs)),), generator=gen)
        loss = rnd.error(obs[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rnd_losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model.dist_params(obs[i : i + 256]).argmax(-1) for i in range(0, len(obs), 256)])
    accuracy = float((pred.cpu() == torch.as_tensor(seg["actions"])).float().mean())
    metrics = {
        "far_rooms": route["far"],
        "segment_steps": int(len(seg["actions"])),
        "bc_loss_first": losses[0],
        "bc_loss_last": float(np.mean(losses[-10:])),
        "bc_accuracy": accuracy,
        "rnd_loss_first": rnd_losses[0] if rnd_losses else None,
        "rnd_loss_last": float(np.mean(rnd_losses[-10:])) if rnd_losses else None,
    }
    # π*'s own room success (sticky actions), the reference every method's forgetting is measured against
    scores = _rooms_evaluator(p, paths, device)(0, model)
    with atomic_path(paths.pretrained, directory=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "policy.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in rnd.state_dict().items()}, str(tmp / "rnd.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    log.info(
        "pretrained π*: BC accuracy %.2f on the FAR segment; room success FAR %s, CLOSE %s -> %s",
        accuracy, scores["far_rooms"], scores["close_rooms"], paths.pretrained,
    )
    return paths.pretrained


def room_success_rates(
    policy, starts: list[dict], p: EnvParams, *, episodes: int, max_steps: int, seed: int = 0, device=None
) -> dict[int, float]:
    """The study's per-room metric: success rate of ``policy`` started in each room of ``starts``.

    ``policy`` is an ActorCritic (actions sampled from its logits) or any callable obs -> action;
    ``starts`` comes from :func:`room_start_states`. Sticky actions are on (``p.sticky``), so
    episodes differ even from the same start state.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    if isinstance(policy, torch.nn.Module):
        model = policy.eval()
        dev = torch.device(device or "cpu")

        @torch.no_grad()
        def act(obs):
            logits = model.dist_params(torch.as_tensor(obs)[None].to(dev)).cpu()
            return int(torch.multinomial(logits.softmax(-1), 1, generator=gen))

    else:
        act = policy
    env = MontezumaEnv(p, seed=seed)
    rates = {}
    for start in starts:
        wins = sum(run_room_episode(env, start["state"], start["entered_from"], act, max_steps) for _ in range(episodes))
        rates[int(start["room"])] = wins / episodes
        log.info("room %d: success %.2f over %d episodes", start["room"], rates[int(start["room"])], episodes)
    return rates


def load_pretrained(p: Params, paths, device=None):
    """π* (ActorCritic) from ``paths.pretrained``."""
    import torch
    from safetensors.torch import load_file

    from retainrl.core.artifacts import require
    from retainrl.families.montezuma.nets import ActorCritic

    path = require(Path(paths.pretrained) / "policy.safetensors", "pretrained Montezuma policy")
    model = ActorCritic(n_actions=18, frame_stack=p.env.frame_stack, hidden=p.pretrain.hidden)
    model.load_state_dict(load_file(str(path)))
    return model.to(torch.device(device or "cpu")).eval()


def far_states(p: Params, paths, pretrained, device=None) -> dict[str, np.ndarray]:
    """The generic far_buffer stage's question: π* rolled out from each FAR start state in turn
    (sticky actions on, a rollout ends at a lost life) until ``far_buffer.size`` states; the
    observations (uint8) and the room of each."""
    import torch

    cfg = p.far_buffer
    dev = torch.device(device or "cpu")
    starts = room_start_states(paths, p, "far")
    env = MontezumaEnv(p.env, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    obs_l, room_l = [], []
    i = 0
    with torch.no_grad():
        while len(obs_l) < cfg.size:
            start = starts[i % len(starts)]
            i += 1
            obs = env.reset(start["state"])
            lives = env.ram().lives
            for _ in range(cfg.rollout_steps):
                obs_l.append(obs)
                room_l.append(env.ram().room)
                logits = pretrained.dist_params(torch.as_tensor(obs)[None].to(dev)).cpu()
                obs, _, terminated, truncated, info = env.step(int(torch.multinomial(logits.softmax(-1), 1, generator=gen)))
                if terminated or truncated or info["lives"] < lives or len(obs_l) >= cfg.size:
                    break
    log.info("FAR states from rooms %s", sorted(set(room_l)))
    return {"obs": np.stack(obs_l), "rooms": np.asarray(room_l)}


def _rooms_evaluator(p: Params, paths, device):
    """Room success on the FAR and CLOSE start rooms (sticky actions): what fine-tuning curves,
    π*'s scores and the evaluation all report. Returns ``on_eval(tag, model) -> dict``; its
    ``evaluator`` attribute is the :class:`RoomEvaluator` (whose env RNGs a checkpoint keeps)."""
    far, close = room_start_states(paths, p, "far"), room_start_states(paths, p, "close")
    boundary = int(far[0]["room"])
    cfg = p.finetune
    evaluator = RoomEvaluator(p.env, seed=cfg.seed)

    def on_eval(tag: int, model) -> dict:
        kw = dict(max_steps=cfg.eval_max_steps, seed=cfg.seed * 100_003 + tag, device=device)
        f = evaluator.rates(model, far, episodes=cfg.eval_episodes, **kw)
        c = evaluator.rates(model, close, episodes=cfg.eval_close_episodes, **kw)
        return {
            "boundary_success": f[boundary],
            "far_success": float(np.mean(list(f.values()))),
            "close_success": float(np.mean(list(c.values()))),
            "far_rooms": {str(k): v for k, v in f.items()},
            "close_rooms": {str(k): v for k, v in c.items()},
        }

    on_eval.evaluator = evaluator
    return on_eval


def frozen_curves(p: Params, paths, device, updates) -> dict[str, np.ndarray]:
    """Frozen π* on the methods' evaluation schedule: for every seed in the stage's order, the room
    evaluation at each of ``updates`` with the tag a fine-tuning run uses there (the same sampling
    seeds), one evaluator carried across seeds as in a finetune stage. (seeds, checkpoints) arrays
    of boundary-room, FAR-room and CLOSE-room success: the noise floor of start − min."""
    import torch
    from tqdm import tqdm

    cfg = p.finetune
    dev = torch.device(device or "cpu")
    model = load_pretrained(p, paths, dev)
    on_eval = _rooms_evaluator(p, paths, dev)
    rows: dict[str, list] = {"boundary": [], "far": [], "close": []}
    with tqdm(total=cfg.seeds * len(updates), desc="montezuma frozen π*", mininterval=5.0) as bar:
        for k in range(cfg.seeds):
            seed = cfg.seed + k
            got = []
            for u in updates:
                got.append(on_eval(seed * 10_000 + int(u), model))
                bar.update()
            for key, name in (("boundary", "boundary_success"), ("far", "far_success"), ("close", "close_success")):
                rows[key].append([g[name] for g in got])
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def train(p: Params, paths, device, run) -> None:
    """The generic finetune stage's loop: PPO+RND from the first CLOSE room (:func:`training_start`),
    ``finetune.seeds`` runs one after another (``run.seeds_in_turn``), FAR/CLOSE room success at
    every ``eval_every`` updates. One room evaluator is carried across the seeds (its env RNGs go
    into each seed's checkpoint, so a resumed stage evaluates as an uninterrupted one)."""
    import copy

    import torch
    from safetensors.torch import load_file

    from retainrl.families.montezuma.nets import ActorCritic
    from retainrl.learners.rnd import RND

    cfg = p.finetune
    dev = torch.device(device or "cpu")
    on_eval = _rooms_evaluator(p, paths, dev)
    start = training_start(paths, p)

    def train_one(k: int, seed: int, ckpt):
        ckpt.attach("evaluator", on_eval.evaluator.get_state, on_eval.evaluator.set_state)
        gen = run.generator(seed)
        retention = run.retention(seed, gen)
        torch.manual_seed(seed)
        rnd = RND()
        if retention.starts_from_pretrained:
            model = copy.deepcopy(run.pretrained())
            rnd.load_state_dict(load_file(str(Path(paths.pretrained) / "rnd.safetensors")))
        else:
            model = ActorCritic(n_actions=18, frame_stack=p.env.frame_stack, hidden=p.pretrain.hidden).to(dev)
        envs = [MontezumaEnv(p.env, seed=seed * 100 + i, start=start) for i in range(cfg.envs)]
        curves = learner.train(
            model, rnd, envs, cfg, retention, gen, device=dev,
            on_eval=lambda update, m: on_eval(seed * 10_000 + update, m), desc=f"montezuma {run.method} seed {seed}",
            checkpoint=ckpt,
        )
        log.info("%s seed %d: boundary-room success %s", run.method, seed, [round(e["boundary_success"], 2) for e in curves["eval"]])
        return curves, model.state_dict()

    run.seeds_in_turn([cfg.seed + k for k in range(cfg.seeds)], train_one,
                      keep=lambda: {"evaluator": on_eval.evaluator.get_state()},
                      restore=lambda saved: on_eval.evaluator.set_state(saved["evaluator"]))
