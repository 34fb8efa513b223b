"""Stage ``far_buffer``, the same for every family: FAR states with π*'s outputs on them.

The family says only which states are FAR (``far_states``: π* played where FAR starts, or the
expert's FAR segment replayed); this stage stores them with π*'s distribution parameters (what
BC distils) and, when π* has a critic, its value estimates (what critic distillation needs), in
one file of one layout for every family, so the Fisher and fine-tuning stages read it the same
way everywhere.

Layout of ``far_buffer.npz``: ``obs`` (or ``obs/<part>`` for multi-part observations),
``targets``, optionally ``critic``, and whatever per-state arrays the family adds (``rooms``,
``action``, ``game``…). A family whose π* needs more than the observation to act (NetHack's
recurrent state) returns ``targets`` itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from retainrl.core.artifacts import atomic_path, load_npz, save_json

log = logging.getLogger(__name__)

FILE = "far_buffer.npz"
OBS_PART = "obs/"
#: States per forward pass when π*'s outputs are computed (bounds memory for image observations).
CHUNK = 256


def obs_len(obs) -> int:
    return len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)


def take(obs, idx):
    """Rows ``idx`` of an observation batch (an array or tensor, or a dict of them)."""
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]


def as_tensor(obs, device=None):
    if isinstance(obs, dict):
        return {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
    return torch.as_tensor(obs, device=device)


@torch.no_grad()
def pi_star_outputs(pretrained, obs, device=None) -> dict[str, np.ndarray]:
    """π*'s distribution parameters on ``obs`` (and its critic's outputs when it has a critic), in
    chunks. A stacked policy of one model (a leading models axis of 1) gives rows without it."""
    n = obs_len(obs)
    outs: dict[str, list] = {"targets": []}
    critic = pretrained.has_critic()
    if critic:
        outs["critic"] = []
    for start in range(0, n, CHUNK):
        x = as_tensor(take(obs, slice(start, start + CHUNK)), device)
        rows = obs_len(x)
        outs["targets"].append(_unstack(pretrained.dist_params(x), rows).cpu())
        if critic:
            outs["critic"].append(_unstack(pretrained.critic_output(x), rows).cpu())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def _unstack(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Drop the models axis of a stacked policy of one model: (1, rows, …) → (rows, …)."""
    return t[0] if t.dim() >= 2 and tuple(t.shape[:2]) == (1, rows) else t


def save(directory: Path, states: dict) -> dict:
    """Write ``states`` ({obs, targets, …}) as ``far_buffer.npz`` + ``summary.json`` into ``directory``."""
    obs = states["obs"]
    arrays = {f"{OBS_PART}{k}": v for k, v in obs.items()} if isinstance(obs, dict) else {"obs": obs}
    n = obs_len(obs)
    for k, v in states.items():
        if k == "obs":
            continue
        if len(v) != n:
            raise ValueError(f"far_buffer: {k!r} has {len(v)} rows for {n} states")
        arrays[k] = np.asarray(v)
    with (directory / FILE).open("wb") as fh:
        np.savez_compressed(fh, **arrays)
    summary = {"states": n, "arrays": sorted(arrays)}
    save_json(directory / "summary.json", summary)
    return summary


def load(paths, *, required: tuple[str, ...] = ("targets",)) -> dict:
    """The FAR buffer as written by :func:`save`: ``obs`` is a dict again for multi-part observations."""
    arrays = load_npz(Path(paths.far_buffer) / FILE, "FAR buffer (far_buffer stage)", required)
    parts = {k[len(OBS_PART):]: v for k, v in arrays.items() if k.startswith(OBS_PART)}
    out = {k: v for k, v in arrays.items() if not k.startswith(OBS_PART)}
    if parts:
        out["obs"] = parts
    if "obs" not in out:
        raise ValueError(f"{Path(paths.far_buffer) / FILE}: no observations (obs or obs/<part>)")
    return out


def far_buffer(family, p, paths, device=None) -> None:
    """The stage: ``family.far_states`` → π*'s outputs on them → ``paths.far_buffer`` (atomically)."""
    pretrained = family.load_pretrained(p, paths, device)
    states = dict(family.far_states(p, paths, pretrained, device))
    if obs_len(states["obs"]) == 0:
        raise ValueError("far_buffer: the family found no FAR state")
    if "targets" not in states:
        states.update(pi_star_outputs(pretrained, states["obs"], device))
    with atomic_path(paths.far_buffer, directory=True) as out:
        summary = save(out, states)
    log.info("FAR buffer: %d states (%s) -> %s", summary["states"], ", ".join(summary["arrays"]), paths.far_buffer)
