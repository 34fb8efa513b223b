"""Pin NetHack's wall clock, so a seeded game is the same game whenever it is played.

NLE's three seeds plus ``fix_moon_phase`` make the dungeon and every die roll reproducible, but
NetHack still reads the real clock once per game: ``u_init`` sets ``ubirthday = time(NULL)``, and
the game hashes ``ubirthday`` without touching its RNG to pick shopkeeper names (``shknam.c``),
the prices of worthless glass in shops (``shk.c``), the species in an anthole (``mkroom.c``) and
more (NLE issue #129; the fix, NLE PR #130, is not released). Measured on this project's own
demonstrations: two replays of the same 50 expert games a minute apart differed in a shop's glass
gem prices, and one replay ended 3 points below the score the expert had when it was recorded.
A message that changes length can also move a ``--More--`` and so change which keys a stored
action sequence must press. Demonstrations are stored as seeds + actions, BC re-renders them by
replay and FAR start states are replayed prefixes, so every one of those must see the game the
expert saw: the clock has to be a constant.

:func:`pin_game_clock` does that without rebuilding NLE. NLE copies ``libnethack.so`` (from the
module-level ``nle.nethack.nethack.DLPATH``) into a fresh in-memory file for every game instance;
we point ``DLPATH`` at a private copy whose PLT stub for libc's ``time`` is replaced by
``time(t) { if (t) *t = EPOCH; return EPOCH; }`` (14 bytes of x86-64). Every clock read inside
NetHack goes through that stub (``getnow`` and ``u_init``; checked with ``objdump``), and nothing
outside the game library is touched. The stub's bytes are checked before patching, so an NLE
build with a different layout fails with a clear error instead of being mis-patched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from pathlib import Path

from retainrl.core.config import ConfigError

log = logging.getLogger(__name__)

EPOCH = 946_684_800  # 2000-01-01 00:00:00 UTC: every game's "now" (moon phase comes from the seed: fix_moon_phase)
_ORIGINAL: str | None = None  # NLE's own DLPATH, before the first pin in this process
_PINNED: dict[int, str] = {}  # epoch -> patched copy, per process


def time_stub(epoch: int) -> bytes:
    """x86-64 body of ``time_t time(time_t *t)`` that stores and returns ``epoch`` (16 bytes)."""
    if not 0 <= epoch < 2**31:
        raise ConfigError(f"nethack clock: epoch {epoch} does not fit in 31 bits")
    code = (
        b"\xb8" + struct.pack("<I", epoch)  # mov eax, epoch (zero-extends into rax)
        + b"\x48\x85\xff"  # test rdi, rdi
        + b"\x74\x03"  # je +3
        + b"\x48\x89\x07"  # mov [rdi], rax
        + b"\xc3"  # ret
    )
    return code.ljust(16, b"\xcc")


def find_time_plt(lib: Path) -> tuple[int, int]:
    """File offset and address of the 16-byte PLT stub through which ``lib`` calls libc's ``time``."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    with lib.open("rb") as fh:
        try:
            elf = ELFFile(fh)
            elf.get_section_by_name(".plt")
        except ELFError as err:
            raise ConfigError(f"{lib}: not a readable ELF library ({err}); cannot pin NetHack's clock") from err
        if elf["e_machine"] != "EM_X86_64":
            raise ConfigError(f"{lib}: nethack clock pinning supports x86-64 builds of NLE only (this one is {elf['e_machine']})")
        rela, plt = elf.get_section_by_name(".rela.plt"), elf.get_section_by_name(".plt")
        if rela is None or plt is None:
            raise ConfigError(f"{lib}: no .rela.plt/.plt section; cannot pin NetHack's clock")
        symtab = elf.get_section(rela["sh_link"])
        slots = [r["r_offset"] for r in rela.iter_relocations() if symtab.get_symbol(r["r_info_sym"]).name == "time"]
        if len(slots) != 1:
            raise ConfigError(f"{lib}: expected one PLT relocation for `time`, found {len(slots)}")
        data, base = plt.data(), plt["sh_addr"]
        for off in range(0, len(data) - 15, 16):  # classic lazy PLT: jmp *GOT(%rip); push idx; jmp PLT0
            if data[off : off + 2] == b"\xff\x25":
                disp = struct.unpack_from("<i", data, off + 2)[0]
                if base + off + 6 + disp == slots[0]:
                    return plt["sh_offset"] + off, base + off
    raise ConfigError(f"{lib}: no PLT stub jumps through the GOT slot of `time`; this NLE build is not supported")


def patched_library(original: Path, epoch: int = EPOCH, cache_dir: Path | None = None) -> Path:
    """A copy of ``original`` with ``time`` pinned to ``epoch``; cached by content hash, written atomically."""
    raw = original.read_bytes()
    offset, _ = find_time_plt(original)
    patched = raw[:offset] + time_stub(epoch) + raw[offset + 16 :]
    digest = hashlib.sha256(patched).hexdigest()[:16]
    cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / f"retainrl-nle-{os.getuid()}")
    dest = cache_dir / f"libnethack-{digest}.so"
    if dest.exists() and hashlib.sha256(dest.read_bytes()).hexdigest()[:16] == digest:
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libnethack.", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(patched)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)  # concurrent processes write the same bytes: last rename wins, all valid
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def pin_game_clock(epoch: int = EPOCH) -> Path:
    """Make every NLE game created from now on in this process read ``epoch`` as the time (idempotent)."""
    global _ORIGINAL
    from nle.nethack import nethack as nle_nethack

    if _ORIGINAL is None:
        _ORIGINAL = str(nle_nethack.DLPATH)
    if epoch not in _PINNED:
        _PINNED[epoch] = str(patched_library(Path(_ORIGINAL), epoch))
        log.debug("NetHack clock pinned to %d (%s)", epoch, _PINNED[epoch])
    nle_nethack.DLPATH = _PINNED[epoch]
    return Path(_PINNED[epoch])


def unpin_game_clock() -> None:
    """Back to NLE's own library (the real clock) for games created from now on; for tests."""
    from nle.nethack import nethack as nle_nethack

    if _ORIGINAL is not None:
        nle_nethack.DLPATH = _ORIGINAL
