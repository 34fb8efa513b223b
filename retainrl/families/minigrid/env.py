"""RoomChain: a row of MiniGrid rooms whose first doors are shut (CLOSE) and whose last are open (FAR).

The agent starts in room 0. Each of the first ``close_rooms`` walls between rooms has a closed
door that must be toggled open; the walls after that have open doors, and the goal lies in the
last room. π* is cloned from the expert's FAR segments only (the rooms from ``close_rooms`` on),
so it walks through open doors to the goal but has never met a closed door: it is good on FAR,
bad on CLOSE, and fine-tuning from room 0 has to learn CLOSE before it gets back to FAR — the
study's state-coverage gap. Door heights, the goal and the agent's start cell and heading are
random per episode, so every measure averages over layouts.

The learner sees the standard egocentric 7×7 view (object, colour, state per cell) and the
heading, flattened into one uint8 vector, and has four actions: turn left, turn right, forward,
toggle. Episodes are seeded from the wrapper's own stream, so a run is a function of its seed.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass

import numpy as np

#: the four actions the agent has, as MiniGrid action ids (left, right, forward, toggle)
ACTIONS = (0, 1, 2, 5)
LEFT, RIGHT, FORWARD, TOGGLE = range(4)
OBS_SIZE = 7 * 7 * 3 + 1
DIR_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid's headings: east, south, west, north
VIEW = 7  # the agent's view is VIEW × VIEW cells
WALL, EMPTY = (2, 5, 0), (1, 0, 0)  # MiniGrid's encodings of a (grey) wall and of an empty cell


def _room_chain_class():
    """The MiniGrid env class (built on first use, so importing this module does not import MiniGrid)."""
    from minigrid.core.grid import Grid
    from minigrid.core.mission import MissionSpace
    from minigrid.core.world_object import Door, Goal
    from minigrid.minigrid_env import MiniGridEnv

    class RoomChain(MiniGridEnv):
        def __init__(self, rooms: int, room_size: int, close_rooms: int, max_steps: int):
            self.rooms, self.room_size, self.close_rooms = rooms, room_size, close_rooms
            self.start_room = 0
            super().__init__(mission_space=MissionSpace(mission_func=lambda: "open the shut doors and reach the goal"),
                             width=rooms * (room_size - 1) + 1, height=room_size, max_steps=max_steps,
                             see_through_walls=False, agent_view_size=VIEW)

        def _gen_grid(self, width, height):
            s = self.room_size
            self.grid = Grid(width, height)
            self.grid.wall_rect(0, 0, width, height)
            for i in range(1, self.rooms):
                x = i * (s - 1)
                self.grid.vert_wall(x, 0, height)
                shut = i <= self.close_rooms
                self.grid.set(x, int(self.np_random.integers(1, s - 1)), Door("yellow", is_open=not shut))
            last = (self.rooms - 1) * (s - 1)
            self.put_obj(Goal(), int(self.np_random.integers(last + 1, width - 1)), int(self.np_random.integers(1, s - 1)))
            self.place_agent(top=(self.start_room * (s - 1), 0), size=(s, s))
            self.mission = "open the shut doors and reach the goal"
            self.encoded = None  # a new grid: gen_obs encodes it afresh

        def step(self, action):
            if action == self.actions.toggle:  # the only action that changes a cell (a door's state)
                self.stale_cell = tuple(int(v) for v in self.front_pos)
            return super().step(action)

        def gen_obs(self):
            """MiniGrid's egocentric observation, the same array as ``MiniGridEnv.gen_obs`` (a test
            compares them), from a cached encoding of the whole grid with numpy slicing and rotation
            instead of MiniGrid's per-cell Python grids: the view was 60% of a fine-tuning run."""
            if self.encoded is None:
                self.encoded = np.pad(self.grid.encode(), ((VIEW, VIEW), (VIEW, VIEW), (0, 0)))
                self.encoded[:VIEW], self.encoded[-VIEW:], self.encoded[:, :VIEW], self.encoded[:, -VIEW:] = (WALL,) * 4
                self.stale_cell = None
            if self.stale_cell is not None:
                x, y = self.stale_cell
                c = self.grid.get(x, y)
                self.encoded[x + VIEW, y + VIEW] = EMPTY if c is None else c.encode()
                self.stale_cell = None
            top_x, top_y, _, _ = self.get_view_exts()
            view = np.rot90(self.encoded[top_x + VIEW: top_x + 2 * VIEW, top_y + VIEW: top_y + 2 * VIEW], -(self.agent_dir + 1))
            mask = _visible(view)
            image = np.where(mask[..., None], view, 0).astype(np.uint8)
            image[VIEW // 2, VIEW - 1] = EMPTY  # the agent's own cell (it carries nothing)
            return {"image": image, "direction": self.agent_dir, "mission": self.mission}

    return RoomChain


def _visible(view: np.ndarray) -> np.ndarray:
    """MiniGrid's ``Grid.process_vis`` on an encoded view: light spreads from the agent's cell
    (bottom middle) through cells that can be seen through (empty, the goal, open doors)."""
    from minigrid.core.constants import OBJECT_TO_IDX

    kind, state = view[..., 0].tolist(), view[..., 2].tolist()
    n = len(kind)
    wall, door = OBJECT_TO_IDX["wall"], OBJECT_TO_IDX["door"]
    opaque = [[kind[i][j] == wall or (kind[i][j] == door and state[i][j] != 0) for j in range(n)] for i in range(n)]
    mask = [[False] * n for _ in range(n)]
    mask[n // 2][n - 1] = True
    for j in reversed(range(n)):
        for i in range(n - 1):
            if mask[i][j] and not opaque[i][j]:
                mask[i + 1][j] = True
                if j > 0:
                    mask[i + 1][j - 1] = mask[i][j - 1] = True
        for i in reversed(range(1, n)):
            if mask[i][j] and not opaque[i][j]:
                mask[i - 1][j] = True
                if j > 0:
                    mask[i - 1][j - 1] = mask[i][j - 1] = True
    return np.asarray(mask)


@dataclass(frozen=True)
class _Frame:
    frame_skip: int = 1  # what the learner reads to count env frames


class ChainEnv:
    """The learner's view of one RoomChain: ``reset() -> obs``, ``step(a) -> (obs, r, term, trunc, info)``
    with ``info["room"]``, episodes that start in ``start_room``, and ``get_state``/``set_state``.

    ``info["reached"]`` is the farthest room entered this episode; an episode started in room 0
    has passed CLOSE once it reaches room ``close_rooms``, and solved the task when terminated
    with a positive reward (the goal)."""

    p = _Frame()

    def __init__(self, rooms: int, room_size: int, close_rooms: int, max_steps: int, seed: int, start_room: int = 0):
        self.env = _room_chain_class()(rooms, room_size, close_rooms, max_steps)
        self.rng = np.random.default_rng(seed)
        self.start_room = start_room
        self.reached = start_room

    def room(self) -> int:
        x = int(self.env.agent_pos[0])
        return min(max(x - 1, 0) // (self.env.room_size - 1), self.env.rooms - 1)

    @staticmethod
    def flat(o: dict) -> np.ndarray:
        """MiniGrid's observation dict as the learner's uint8 vector: the 7×7×3 view, then the heading."""
        return np.concatenate([o["image"].reshape(-1), [o["direction"]]]).astype(np.uint8)

    def obs(self) -> np.ndarray:
        return self.flat(self.env.gen_obs())

    # reset/step use the observation MiniGrid already built: rendering the egocentric view again
    # (gen_obs) was half of a fine-tuning run's time
    def reset(self, start_room: int | None = None) -> np.ndarray:
        self.env.start_room = self.start_room if start_room is None else start_room
        o, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        self.reached = self.env.start_room
        return self.flat(o)

    def step(self, action: int):
        o, r, terminated, truncated, _ = self.env.step(ACTIONS[int(action)])
        room = self.room()
        self.reached = max(self.reached, room)
        return self.flat(o), float(r), bool(terminated), bool(truncated), {"room": room, "reached": self.reached}

    def get_state(self) -> bytes:
        """The whole game (grid, agent, step count, MiniGrid's RNG) and this wrapper's stream."""
        return pickle.dumps((self.env.grid, self.env.agent_pos, self.env.agent_dir, self.env.step_count,
                             self.env.np_random.bit_generator.state, self.env.start_room, self.rng.bit_generator.state,
                             self.reached))

    def set_state(self, state: bytes) -> None:
        (self.env.grid, pos, self.env.agent_dir, self.env.step_count, rng, self.env.start_room, mine,
         self.reached) = pickle.loads(state)
        self.env.agent_pos = tuple(pos)
        self.env.encoded = None  # another grid: its cached encoding is void
        self.env.np_random.bit_generator.state = rng
        self.rng.bit_generator.state = mine


def expert_action(env: ChainEnv) -> int:
    """The shortest-path expert: breadth-first search over cells (doors passable) to the goal,
    then turn toward the next cell, toggle it if it is a shut door, else step forward."""
    g = env.env.grid
    start = tuple(int(v) for v in env.env.agent_pos)
    goal = next((x, y) for x in range(g.width) for y in range(g.height)
                if (c := g.get(x, y)) is not None and c.type == "goal")
    prev = {start: None}
    todo = deque([start])
    while todo:
        cur = todo.popleft()
        if cur == goal:
            break
        for dx, dy in DIR_VEC:
            nxt = (cur[0] + dx, cur[1] + dy)
            c = g.get(*nxt)
            if nxt not in prev and (c is None or c.type in ("door", "goal")):
                prev[nxt] = cur
                todo.append(nxt)
    step = goal
    while prev[step] != start:
        step = prev[step]
    want = DIR_VEC.index((step[0] - start[0], step[1] - start[1]))
    turn = (want - env.env.agent_dir) % 4
    if turn == 1:
        return RIGHT
    if turn in (2, 3):
        return LEFT
    c = g.get(*step)
    return TOGGLE if c is not None and c.type == "door" and not c.is_open else FORWARD
