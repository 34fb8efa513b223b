"""Paired comparisons of two policies evaluated on the same episodes, with bootstrap intervals.

Why: "KS ends above π*" is a claim about a difference of two noisy means. When every policy
plays the *same* games (same game seeds, same sampling seed), the per-game difference removes
the game-to-game variance, which in NetHack is most of it (one game's score can be ten times
another's). What is left is the episode noise of the difference and the seed-to-seed spread of
training. The interval below resamples both: the games (paired: one set of game indices for
both policies per replicate) and, independently, each policy's training seeds.
"""

from __future__ import annotations

import numpy as np


def paired_difference(a, b, *, clusters=None, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> dict:
    """mean(a) − mean(b) with a bootstrap ``level`` interval; a, b: (seeds, episodes) on the same episodes.

    ``clusters`` (one id per episode) makes the bootstrap resample clusters, not episodes: episodes
    that start from the same state are not independent draws, and resampling them one by one
    would make the interval too narrow. Returns ``diff``, ``ci_low``/``ci_high``, ``p_above``
    (share of replicates with a > b) and the sizes (``clusters``: how many distinct units were
    resampled). A policy evaluated once (π*) is a (1, episodes) array: its seed axis does not resample.
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"paired_difference: both policies need the same (non-zero) number of episodes, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    n_ep = a.shape[1]
    ids = np.arange(n_ep) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    if len(ids) != n_ep:
        raise ValueError(f"paired_difference: {len(ids)} cluster ids for {n_ep} episodes")
    n_cl = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=n_cl).astype(float)
    picks = rng.integers(0, n_cl, (n_boot, n_cl))  # shared by a and b: the pairing

    def replicate_means(x: np.ndarray) -> np.ndarray:
        sums = np.stack([np.bincount(ids, weights=row, minlength=n_cl) for row in x])  # (seeds, clusters)
        per_seed = (sums[:, picks].sum(axis=2) / counts[picks].sum(axis=1)).T  # (n_boot, seeds)
        pick = rng.integers(0, x.shape[0], (n_boot, x.shape[0]))
        return np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)

    d = replicate_means(a) - replicate_means(b)
    tail = (1.0 - level) / 2
    return {
        "diff": float(a.mean() - b.mean()),
        "ci_low": float(np.quantile(d, tail)),
        "ci_high": float(np.quantile(d, 1 - tail)),
        "p_above": float((d > 0).mean()),
        "level": level,
        "episodes": int(n_ep),
        "clusters": n_cl,
        "seeds": [int(a.shape[0]), int(b.shape[0])],
    }


MIN_EPISODES = 5  # below this many independent units a bootstrap interval is not worth a verdict (smoke plays 1 game)


def verdict(cmp: dict) -> str:
    """'higher' / 'lower' when the interval excludes 0, else 'no difference shown' (or 'too few episodes')."""
    if cmp.get("clusters", cmp["episodes"]) < MIN_EPISODES:
        return "too few episodes"
    if cmp["ci_low"] > 0:
        return "higher"
    if cmp["ci_high"] < 0:
        return "lower"
    return "no difference shown"
