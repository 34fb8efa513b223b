"""The project's own deterministic Go-Explore-style search for Montezuma's Revenge demonstrations.

Why a search and not downloaded demos: the study's π* was trained on FAR rooms from a good
trajectory, and no licence-clean trajectory ships with ale-py. Go-Explore (Ecoffet et al. 2021)
showed that "return to a promising state, then explore" finds deep trajectories quickly when the
emulator is deterministic and states can be cloned. We keep only what that needs:

* **cells** – a coarse summary of a state: (level, room, inventory, x // x_bin, y // y_bin).
  Each cell keeps the best trajectory that reached it (higher score, then more rooms on the
  way, then shorter) and the emulator state at its end.
* **selection** – a cell is chosen with weight ``1/sqrt(1+chosen) + 1/sqrt(1+seen)`` times a
  bonus for cells whose trajectory has visited more rooms, so new cells and the frontier are
  favoured without starving old ones.
* **return** – ``restoreState`` (no replay needed: sticky actions are off, the emulator is
  deterministic).
* **explore** – up to ``explore_steps`` agent steps, repeating the previous action with
  probability ``repeat_prob`` (long straight moves are what Montezuma needs); it stops when a life
  is lost. Cells reached in the last ``death_margin`` steps before a death are discarded, since
  Montezuma lets the player keep control for a moment after a fatal fall and such doomed states
  would otherwise become dead-end cells.

Everything random comes from one ``numpy.random.Generator`` seeded from params, and the emulator
is deterministic, so the same params give the same archive, frame for frame.

Trajectories are stored as a tree of exploration segments (each segment knows its parent and the
length of the parent's prefix it continues), so thousands of cells share prefixes and memory
stays small; :meth:`GoExplore.trajectory` rebuilds one cell's action list.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from retainrl.families.montezuma.ale import decode_ram, make_ale, minimal_actions

log = logging.getLogger(__name__)

FRAME_SKIP = 4
_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


@dataclass
class Cell:
    key: tuple
    state: object  # ALEState at the end of the trajectory
    score: float
    length: int  # agent steps (of FRAME_SKIP frames) from reset
    rooms: tuple  # rooms in order of first entry along the trajectory
    ref: tuple  # (segment id, prefix length in that segment)
    lives: int  # read at commit time: ale-py's getRAM() is stale right after restoreState
    chosen: int = 0
    seen: int = 0

    def rank(self) -> tuple:
        """Which trajectory a cell keeps: higher score, then more rooms, then shorter."""
        return (self.score, len(self.rooms), -self.length)


@dataclass
class SearchResult:
    """What a finished search hands back: the best trajectory and the progress curve."""

    actions: np.ndarray  # indices into the minimal action set
    rooms: list[int]  # rooms in order of first entry along ``actions``
    score: float
    frames: int  # emulator frames the search spent
    seconds: float
    cells: int
    iterations: int
    #: (frames, seconds, distinct rooms on the best trajectory so far, best score) at each new room
    progress: list[tuple[int, float, int, float]] = field(default_factory=list)


class GoExplore:
    """Archive of cells over a deterministic ALE; call :meth:`run` with a frame budget."""

    def __init__(
        self,
        *,
        game: str = "montezuma_revenge",
        seed: int = 0,
        x_bin: int = 16,
        y_bin: int = 16,
        explore_steps: int = 100,
        repeat_prob: float = 0.95,
        death_margin: int = 8,
        room_bonus: float = 1.0,
        frontier_bonus: float = 1.0,
    ):
        self.ale = make_ale(game, sticky=0.0, frame_skip=FRAME_SKIP, seed=seed)
        self.actions = minimal_actions(self.ale)
        self.rng = np.random.default_rng(seed)
        self.x_bin, self.y_bin = int(x_bin), int(y_bin)
        self.explore_steps = int(explore_steps)
        self.repeat_prob = float(repeat_prob)
        self.death_margin = int(death_margin)
        self.room_bonus = float(room_bonus)
        self.frontier_bonus = float(frontier_bonus)
        # segment id -> (parent ref, list of action indices)
        self.segments: list[tuple[tuple | None, list[int]]] = [(None, [])]
        self.archive: dict[tuple, Cell] = {}
        self.frames = 0
        self.iterations = 0
        self.ale.reset_game()
        info = decode_ram(self.ale.getRAM())
        self.start_lives = info.lives
        key = self.cell_key(info)
        self.archive[key] = Cell(key, self.ale.cloneState(), 0.0, 0, (info.room,), (0, 0), info.lives, seen=1)
        self.best = self.archive[key]

    def cell_key(self, info) -> tuple:
        return (info.level, info.room, info.inventory, info.x // self.x_bin, info.y // self.y_bin)

    # ------------------------------------------------------------------ selection

    def _select(self) -> Cell:
        cells = list(self.archive.values())
        chosen = np.fromiter((c.chosen for c in cells), dtype=np.float64, count=len(cells))
        seen = np.fromiter((c.seen for c in cells), dtype=np.float64, count=len(cells))
        nrooms = np.fromiter((len(c.rooms) for c in cells), dtype=np.float64, count=len(cells))
        w = 1.0 / np.sqrt(1.0 + chosen) + 1.0 / np.sqrt(1.0 + seen)
        if self.frontier_bonus > 0:
            # Go-Explore's domain-knowledge weight: a cell with grid neighbours not yet in the
            # archive (same level, room and inventory) sits on the frontier of what is known.
            keys = self.archive.keys()
            missing = np.fromiter(
                (sum((k[0], k[1], k[2], k[3] + dx, k[4] + dy) not in keys for dx, dy in _NEIGHBOURS) for k in keys),
                dtype=np.float64, count=len(cells),
            )
            w += self.frontier_bonus * missing / len(_NEIGHBOURS)
        if self.room_bonus > 0:
            w *= 1.0 + self.room_bonus * nrooms / nrooms.max()
        return cells[self.rng.choice(len(cells), p=w / w.sum())]

    # ------------------------------------------------------------------ explore

    def _explore(self, cell: Cell) -> None:
        ale = self.ale
        ale.restoreState(cell.state)
        seg_id = len(self.segments)
        seg_actions: list[int] = []
        self.segments.append((cell.ref, seg_actions))
        score, rooms = cell.score, cell.rooms
        lives = cell.lives  # not getRAM(): it still shows the last emulated frame after a restore
        n_actions = len(self.actions)
        action = int(self.rng.integers(n_actions))
        pending: list[tuple] = []  # (step, key, state, score, rooms, lives)
        died = False
        for step in range(self.explore_steps):
            if step > 0 and self.rng.random() >= self.repeat_prob:
                action = int(self.rng.integers(n_actions))
            score += ale.act(self.actions[action])
            self.frames += FRAME_SKIP
            seg_actions.append(action)
            info = decode_ram(ale.getRAM())
            if info.lives < lives or ale.game_over():
                died = True
                break
            if info.room not in rooms:
                rooms = rooms + (info.room,)
            key = self.cell_key(info)
            length = cell.length + step + 1
            old = self.archive.get(key)
            if old is not None:
                old.seen += 1
            if old is None or (score, len(rooms), -length) > old.rank():
                pending.append((step, key, ale.cloneState(), score, rooms, info.lives))
            # commit candidates that survived death_margin more steps
            while pending and pending[0][0] <= step - self.death_margin:
                self._commit(pending.pop(0), cell.length, seg_id)
        if not died:
            for item in pending:
                self._commit(item, cell.length, seg_id)

    def _commit(self, item, base_length: int, seg_id: int) -> None:
        step, key, state, score, rooms, lives = item
        length = base_length + step + 1
        new = Cell(key, state, score, length, rooms, (seg_id, step + 1), lives)
        old = self.archive.get(key)
        if old is not None:
            if new.rank() <= old.rank():
                return
            new.chosen, new.seen = old.chosen, old.seen
        else:
            new.seen = 1
        self.archive[key] = new
        if (len(new.rooms), new.score, -new.length) > (len(self.best.rooms), self.best.score, -self.best.length):
            self.best = new

    # ------------------------------------------------------------------ public

    def warm_start(self, actions: np.ndarray) -> None:
        """Add every cell along a known trajectory (e.g. a stored route prefix) to the archive.

        Why: the smoke profile and tests must reach a second and third room in seconds; resuming
        from a known prefix is what Go-Explore's archive allows anyway. Frames spent replaying
        are counted in ``frames`` like any other. The prefix must not lose a life.
        """
        ale = self.ale
        ale.reset_game()
        seg_id = len(self.segments)
        seg_actions: list[int] = []
        self.segments.append(((0, 0), seg_actions))
        info = decode_ram(ale.getRAM())
        lives, score, rooms = info.lives, 0.0, (info.room,)
        for step, a in enumerate(np.asarray(actions, dtype=np.int64)):
            score += ale.act(self.actions[int(a)])
            self.frames += FRAME_SKIP
            seg_actions.append(int(a))
            info = decode_ram(ale.getRAM())
            if info.lives < lives or ale.game_over():
                raise ValueError(f"warm-start trajectory loses a life at step {step}")
            if info.room not in rooms:
                rooms = rooms + (info.room,)
            self._commit((step, self.cell_key(info), ale.cloneState(), score, rooms, info.lives), 0, seg_id)
        log.info("warm start: %d steps, rooms %s, score %g, %d cells", len(seg_actions), list(rooms), score, len(self.archive))

    def trajectory(self, cell: Cell) -> np.ndarray:
        """The action indices (into the minimal action set) from reset to ``cell``."""
        parts = []
        ref = cell.ref
        while ref is not None:
            seg_id, n = ref
            parent, acts = self.segments[seg_id]
            parts.append(acts[:n])
            ref = parent
        out = [a for part in reversed(parts) for a in part]
        assert len(out) == cell.length, (len(out), cell.length)
        return np.asarray(out, dtype=np.uint8)

    def run(
        self,
        frame_budget: int,
        *,
        target_rooms: int | None = None,
        time_limit: float | None = None,
        progress_bar: bool = True,
    ) -> SearchResult:
        """Explore until ``frame_budget`` frames are spent (or ``target_rooms`` distinct rooms are
        on the best trajectory, or ``time_limit`` seconds pass), then return the best trajectory."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        progress = [(self.frames, 0.0, len(self.best.rooms), self.best.score)]
        bar = tqdm(
            total=frame_budget, unit="frame", unit_scale=True, disable=not progress_bar, desc="go-explore", mininterval=5.0
        )
        last = self.frames
        while self.frames < frame_budget:
            cell = self._select()
            cell.chosen += 1
            self._explore(cell)
            self.iterations += 1
            bar.update(self.frames - last)
            last = self.frames
            if len(self.best.rooms) > progress[-1][2] or self.best.score > progress[-1][3]:
                progress.append((self.frames, time.perf_counter() - t0, len(self.best.rooms), self.best.score))
                bar.set_postfix(rooms=len(self.best.rooms), score=self.best.score, cells=len(self.archive))
                log.info(
                    "frames %d (%.0fs): best trajectory visits %d rooms %s, score %g; %d cells",
                    self.frames, progress[-1][1], len(self.best.rooms), list(self.best.rooms),
                    self.best.score, len(self.archive),
                )
            if target_rooms is not None and len(self.best.rooms) >= target_rooms:
                break
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                log.warning("search stopped by time_limit after %d frames", self.frames)
                break
        bar.close()
        seconds = time.perf_counter() - t0
        best = self.best
        return SearchResult(
            actions=self.trajectory(best),
            rooms=list(best.rooms),
            score=float(best.score),
            frames=self.frames,
            seconds=seconds,
            cells=len(self.archive),
            iterations=self.iterations,
            progress=progress,
        )


def replay(actions: np.ndarray, *, game: str = "montezuma_revenge", seed: int = 0) -> dict:
    """Replay ``actions`` from reset on a fresh deterministic emulator.

    Returns the rooms in order of first entry, for each the step at which it was entered, the room
    it was entered from and the emulator state at entry, plus the final score and whether a life
    was lost. This both verifies a search result and gives the FAR start states.

    ``route`` (a dict of the same lists: rooms, entry_steps, entered_from, entry_states) keeps only
    the rooms the trajectory really passes: for each room, its first visit that gains something
    (a reward or an item), leaves by another exit than it came in, or is the last one. Rooms only
    peeked into (entered, then left back the same way with nothing gained; search routes are full
    of them) are not on it (see ``RouteParams.drop_detours``).
    """
    from retainrl.families.montezuma.ale import state_to_array

    ale = make_ale(game, sticky=0.0, frame_skip=FRAME_SKIP, seed=seed)
    acts = minimal_actions(ale)
    ale.reset_game()
    info = decode_ram(ale.getRAM())
    lives0 = info.lives
    rooms, steps, came_from, states, inventories = [info.room], [0], [-1], [state_to_array(ale.cloneState())], [info.inventory]
    prev_room = info.room
    score, lost_life = 0.0, False
    # every visit of a room: [room, entered from, entry step, entry state, gained, left to]
    visits = [[info.room, -1, 0, states[0], False, None]]
    for i, a in enumerate(actions):
        reward = ale.act(acts[int(a)])
        score += reward
        before = info
        info = decode_ram(ale.getRAM())
        if info.lives < lives0:
            lost_life = True
        if info.room == before.room and (reward > 0 or info.inventory != before.inventory):
            visits[-1][4] = True
        if info.room != prev_room:
            state = state_to_array(ale.cloneState())
            visits[-1][5] = info.room
            visits.append([info.room, prev_room, i + 1, state, False, None])
            if info.room not in rooms:
                rooms.append(info.room)
                steps.append(i + 1)
                came_from.append(prev_room)
                states.append(state)
                inventories.append(info.inventory)
            prev_room = info.room
    route: dict[str, list] = {"rooms": [], "entry_steps": [], "entered_from": [], "entry_states": []}
    for room, came, step, state, gained, left in visits:
        passes = left is None or gained or came == -1 or left != came
        if passes and room not in route["rooms"]:
            for key, v in zip(("rooms", "entered_from", "entry_steps", "entry_states"), (room, came, step, state)):
                route[key].append(v)
    return {
        "rooms": rooms,
        "entry_steps": steps,
        "entered_from": came_from,
        "entry_states": states,
        "entry_inventory": inventories,
        "route": route,
        "score": score,
        "lost_life": lost_life,
        "final_room": prev_room,
    }


def rooms_per_budget(progress: list[tuple[int, float, int, float]]) -> list[dict]:
    """The progress curve as JSON-friendly rows (for route.json and the benchmark)."""
    return [{"frames": f, "seconds": round(s, 2), "rooms": r, "score": sc} for f, s, r, sc in progress]
