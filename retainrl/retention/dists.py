"""Policy-distribution helpers shared by the retention methods and the Fisher estimators.

A policy describes its action distribution by one tensor of *distribution parameters*:
``categorical``: logits (..., A); ``gaussian``: ``cat(mean, log_std)`` (..., 2D). A tanh-squashed
Gaussian is described by its pre-tanh Gaussian: the squashing is a fixed bijection, so KL
divergences and Fisher information are the same for both.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Family = Literal["categorical", "gaussian"]
FAMILIES = ("categorical", "gaussian")


def split_gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, log_std = params.chunk(2, dim=-1)
    return mean, log_std


def kl(family: Family, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per sample (the last axis, action or 2·action dims, is summed out)."""
    if family == "categorical":
        logp = F.log_softmax(p, dim=-1)
        logq = F.log_softmax(q, dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)
    if family == "gaussian":
        mp, lp = split_gaussian(p)
        mq, lq = split_gaussian(q)
        var_ratio = torch.exp(2 * (lp - lq))
        return (lq - lp + 0.5 * (var_ratio + (mp - mq).pow(2) * torch.exp(-2 * lq)) - 0.5).sum(-1)
    raise ValueError(f"unknown distribution family {family!r}; allowed: {FAMILIES}")


def log_prob(family: Family, params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log π(a|s) for categorical (integer actions) or Gaussian (pre-tanh actions) policies."""
    if family == "categorical":
        return F.log_softmax(params, dim=-1).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
    mean, log_std = split_gaussian(params)
    return torch.distributions.Normal(mean, log_std.exp()).log_prob(action).sum(-1)


def sample(family: Family, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    if family == "categorical":
        probs = F.softmax(params, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    mean, log_std = split_gaussian(params)
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + log_std.exp() * noise


def reduce_samples(per_sample: torch.Tensor) -> torch.Tensor:
    """Mean over the sample axis (last), sum over any leading axes of stacked models.

    Summing over stacked models keeps independently seeded models independent: each one's
    gradient is exactly what it would get alone.
    """
    return per_sample.mean(-1).sum()
