"""Montezuma's Revenge: RAM decoding, clone/restore determinism, preprocessing, room success, params.

The recorded situations come from ``tests/data/montezuma_route_prefix.npz``: the first steps of a
route found by the project's search (room 1: key, door; room 2; down into room 6), stored as
action indices only. Replaying them on the deterministic emulator recreates every state, which
is itself part of what these tests check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ale_py")

from retainrl.core.config import ConfigError
from retainrl.families.montezuma import stages as mz
from retainrl.families.montezuma.ale import (
    RAM_LIVES,
    array_to_state,
    decode_ram,
    make_ale,
    minimal_actions,
    state_to_array,
)
from retainrl.families.montezuma.search import FRAME_SKIP, replay

FIXTURE = Path(__file__).parents[1] / mz.ROUTE_PREFIX
NOOP, RIGHT, LEFT = 0, 3, 4


@pytest.fixture(scope="module")
def route_actions() -> np.ndarray:
    with np.load(FIXTURE) as data:
        return data["actions"]


@pytest.fixture(scope="module")
def recorded(route_actions):
    """Per step of the fixture: RAM info and reward, plus the replay's room-entry states."""
    ale = make_ale(frame_skip=FRAME_SKIP)
    acts = minimal_actions(ale)
    ale.reset_game()
    infos, rewards = [decode_ram(ale.getRAM())], [0.0]
    for a in route_actions:
        rewards.append(ale.act(acts[int(a)]))
        infos.append(decode_ram(ale.getRAM()))
        assert ale.lives() == int(ale.getRAM()[RAM_LIVES]) + 1  # ALE's lives() is RAM[58] + 1
    return {"infos": infos, "rewards": rewards, "replay": replay(route_actions)}


# --------------------------------------------------------------------------- RAM decoding


def test_start_of_game_decodes(recorded):
    start = recorded["infos"][0]
    assert (start.room, start.level, start.lives, start.inventory) == (1, 0, 5, 0)
    assert (start.x, start.y) == (77, 235)  # centre of the top platform of room 1


def test_key_pickup_sets_inventory_bit(recorded):
    infos, rewards = recorded["infos"], recorded["rewards"]
    key_step = next(i for i, r in enumerate(rewards) if r == 100)
    assert infos[key_step - 1].inventory == 0
    assert infos[key_step].inventory == 0x02 and infos[key_step].keys == 1
    assert infos[key_step].room == 1
    # The key opens a door (+300) and is used up.
    door_step = next(i for i, r in enumerate(rewards) if r == 300)
    assert door_step > key_step
    assert infos[door_step].inventory & 0x02 == 0 and infos[door_step - 1].inventory & 0x02


def test_room_changes_match_position(recorded):
    """A room change to the right neighbour wraps x from the right edge to the left edge; one
    downwards wraps y from the bottom (small y) to the top (large y)."""
    infos = recorded["infos"]
    changes = [(infos[i - 1], infos[i]) for i in range(1, len(infos)) if infos[i].room != infos[i - 1].room]
    assert changes, "the fixture must leave room 1"
    sideways = [(a, b) for a, b in changes if (a.room, b.room) == (1, 2)]
    down = [(a, b) for a, b in changes if (a.room, b.room) == (2, 6)]
    assert sideways and down
    a, b = sideways[0]
    assert a.x > 140 and b.x < 10 and a.y == b.y
    a, b = down[0]
    assert a.y < 150 and b.y > 240 and abs(a.x - b.x) < 4
    assert all(i.level == 0 and i.lives == 5 for i in infos)


def test_replay_route_entries(recorded):
    rep = recorded["replay"]
    assert rep["rooms"][:3] == [1, 2, 6]
    assert rep["entered_from"][:3] == [-1, 1, 2]
    assert not rep["lost_life"]
    assert all(s.dtype == np.uint8 and s.ndim == 1 for s in rep["entry_states"])


# --------------------------------------------------------------------------- clone / restore


def _rollout(ale, acts, actions):
    out = []
    for a in actions:
        r = ale.act(acts[int(a)])
        out.append((r, bytes(ale.getRAM())))
    return out


def test_clone_restore_is_deterministic(recorded):
    ale = make_ale(frame_skip=FRAME_SKIP)
    acts = minimal_actions(ale)
    state = array_to_state(recorded["replay"]["entry_states"][1])  # entering room 2
    actions = np.random.default_rng(0).integers(len(acts), size=150)
    ale.restoreState(state)
    first = _rollout(ale, acts, actions)
    snapshot = ale.cloneState()
    tail = _rollout(ale, acts, actions[:50])
    ale.restoreState(state)
    assert _rollout(ale, acts, actions) == first
    # A state survives the uint8-array round trip that demos use.
    ale.restoreState(array_to_state(state_to_array(snapshot)))
    assert _rollout(ale, acts, actions[:50]) == tail
    # Different actions from the same state really do diverge (the check is not vacuous).
    ale.restoreState(state)
    assert _rollout(ale, acts, (actions + 1) % len(acts)) != first


def test_ram_is_stale_after_restore():
    """ale-py 0.11.2: getRAM() shows the last emulated frame after restoreState until the next act.
    The search and MontezumaEnv.reset work around it; if this starts failing, ale-py fixed it."""
    ale = make_ale(frame_skip=FRAME_SKIP)
    acts = minimal_actions(ale)
    ale.reset_game()
    state, before = ale.cloneState(), ale.getRAM().copy()
    for _ in range(10):
        ale.act(acts[RIGHT])  # walks right and falls off the platform
    after = ale.getRAM().copy()
    assert not np.array_equal(before, after)
    ale.restoreState(state)
    assert np.array_equal(ale.getRAM(), after)


# --------------------------------------------------------------------------- preprocessed env


def test_env_observation_and_truncation():
    env = mz.MontezumaEnv(mz.EnvParams(max_steps=5))
    obs = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and obs.max() > 0
    assert env.n_actions == 18
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(NOOP)
        assert not terminated and truncated == (t == 4)
        assert info["room"] == 1 and info["lives"] == 5


def test_env_starts_from_stored_state(recorded):
    rep = recorded["replay"]
    env = mz.MontezumaEnv(sticky=0.0)
    env.reset(rep["entry_states"][2])
    assert env.ram().room == 6
    env.reset()
    assert env.ram().room == 1


# --------------------------------------------------------------------------- room success


def _scripted(actions):
    it = iter(list(actions))
    return lambda obs: next(it, NOOP)


def test_room_success_on_key(route_actions):
    """Started at the beginning of the game, following the route earns the key: success."""
    env = mz.MontezumaEnv(sticky=0.0)
    assert mz.run_room_episode(env, None, None, _scripted(route_actions), max_steps=len(route_actions))
    assert env.ram().inventory == 0x02 and env.ram().room == 1


def test_room_failure_on_death():
    env = mz.MontezumaEnv(sticky=0.0)
    assert not mz.run_room_episode(env, None, None, lambda obs: RIGHT, max_steps=60)
    assert env.ram().lives == 4


def test_room_failure_when_leaving_the_way_it_came(recorded):
    rep = recorded["replay"]
    env = mz.MontezumaEnv(sticky=0.0)
    assert not mz.run_room_episode(env, rep["entry_states"][1], 1, lambda obs: LEFT, max_steps=60)
    assert env.ram().room == 1 and env.ram().lives == 5


def test_room_success_when_leaving_by_another_exit(recorded, route_actions):
    rep = recorded["replay"]
    start = rep["entry_steps"][1]
    rest = route_actions[start:]  # the entry state is the one after action number ``start``
    env = mz.MontezumaEnv(sticky=0.0)
    judge_rooms = []
    policy = _scripted(rest)

    def watch(obs):
        judge_rooms.append(env.ram().room)
        return policy(obs)

    assert mz.run_room_episode(env, rep["entry_states"][1], 1, watch, max_steps=len(rest))
    assert env.ram().room == 6 and set(judge_rooms) == {2}


def test_room_success_rule_directly():
    base = mz.RamInfo(room=2, level=0, x=2, y=235, lives=5, inventory=0)
    judge = mz.RoomSuccess.start(base, entered_from=1)
    assert judge.update(base, 0.0) is None
    assert judge.update(base, 100.0) is True
    assert judge.update(mz.RamInfo(2, 0, 9, 235, 5, 0x20), 0.0) is True  # new item
    assert judge.update(mz.RamInfo(1, 0, 150, 235, 5, 0), 0.0) is False  # back where it came from
    assert judge.update(mz.RamInfo(6, 0, 77, 253, 5, 0), 0.0) is True
    assert judge.update(mz.RamInfo(2, 0, 9, 235, 4, 0), 0.0) is False  # a life lost


# --------------------------------------------------------------------------- params


def test_params_defaults_follow_the_study():
    p = mz.parse_params({})
    assert (p.env.sticky, p.env.frame_skip, p.env.frame_size, p.env.frame_stack, p.env.max_steps) == (0.25, 4, 84, 4, 4500)
    assert p.route.far_boundary == 7


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"env": {"game": "pong"}}, "montezuma.env.game"),
        ({"search": {"frame_budget": 0}}, "montezuma.search.frame_budget"),
        ({"route": {"far_boundary": 1}}, "montezuma.route.far_boundary"),
        ({"route": {"far_boundry": 7}}, "montezuma.route.far_boundry: unknown key"),
        ({"search": {"stop_rooms": 5}, "route": {"far_boundary": 7}}, "route.far_boundary"),
        ({"route": {"far_boundary": 3, "close_rooms": 3}}, "route.close_rooms: 3 is more than the 2 rooms"),
        ({"route": {"close_rooms": 0}}, "montezuma.route.close_rooms"),
    ],
)
def test_params_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        mz.parse_params(raw)


def test_far_boundary_beyond_route_is_an_error():
    assert mz.split_route([1, 2, 6, 5, 7, 13, 12, 22], 7) == ([1, 2, 6, 5, 7, 13], [12, 22])
    with pytest.raises(ConfigError, match=r"montezuma\.route\.far_boundary: 7 is beyond the 3 rooms"):
        mz.split_route([1, 2, 6], 7)


def test_unknown_game_in_emulator_factory():
    with pytest.raises(ConfigError, match=r"montezuma\.env\.game"):
        make_ale("pong")


def test_room_success_rates(recorded):
    """The per-room metric under sticky actions: walking back out of room 2 always fails; a CNN
    policy (sampled actions) gives one rate in [0, 1] per start room."""
    import torch

    from retainrl.families.montezuma.nets import ActorCritic

    rep = recorded["replay"]
    starts = [{"room": 2, "entered_from": 1, "state": rep["entry_states"][1]}]
    p = mz.EnvParams()
    assert mz.room_success_rates(lambda obs: LEFT, starts, p, episodes=3, max_steps=40) == {2: 0.0}
    torch.manual_seed(0)
    rates = mz.room_success_rates(ActorCritic(hidden=32), starts, p, episodes=2, max_steps=30)
    assert set(rates) == {2} and 0.0 <= rates[2] <= 1.0


class _FixedLogits(__import__("torch").nn.Module):
    """A 'network' that always prefers one action (for the batched evaluator)."""

    def __init__(self, action: int):
        super().__init__()
        self.action = action

    def dist_params(self, obs):
        import torch

        logits = torch.full((obs.shape[0], 18), -30.0)
        logits[:, self.action] = 30.0
        return logits


def test_batched_room_evaluator_matches_the_single_episode_rule(recorded):
    """RoomEvaluator steps every (room, episode) pair in lockstep with one batched forward; it
    must give the same verdicts as run_room_episode for a deterministic policy."""
    rep = recorded["replay"]
    starts = [{"room": r, "entered_from": None if c < 0 else c, "state": s}
              for r, c, s in zip(rep["rooms"], rep["entered_from"], rep["entry_states"])]
    ev = mz.RoomEvaluator(mz.EnvParams(sticky=0.0))
    for action in (LEFT, 3):  # 3 = RIGHT in the minimal action set
        rates = ev.rates(_FixedLogits(action), starts, episodes=2, max_steps=60)
        env = mz.MontezumaEnv(mz.EnvParams(sticky=0.0))
        single = {s["room"]: float(mz.run_room_episode(env, s["state"], s["entered_from"], lambda obs: action, 60)) for s in starts}
        assert rates == single
    assert ev.rates(_FixedLogits(LEFT), [], episodes=2, max_steps=5) == {}
