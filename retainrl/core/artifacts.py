"""Atomic artifact I/O: a killed or failed stage never leaves a half-written output behind.

Every writer goes through :func:`atomic_path`, which hands out a temporary sibling path and
renames it over the destination only when the block finishes without an exception (rename is
atomic on one file system). Model weights are safetensors, arrays npz, metrics JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from retainrl.core.errors import ConfigError


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it onto ``dest`` on success, delete it on error."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # left by a killed run (SIGKILL skips cleanup)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        else:
            os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def require(path: str | Path, what: str) -> Path:
    """Fail with a message naming the missing upstream artifact and the stage that makes it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: missing {what}; run its stage first (`dvc repro`)")
    return path


META_KEY = "retainrl"


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> None:
    """safetensors with the metadata as ONE key of sorted JSON.

    safetensors writes a metadata map in hash order, which changes between processes; with
    several keys the same weights would get different bytes and DVC would see a changed output.
    """
    meta = {META_KEY: json.dumps(dict(metadata or {}), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_tensors(path: str | Path, what: str = "tensors") -> dict[str, torch.Tensor]:
    return load_file(str(require(path, what)))


def load_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(require(path, "tensors")), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get(META_KEY, "{}"))


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_npz(path: str | Path, what: str, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    path = require(path, what)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as exc:  # corrupted or truncated file
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    missing = [k for k in required if k not in out]
    if missing:
        raise ConfigError(f"{path}: {what} lacks arrays {missing}")
    return out


def save_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: str | Path, what: str) -> Any:
    return json.loads(require(path, what).read_text())
