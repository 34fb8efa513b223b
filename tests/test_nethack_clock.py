"""NetHack's wall clock is pinned: seeded games do not depend on when they are played."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nle")
pytest.importorskip("elftools")

from retainrl.core.config import ConfigError  # noqa: E402
from retainrl.families.nethack import stages as nhf  # noqa: E402
from retainrl.families.nethack import clock  # noqa: E402


@pytest.fixture
def original_library():
    from nle.nethack import nethack as nle_nethack

    nhf.make_env(max_steps=10).close()  # make_env pins; the original path is remembered
    assert clock._ORIGINAL is not None and Path(nle_nethack.DLPATH) != Path(clock._ORIGINAL)
    yield Path(clock._ORIGINAL)
    clock.pin_game_clock()  # leave the process as make_env leaves it


def _getnow(lib: Path) -> int:
    """Call NetHack's own ``getnow()`` (hacklib.c: ``time(&now)``) in a freshly loaded copy of ``lib``."""
    handle = ctypes.CDLL(str(lib))
    handle.getnow.restype = ctypes.c_long
    return int(handle.getnow())


def test_the_unpatched_game_library_reads_the_wall_clock(original_library):
    from nle.nethack import nethack as nle_nethack

    assert abs(_getnow(original_library) - time.time()) < 5
    clock.unpin_game_clock()  # back to NLE's own library for games created from now on
    assert Path(nle_nethack.DLPATH) == original_library
    assert clock.pin_game_clock() == Path(nle_nethack.DLPATH) != original_library


@pytest.mark.parametrize("epoch", [clock.EPOCH, 1_234_567_890])
def test_the_patched_library_reads_the_pinned_epoch(original_library, tmp_path, epoch):
    lib = clock.patched_library(original_library, epoch, cache_dir=tmp_path)
    assert _getnow(lib) == epoch
    # only the 16-byte PLT stub differs from NLE's library
    a, b = np.frombuffer(original_library.read_bytes(), np.uint8), np.frombuffer(lib.read_bytes(), np.uint8)
    offset, _ = clock.find_time_plt(original_library)
    assert a.shape == b.shape and np.flatnonzero(a != b).min() >= offset and np.flatnonzero(a != b).max() < offset + 16
    # cached by content: a second call reuses the file instead of rewriting it
    mtime = lib.stat().st_mtime_ns
    assert clock.patched_library(original_library, epoch, cache_dir=tmp_path) == lib and lib.stat().st_mtime_ns == mtime


def test_games_made_by_make_env_use_the_pinned_library(original_library):
    from nle.nethack import nethack as nle_nethack

    env = nhf.make_env(max_steps=50)
    try:
        assert _getnow(Path(nle_nethack.DLPATH)) == clock.EPOCH
        obs = nhf.reset_seeded(env, nhf.game_seeds(0, 1)[0])
        assert b"welcome to NetHack" in bytes(obs["message"])
        for _ in range(5):
            obs, *_ = env.step(0)
    finally:
        env.close()


def test_unseeded_games_still_differ_with_the_clock_pinned(original_library):
    """NLE's own fresh seeds must not come from the (now constant) clock."""
    env = nhf.make_env(max_steps=50)
    try:
        maps = []
        for _ in range(3):
            obs, _ = env.reset()
            maps.append(obs["glyphs"].copy())
    finally:
        env.close()
    assert not (np.array_equal(maps[0], maps[1]) and np.array_equal(maps[1], maps[2]))


def test_a_library_that_is_not_a_patchable_nethack_is_refused_by_name(original_library, tmp_path):
    bogus = tmp_path / "libnotnethack.so"
    bogus.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(ConfigError, match="libnotnethack.so"):
        clock.find_time_plt(bogus)
    # a build whose PLT stub for `time` is not the expected `jmp *GOT(%rip)`
    raw = bytearray(original_library.read_bytes())
    offset, _ = clock.find_time_plt(original_library)
    raw[offset : offset + 2] = b"\x90\x90"
    other = tmp_path / "libnethack-other.so"
    other.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="not supported"):
        clock.find_time_plt(other)


def test_epochs_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match="epoch"):
        clock.time_stub(2**31)
