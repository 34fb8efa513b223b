"""Diagonal Fisher information of a policy on a set of states (what EWC weighs parameters by).

Two estimators, for both policy families:

* ``exact``: the expectation over the policy's own actions in closed form.
  Categorical: F = E_s Σ_a π(a|s) (∂ log π(a|s)/∂θ)².
  Gaussian (Continual-World style, as in the study): per parameter
  F = E_s Σ_d (∂μ_d/∂θ)²/σ_d² + 2 (∂σ_d/∂θ)²/σ_d², i.e. with log σ: (∂μ_d/∂θ)²/σ_d² + 2 (∂ log σ_d/∂θ)².
  This holds for a tanh-squashed Gaussian too: the squashing's log-det term does not depend on θ.
* ``sampled``: one action a ~ π(·|s) per state and (∂ log π(a|s)/∂θ)², an unbiased Monte-Carlo
  estimate of the same quantity (cheaper for many actions or large networks).

Per-state gradients come from ``torch.func`` (vmap over states, jacrev over parameters), in
chunks so memory stays bounded. The result is clipped below at ``min_value`` (1e-5 in the study)
so no parameter is left completely free.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.func import functional_call, jacrev, vmap

from retainrl.retention.dists import log_prob, sample, split_gaussian
from retainrl.retention.policy import RetainablePolicy


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def fisher_diagonal(
    policy: RetainablePolicy,
    obs: torch.Tensor,
    *,
    estimator: str = "exact",
    include_critic: bool = False,
    min_value: float = 1e-5,
    chunk_size: int = 64,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Return {parameter name: diagonal Fisher} averaged over the states in ``obs`` (first axis)."""
    if estimator not in ("exact", "sampled"):
        raise ValueError(f"fisher estimator must be 'exact' or 'sampled' (got {estimator!r})")
    names = [n for n, _ in policy.retained_parameters(include_critic)]
    params = {n: p.detach() for n, p in policy.named_parameters()}
    buffers = {n: b.detach() for n, b in policy.named_buffers()}
    family = policy.family

    def out_fn(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # One state at a time, flattened to the K distribution parameters of a single model.
        return functional_call(policy, ({**params, **theta}, buffers), (x.unsqueeze(0),)).reshape(-1)

    trainable = {n: params[n] for n in names}
    total = {n: torch.zeros_like(p) for n, p in trainable.items()}

    for sl in _chunks(obs.shape[0], chunk_size):
        x = obs[sl]
        if estimator == "exact":
            jac = vmap(jacrev(out_fn), in_dims=(None, 0))(trainable, x)  # name -> (B, K, *shape)
            with torch.no_grad():
                out = vmap(out_fn, in_dims=(None, 0))(trainable, x)  # (B, K)
            for n in names:
                j = jac[n].reshape(*jac[n].shape[:2], -1)  # (B, K, P)
                if family == "categorical":
                    # d log π_a = d z_a - Σ_b π_b d z_b for logits z.
                    probs = torch.softmax(out, dim=-1)
                    centred = j - torch.einsum("bk,bkp->bp", probs, j).unsqueeze(1)
                    f = torch.einsum("bk,bkp->p", probs, centred.pow(2))
                else:
                    mean, log_std = split_gaussian(out)
                    jm, jl = j.chunk(2, dim=1)
                    inv_var = torch.exp(-2 * log_std).unsqueeze(-1)
                    f = (jm.pow(2) * inv_var + 2 * jl.pow(2)).sum(dim=(0, 1))
                total[n] += f.reshape(total[n].shape)
        else:
            with torch.no_grad():
                out = vmap(out_fn, in_dims=(None, 0))(trainable, x)
                actions = sample(family, out, generator)

            def logp(theta, xi, ai):
                return log_prob(family, out_fn(theta, xi), ai)

            grads = vmap(torch.func.grad(logp), in_dims=(None, 0, 0))(trainable, x, actions)
            for n in names:
                total[n] += grads[n].pow(2).sum(0)

    count = obs.shape[0]
    return {n: (t / count).clamp_min(min_value) for n, t in total.items()}


def monte_carlo_fisher(
    policy: RetainablePolicy, obs: torch.Tensor, samples_per_state: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Plain-loop Monte-Carlo Fisher E_s E_a (∂ log π(a|s)/∂θ)², the reference the estimators are tested against."""
    names = [n for n, _ in policy.retained_parameters(False)]
    total = {n: torch.zeros_like(p) for n, p in policy.named_parameters() if n in names}
    for i in range(obs.shape[0]):
        for _ in range(samples_per_state):
            policy.zero_grad()
            out = policy.dist_params(obs[i : i + 1]).reshape(1, -1)
            a = sample(policy.family, out.detach(), generator)
            log_prob(policy.family, out, a).sum().backward()
            for n, p in policy.named_parameters():
                if n in total:
                    total[n] += p.grad.pow(2)
    n_total = obs.shape[0] * samples_per_state
    return {n: t / n_total for n, t in total.items()}
