"""Montezuma's Revenge on the raw ALE: emulator set-up, RAM decoding, state (de)serialisation.

This module is the only place that knows RAM addresses and the ale-py API, so the search, the
training env and the tests all read the game the same way. It imports ale-py at call time only
(loading params must stay cheap).

RAM layout (indices into ``ALEInterface.getRAM()``, i.e. address − 0x80), checked against the
emulator by ``tests/test_montezuma_env.py``:

======  =====  =========================================================
index   addr   meaning
======  =====  =========================================================
3       0x83   room number (the game starts in room 1)
42      0xAA   player x (≈ 0 … 152, left to right)
43      0xAB   player y (larger is higher on screen; 235 on the top floor)
57      0xB9   level (0 for the first pyramid)
58      0xBA   lives left as displayed (ALE's ``lives()`` is this + 1)
65      0xC1   inventory bits (keys, sword, torch, amulet, hammer)
======  =====  =========================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: ROM names (ale-py's ``roms.get_rom_path`` ids) this family knows how to read.
GAMES = ("montezuma_revenge",)

RAM_ROOM, RAM_X, RAM_Y, RAM_LEVEL, RAM_LIVES, RAM_INVENTORY = 3, 42, 43, 57, 58, 65
#: Inventory bits that are keys (verified: picking up the room-1 key sets bit 0x02).
KEY_BITS = (0x02, 0x04, 0x08, 0x10)


@dataclass(frozen=True)
class RamInfo:
    """What the search and the room-success detector need from one RAM snapshot."""

    room: int
    level: int
    x: int
    y: int
    lives: int
    inventory: int

    @property
    def keys(self) -> int:
        return sum(1 for b in KEY_BITS if self.inventory & b)


def decode_ram(ram: np.ndarray) -> RamInfo:
    """Read room, level, position, lives and inventory from a 128-byte RAM array."""
    return RamInfo(
        room=int(ram[RAM_ROOM]),
        level=int(ram[RAM_LEVEL]),
        x=int(ram[RAM_X]),
        y=int(ram[RAM_Y]),
        lives=int(ram[RAM_LIVES]),
        inventory=int(ram[RAM_INVENTORY]),
    )


def make_ale(game: str = "montezuma_revenge", *, sticky: float = 0.0, frame_skip: int = 1, seed: int = 0):
    """An ``ALEInterface`` with the ROM loaded.

    ``sticky`` is ALE's repeat_action_probability: 0 for the deterministic search (so a stored
    action sequence always replays to the same states), 0.25 for training as in the study.
    ``frame_skip`` > 1 lets the emulator repeat an action internally, which the search uses to
    avoid three Python round-trips per agent step; the training env skips frames itself so it
    can max-pool the last two.
    """
    from ale_py import ALEInterface, LoggerMode, roms

    if game not in GAMES:
        from retainrl.core.config import ConfigError

        raise ConfigError(f"montezuma.env.game: unknown game {game!r}; allowed: {', '.join(GAMES)}")
    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", int(seed))
    ale.setFloat("repeat_action_probability", float(sticky))
    ale.setInt("frame_skip", int(frame_skip))
    ale.loadROM(roms.get_rom_path(game))
    return ale


def state_to_array(state) -> np.ndarray:
    """An ``ALEState`` as a uint8 array (what demos store; restorable with :func:`array_to_state`)."""
    (blob,) = state.__getstate__()
    return np.frombuffer(blob, dtype=np.uint8).copy()


def array_to_state(arr: np.ndarray):
    from ale_py import ALEState

    state = ALEState.__new__(ALEState)
    state.__setstate__((np.asarray(arr, dtype=np.uint8).tobytes(),))
    return state


def minimal_actions(ale) -> list:
    """The 18 actions of Montezuma's minimal action set; demos store indices into this list."""
    return list(ale.getMinimalActionSet())
