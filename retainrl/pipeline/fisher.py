"""Stage ``fisher``, the same for every family: EWC's diagonal Fisher of π* on FAR-buffer states.

``fisher.states`` states are drawn from the FAR buffer (a fixed permutation, so the estimate does
not depend on the order the family found them in) and handed to
:func:`retainrl.retention.fisher.fisher_diagonal` with ``fisher.estimator``. The family gives
nothing but π* (``load_pretrained``); a family whose π* cannot be differentiated state by state
(NetHack's recurrent sample-factory policy) defines its own ``fisher`` stage instead.
"""

from __future__ import annotations

import logging

import torch

from retainrl.core.artifacts import atomic_path, save_tensors
from retainrl.pipeline import far_buffer as buffer
from retainrl.retention.fisher import fisher_diagonal

log = logging.getLogger(__name__)

FILE = "fisher.safetensors"
#: Bytes the per-state Jacobians of one chunk may take (``fisher_diagonal`` vmaps over a chunk).
JACOBIAN_BUDGET = 1 << 30


def chunk_size(policy, out_dim: int) -> int:
    """States per vmapped chunk: as many as fit the Jacobian budget, between 1 and 64."""
    n_params = sum(p.numel() for _, p in policy.retained_parameters(False))
    return max(1, min(64, JACOBIAN_BUDGET // max(1, 4 * n_params * out_dim)))


def estimate(pretrained, far: dict, cfg, device=None) -> tuple[dict[str, torch.Tensor], int]:
    """π*'s diagonal Fisher on ``cfg.states`` states of the FAR buffer ``far`` (drawn by a fixed
    permutation); returns it and the number of states it averages over."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(buffer.obs_len(far["obs"]), generator=gen)[: cfg.states]
    obs = buffer.as_tensor(buffer.take(far["obs"], idx.numpy()), device)
    out_dim = int(far["targets"].shape[-1])
    f = fisher_diagonal(pretrained, obs, estimator=cfg.estimator, min_value=cfg.min_value,
                        chunk_size=chunk_size(pretrained, out_dim), generator=gen)
    return {k: v.detach().cpu().contiguous() for k, v in f.items()}, int(idx.numel())


def fisher(family, p, paths, device=None) -> None:
    cfg = p.fisher
    f, n = estimate(family.load_pretrained(p, paths, device), buffer.load(paths), cfg, device)
    with atomic_path(paths.fisher, directory=True) as out:
        save_tensors(out / FILE, f, {"estimator": cfg.estimator, "states": n})
    mean = float(torch.cat([v.flatten() for v in f.values()]).mean())
    log.info("Fisher (%s, %d FAR states): mean %.3g over %d tensors -> %s", cfg.estimator, n, mean, len(f), paths.fisher)


def load(paths, device=None) -> dict[str, torch.Tensor]:
    from retainrl.core.artifacts import load_tensors

    return {k: v.to(device) for k, v in load_tensors(paths.fisher / FILE, "Fisher (fisher stage)").items()}
