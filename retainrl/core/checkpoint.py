"""Periodic checkpoints of a fine-tuning run, so that a killed stage resumes where it stopped.

DVC deletes a stage's outs before it runs it, so a checkpoint cannot live there: it goes to
``.checkpoints/<stage>/<key>/state.pt`` (git-ignored), where ``<key>`` hashes everything the
run's result depends on: the family, the method, the family's validated params and the project's
code. A rerun with other params or other code therefore never resumes a checkpoint it would not
have written; it starts over and removes the stale ones of that stage. The stage removes the
checkpoint once its outputs are written (:meth:`Checkpoint.clear`).

What goes into a checkpoint is the learner's business (weights, optimiser, replay or rollout
state, RNG streams, step counters, what the retention method keeps, the curves so far): it hands
a dict to :meth:`Checkpoint.save` at a point where resuming gives exactly the same run (after a
whole update, never inside one), and gets it back from :meth:`Checkpoint.load` at start. Saving
draws no random numbers and changes no state, so when it happens (``every_s`` of wall clock,
the family's ``checkpoint.every_s``) cannot change the result: a resumed run is bit for bit the
uninterrupted one wherever the learner is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from pydantic import Field

from retainrl.core.config import Strict

log = logging.getLogger(__name__)

ROOT_DIR = Path(".checkpoints")
_PROJECT = Path(__file__).resolve().parents[2]


def code_hash(root: Path = _PROJECT) -> str:
    """sha256 over the project's Python sources (retainrl/ and stages/): any code change is a new key."""
    h = hashlib.sha256()
    for f in sorted([*(root / "retainrl").rglob("*.py"), *(root / "stages").rglob("*.py")]):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def inputs_hash(paths) -> str:
    """sha256 over the files under ``paths`` (names and bytes, in a fixed order)."""
    h = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(f.as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


class CheckpointParams(Strict):
    """A family's ``checkpoint:`` section. No stage depends on it in dvc.yaml (it cannot change a
    result), and it is left out of the checkpoint key, so changing it reruns and discards nothing."""

    every_s: float = Field(300.0, description="wall-clock seconds between checkpoints of a fine-tuning run; ≤ 0: "
                                              "at every point the learner offers (tests)")


class Checkpoint:
    """One run's checkpoint file; ``every_s`` ≤ 0 saves at every opportunity the learner offers."""

    def __init__(self, directory: Path, every_s: float, *, meta: dict | None = None, part: str = "state"):
        self.directory = Path(directory)
        self.file = self.directory / f"{part}.pt"
        self.every_s = float(every_s)
        self.meta = meta or {}
        self._last = time.monotonic()
        self.saves = 0
        self._extras: dict[str, tuple] = {}

    def attach(self, name: str, get, set_) -> None:
        """Also save ``get()`` under ``name`` and hand it to ``set_`` on load: state the family
        owns and the learner does not know (an evaluator's env RNGs, say)."""
        self._extras[name] = (get, set_)

    @classmethod
    def for_stage(cls, stage: str, every_s: float, *, family: str, method: str, params, inputs: tuple = (),
                  root: Path = ROOT_DIR, code: str | None = None, part: str = "state") -> Checkpoint:
        """The checkpoint of stage ``stage`` (e.g. ``apple_finetune@ewc``) for these params, inputs and code.

        ``params``: the family's validated params (a pydantic model) or a plain dict. ``inputs``:
        the upstream artifacts the run reads (files or directories; their bytes are hashed, so a
        re-made π* or FAR buffer never resumes a run begun on the old one). ``part`` names one of
        several checkpoints of the stage (a stage that runs its seeds one after another keeps one
        per seed).
        """
        dumped = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
        dumped.pop("checkpoint", None)  # the interval cannot change the result
        ident = {"family": family, "method": method, "params": dumped, "code": code or code_hash(),
                 "inputs": inputs_hash(inputs)}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
        stage_dir = Path(root) / stage
        if stage_dir.is_dir():  # checkpoints of other params or code can never be resumed: drop them
            for other in stage_dir.iterdir():
                if other.name != key:
                    shutil.rmtree(other, ignore_errors=True)
                    log.info("removed the stale checkpoint %s (other params or code)", other)
        return cls(stage_dir / key, every_s, meta={"stage": stage, "key": key}, part=part)

    def load(self) -> dict | None:
        """The saved state, or None when there is none (a fresh run)."""
        if not self.file.is_file():
            return None
        try:
            state = torch.load(self.file, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 — a damaged file must not block every rerun: start over
            log.warning("checkpoint %s is unreadable (%s): starting over", self.file, err)
            self.file.unlink(missing_ok=True)
            return None
        for name, (_, set_) in self._extras.items():
            set_(state["extras"][name])
        log.info("resuming %s from its checkpoint (%s)", self.meta.get("stage", self.directory), state.get("progress", "?"))
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a kill mid-write leaves the previous checkpoint intact)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._extras:
            state = {**state, "extras": {name: get() for name, (get, _) in self._extras.items()}}
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)
        self._last = time.monotonic()
        self.saves += 1

    def maybe_save(self, make_state) -> bool:
        """``save(make_state())`` when ``every_s`` has passed since the last save; whether it saved."""
        if not self.due():
            return False
        self.save(make_state())
        return True

    def clear(self) -> None:
        """Remove the checkpoint (the stage succeeded: its outputs are the result now)."""
        self.file.unlink(missing_ok=True)
        for tmp in self.directory.glob(f".{self.file.name}.*.tmp"):  # a save cut short by a kill
            tmp.unlink(missing_ok=True)
        for d in (self.directory, self.directory.parent):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    @staticmethod
    def clear_stage(stage: str, root: Path = ROOT_DIR) -> None:
        """Remove every checkpoint of ``stage`` (all its parts)."""
        shutil.rmtree(Path(root) / stage, ignore_errors=True)
