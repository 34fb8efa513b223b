"""Paired comparisons of two policies evaluated on the same episodes, with bootstrap intervals.

Why: "KS ends above π*" is a claim about a difference of two noisy means. When every policy
plays the *same* games (same game seeds, same sampling seed), the per-game difference removes
the game-to-game variance, which in NetHack is most of it (one game's score can be ten times
another's). What is left is the episode noise of the difference and the seed-to-seed spread of
training. The interval below resamples both: the games (paired: one set of game indices for
both policies per replicate) and, independently, each policy's training seeds.

A report makes many such comparisons (NetHack: every method against π* and every retention
method against vanilla fine-tuning, on CLOSE and FAR, by score and by KL), so one of them clears
a 95% interval by chance far more often than 5% of the time. :func:`holm` holds a report's whole
set of comparisons to a family-wise error rate of 5% (Holm's step-down correction of the
bootstrap p-values), and :func:`verdict` reads the corrected p-value when it is there.
"""

from __future__ import annotations

import numpy as np


def _paired_replicates(a, b, clusters, n_boot: int, seed: int, what: str):
    """Bootstrap replicates of mean(a) and mean(b): one draw of clusters shared by both (the
    pairing), then each policy's seeds resampled on their own. a, b: (seeds, episodes)."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"{what}: both policies need the same (non-zero) number of episodes, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    n_ep = a.shape[1]
    ids = np.arange(n_ep) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    if len(ids) != n_ep:
        raise ValueError(f"{what}: {len(ids)} cluster ids for {n_ep} episodes")
    n_cl = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=n_cl).astype(float)
    picks = rng.integers(0, n_cl, (n_boot, n_cl))  # shared by a and b: the pairing

    def replicate_means(x: np.ndarray) -> np.ndarray:
        sums = np.stack([np.bincount(ids, weights=row, minlength=n_cl) for row in x])  # (seeds, clusters)
        per_seed = (sums[:, picks].sum(axis=2) / counts[picks].sum(axis=1)).T  # (n_boot, seeds)
        pick = rng.integers(0, x.shape[0], (n_boot, x.shape[0]))
        return np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)

    sizes = {"episodes": int(n_ep), "clusters": n_cl, "seeds": [int(a.shape[0]), int(b.shape[0])]}
    return a, b, replicate_means(a), replicate_means(b), sizes


def paired_difference(a, b, *, clusters=None, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> dict:
    """mean(a) − mean(b) with a bootstrap ``level`` interval; a, b: (seeds, episodes) on the same episodes.

    ``clusters`` (one id per episode) makes the bootstrap resample clusters, not episodes: episodes
    that start from the same state are not independent draws, and resampling them one by one
    would make the interval too narrow. Returns ``diff``, ``ci_low``/``ci_high``, ``p_above``
    (share of replicates with a > b), ``p_value`` (two-sided, of no difference) and the sizes
    (``clusters``: how many distinct units were resampled). A policy evaluated once (π*) is a
    (1, episodes) array: its seed axis does not resample.
    """
    a, b, ra, rb, sizes = _paired_replicates(a, b, clusters, n_boot, seed, "paired_difference")
    d = ra - rb
    tail = (1.0 - level) / 2
    # two-sided bootstrap p-value of "no difference": twice the smaller tail beyond 0, with the
    # usual +1 so that a replicate set that never crosses 0 gives 2/(n+1), not an impossible 0
    p_value = min(1.0, 2 * (min(int((d <= 0).sum()), int((d >= 0).sum())) + 1) / (n_boot + 1))
    return {
        "diff": float(a.mean() - b.mean()),
        "ci_low": float(np.quantile(d, tail)),
        "ci_high": float(np.quantile(d, 1 - tail)),
        "p_above": float((d > 0).mean()),
        "p_value": float(p_value),
        "level": level,
        **sizes,
    }


def paired_ratio(a, b, *, clusters=None, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> dict:
    """mean(a) / mean(b) on the same episodes (e.g. π* over its expert), with the same paired
    bootstrap as :func:`paired_difference`; replicates whose mean(b) is not positive are dropped."""
    a, b, ra, rb, sizes = _paired_replicates(a, b, clusters, n_boot, seed, "paired_ratio")
    if b.mean() <= 0:
        raise ValueError(f"paired_ratio: the reference's mean is {b.mean():g}; a ratio needs a positive one")
    ok = rb > 0
    r = ra[ok] / rb[ok]
    tail = (1.0 - level) / 2
    return {"ratio": float(a.mean() / b.mean()), "ci_low": float(np.quantile(r, tail)), "ci_high": float(np.quantile(r, 1 - tail)),
            "level": level, **sizes}


MIN_EPISODES = 5  # below this many independent units a bootstrap interval is not worth a verdict (smoke plays 1 game)
ALPHA = 0.05  # family-wise error rate of a report's comparisons


def holm(comparisons: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Holm's step-down correction over one report's comparisons: each gets ``p_holm`` (its
    adjusted p-value: the i-th smallest p times the m − i + 1 comparisons not yet rejected, made
    monotone) and ``holm_m`` (how many comparisons it was corrected for). A comparison is then
    a finding when ``p_holm < alpha``, which keeps P(any false finding) ≤ alpha over the set."""
    out = [dict(c) for c in comparisons]
    m = len(out)
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: out[i]["p_value"])):
        running = max(running, min(1.0, (m - rank) * out[i]["p_value"]))
        out[i].update(p_holm=running, holm_m=m, holm_alpha=alpha)
    return out


def verdict(cmp: dict) -> str:
    """'higher' / 'lower' when the difference is a finding, else 'no difference shown' (or 'too
    few episodes'). A finding: the Holm-corrected p-value is below its alpha when the comparison
    went through :func:`holm`, else the interval excludes 0."""
    if cmp.get("clusters", cmp["episodes"]) < MIN_EPISODES:
        return "too few episodes"
    if "p_holm" in cmp:
        found = cmp["p_holm"] < cmp.get("holm_alpha", ALPHA)
    else:
        found = cmp["ci_low"] > 0 or cmp["ci_high"] < 0
    if not found:
        return "no difference shown"
    return "higher" if cmp["diff"] > 0 else "lower"
