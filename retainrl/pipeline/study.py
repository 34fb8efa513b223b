"""The study's metrics, computed the same way for every family, with rliable's intervals.

Every family's ``results.evaluate`` reduces its own scoring to the same per-seed curves
(:class:`Curves`: CLOSE, FAR and the full task over fine-tuning) and hands them here. What comes
back carries the same names in every family's ``metrics.json`` (``study.<method>.<metric>``), so
``dvc metrics show`` compares families and methods side by side:

* ``forgetting``: FAR at the start of fine-tuning minus its minimum during it (the study's
  measure; biased upward by evaluation noise, which is why a frozen-π* row on the same schedule
  is its floor);
* ``close_final``, ``far_final``, ``full_final``: the last checkpoint;
* ``auc``: the full-task curve's area over the run, normalised by its length;
* ``forward_transfer``: (AUC − AUC_scratch) / (1 − AUC_scratch) for success rates in [0, 1] (the
  study's definition); for unbounded scores (NetHack, Montezuma's return) AUC − AUC_scratch;
* ``p_improvement``: P(a seed of the method beats a seed of ``finetune``) on the final full-task
  value (rliable's probability of improvement);
* ``claims``: the study's claims (:data:`CLAIMS`) tested on this family, each as a difference
  with its interval, a Holm-corrected p-value over the family's claims and a verdict: vanilla
  fine-tuning's (FAR change), and every retention method's (against ``finetune`` and ``scratch``).

Each value is the mean over seeds with a stratified-bootstrap 95% interval (rliable,
``get_interval_estimates``: runs resampled with replacement) and the IQM. Every method carries
every name; ``forward_transfer`` is null where it is undefined (no scratch run, or a scratch run
that already solves the task when scores are success rates).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from retainrl.pipeline.evaluation import auc
from retainrl.pipeline.stats import ALPHA, holm
from retainrl.retention.methods import BASELINE, REGISTRY

METRICS = ("forgetting", "close_final", "far_final", "full_final", "auc", "forward_transfer")
LEVEL = 0.95


@dataclass(frozen=True)
class Claim:
    """One of the study's findings (``PAPER_NOTES.md``, "Headline results") as a difference whose sign
    the study reports: ``metric`` of the method minus that of the run it is held ``against``
    ("baseline": vanilla fine-tuning; "scratch": the method that starts from a random init; None:
    frozen π*, the noise floor, or 0 without one), expected to have the sign ``direction``."""

    text: str
    metric: str
    against: str | None
    direction: int


#: The study's claims, tested in every family. "Forgets" is vanilla fine-tuning's forgetting (FAR at
#: the start minus its minimum: the dip the study reports, which may recover by the end) minus that
#: of frozen π* on the same schedule (the estimator's noise floor) where the family measures one,
#: else minus 0. The others hold each retention method (``REGISTRY[m].retains``) against vanilla
#: fine-tuning and against training from scratch: retention forgets less (both sides carry the
#: same noise bias), and retention + fine-tuning solves the whole task better than either (the
#: study's payoff).
CLAIMS = {
    "forgets": Claim("vanilla fine-tuning forgets: FAR dips during fine-tuning (forgetting − the frozen-π* floor's; − 0 "
                     "where the family has no floor)", "forgetting", None, +1),
    "forgets_less": Claim("{m} forgets less than vanilla fine-tuning (forgetting − finetune's)", "forgetting", "baseline", -1),
    "beats_finetune": Claim("{m} + fine-tuning beats vanilla fine-tuning on the full task (full-task final − finetune's)",
                            "full_final", "baseline", +1),
    "beats_scratch": Claim("{m} + fine-tuning beats training from scratch on the full task (full-task final − scratch's)",
                           "full_final", "scratch", +1),
}
MIN_SEEDS = 2  # a bootstrap over fewer runs per group has nothing to resample


@dataclass
class Curves:
    """One method's per-seed curves; checkpoint 0 is before the first update."""

    step: np.ndarray  # (K,) checkpoints of close/far
    close: np.ndarray  # (seeds, K) CLOSE success or score
    far: np.ndarray  # (seeds, K) FAR success or score
    full: np.ndarray  # (seeds, K') full-task success or return
    full_step: np.ndarray | None = None  # (K',) when the full task is scored on its own schedule

    def __post_init__(self):
        self.step = np.asarray(self.step, dtype=float)
        self.close, self.far, self.full = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (self.close, self.far, self.full))
        self.full_step = self.step if self.full_step is None else np.asarray(self.full_step, dtype=float)
        if self.close.shape != self.far.shape or self.close.shape[1] != len(self.step) or self.full.shape[1] != len(self.full_step):
            raise ValueError(f"curves: shapes do not match their steps (close {self.close.shape}, far {self.far.shape}, "
                             f"full {self.full.shape}, {len(self.step)} / {len(self.full_step)} steps)")


def forgetting(far: np.ndarray) -> np.ndarray:
    """The study's forgetting per seed: FAR at the start of fine-tuning minus its minimum during it."""
    far = np.atleast_2d(np.asarray(far, dtype=float))
    return far[:, 0] - far.min(axis=1)


def per_seed(curves: dict[str, Curves], *, bounded: bool) -> dict[str, dict[str, np.ndarray]]:
    """{method: {metric: (seeds,) values}}; forward transfer needs a method that starts from scratch."""
    scratch = [m for m in curves if not REGISTRY[m].starts_from_pretrained]
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, c in curves.items():
        values = {
            "forgetting": forgetting(c.far),
            "close_final": c.close[:, -1],
            "far_final": c.far[:, -1],
            "full_final": c.full[:, -1],
            "auc": auc(c.full, c.full_step),
        }
        values["forward_transfer"] = None  # without a scratch run on the same schedule it is undefined
        if scratch:
            ref = curves[scratch[0]]
            if not np.array_equal(ref.full_step, c.full_step):
                raise ValueError(f"{method}: full task scored at other steps than {scratch[0]}; forward transfer needs one schedule")
            a_s = float(auc(ref.full, ref.full_step).mean())
            gain = values["auc"] - a_s
            if not bounded:
                values["forward_transfer"] = gain
            elif 1.0 - a_s > 1e-6:  # scratch already solves the task: the study's ratio is undefined
                values["forward_transfer"] = gain / (1.0 - a_s)
        out[method] = values
    return out


@contextmanager
def _seeded_numpy(seed: int):
    """rliable 1.2's stratified bootstraps draw their resamples from numpy's *global* generator
    (``np.random.choice`` in ``update_indices``) and ignore the ``random_state`` they are given, so
    without this every run of a stage gave other intervals. Seed it for the call, then put the
    caller's global state back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _interval(x: np.ndarray, reps: int, seed: int) -> dict:
    from rliable import library as rly
    from rliable import metrics as rmetrics

    x = np.asarray(x, dtype=float).reshape(-1, 1)  # (runs, tasks = 1)
    funcs = [rmetrics.aggregate_mean, rmetrics.aggregate_iqm]  # IQM = the mean for < 4 runs (nothing to trim)
    with _seeded_numpy(seed):
        point, ci = rly.get_interval_estimates(
            {"m": x}, lambda s: np.array([f(s) for f in funcs]), reps=reps, confidence_interval_size=LEVEL,
            random_state=np.random.RandomState(seed),
        )
    return {"mean": float(point["m"][0]), "ci_low": float(ci["m"][0, 0]), "ci_high": float(ci["m"][1, 0]),
            "iqm": float(point["m"][1]), "seeds": int(len(x))}


def probability_of_improvement(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> dict:
    """P(X > Y) for a seed X of ``a`` and a seed Y of ``b`` (ties count half), with its interval."""
    from rliable import library as rly
    from rliable import metrics as rmetrics

    pair = {"a,b": (np.asarray(a, float).reshape(-1, 1), np.asarray(b, float).reshape(-1, 1))}
    with _seeded_numpy(seed):
        point, ci = rly.get_interval_estimates(pair, rmetrics.probability_of_improvement, reps=reps,
                                               confidence_interval_size=LEVEL, random_state=np.random.RandomState(seed))
    point, ci = np.ravel(point["a,b"]), np.ravel(ci["a,b"])
    return {"mean": float(point[0]), "ci_low": float(ci[0]), "ci_high": float(ci[-1])}


def difference(a: np.ndarray, b: np.ndarray | None, reps: int, seed: int) -> dict:
    """mean(a) − mean(b) (b None: mean(a)) with rliable's stratified bootstrap over runs, each
    group's seeds resampled on their own (independent training runs): the percentile ``LEVEL``
    interval and the two-sided bootstrap p-value of "no difference", (min tail + 1)/(reps + 1) × 2
    as in ``stats.paired_difference``; ``seeds``/``seeds_against``: the runs in each group."""
    from rliable import library as rly

    groups = [np.asarray(x, float).reshape(-1, 1) for x in (a, b) if x is not None]

    def stat(*g):
        return np.array([g[0].mean() - (g[1].mean() if len(g) > 1 else 0.0)])

    with _seeded_numpy(seed):
        d = rly.StratifiedBootstrap(*groups, random_state=np.random.RandomState(seed)).apply(stat, reps).ravel()
    tail = (1.0 - LEVEL) / 2
    p_value = min(1.0, 2 * (min(int((d <= 0).sum()), int((d >= 0).sum())) + 1) / (reps + 1))
    return {"diff": float(stat(*groups)[0]), "ci_low": float(np.quantile(d, tail)), "ci_high": float(np.quantile(d, 1 - tail)),
            "p_value": float(p_value), "seeds": int(len(groups[0])), "seeds_against": int(len(groups[-1]))}


def claim_verdict(c: dict) -> str:
    """*shown*: the difference is on the study's side, its interval excludes 0 and its Holm-corrected
    p-value (over the family's claims) is below ``stats.ALPHA``; *leaning*: on the study's side, not
    shown; *not shown*: not on the study's side (or too few seeds to say)."""
    if min(c["seeds"], c["seeds_against"]) < MIN_SEEDS:
        return "too few seeds"
    side = c["diff"] * c["direction"] > 0
    excludes = c["ci_low"] > 0 if c["direction"] > 0 else c["ci_high"] < 0
    if side and excludes and c["p_holm"] < ALPHA:
        return "shown"
    return "leaning" if side else "not shown"


def study_claims(values: dict[str, dict[str, np.ndarray]], floor: Curves | None, reps: int, seed: int) -> dict:
    """{method: {claim: {...}}} for every claim of :data:`CLAIMS` the family's methods allow, Holm-
    corrected together (one family's claims are one set of comparisons). ``floor``: frozen π*'s
    curves on the methods' schedule, where the family plays them."""
    scratch = next((m for m in values if not REGISTRY[m].starts_from_pretrained), None)
    floor_values = None if floor is None else forgetting(floor.far)
    tests: list[tuple[str, str, dict]] = []
    for key, claim in CLAIMS.items():
        if claim.against is None:
            if BASELINE in values:
                d = difference(values[BASELINE][claim.metric], floor_values, reps, seed)
                tests.append((BASELINE, key, {**d, "floor": floor is not None}))
            continue
        ref = BASELINE if claim.against == "baseline" else scratch
        if ref not in values:
            continue
        for m in values:
            if REGISTRY[m].retains:
                tests.append((m, key, difference(values[m][claim.metric], values[ref][claim.metric], reps, seed)))
    out: dict[str, dict] = {}
    for (m, key, d), corrected in zip(tests, holm([t[2] for t in tests])):
        claim = CLAIMS[key]
        c = {**corrected, "direction": claim.direction}
        out.setdefault(m, {})[key] = {**c, "verdict": claim_verdict(c)}
    return out


def frozen_row(floor: Curves, reps: int = 2000, seed: int = 0) -> dict:
    """Frozen π*'s row, the noise floor: π* itself scored on the methods' checkpoint schedule and
    evaluation episodes, so its forgetting is what evaluation noise alone makes of start − min.
    {forgetting, far_final, close_final, full_final}: each mean over seeds with its interval."""
    return {"forgetting": _interval(forgetting(floor.far), reps, seed), "far_final": _interval(floor.far[:, -1], reps, seed),
            "close_final": _interval(floor.close[:, -1], reps, seed), "full_final": _interval(floor.full[:, -1], reps, seed)}


def study_metrics(curves: dict[str, Curves], *, bounded: bool, floor: Curves | None = None, reps: int = 2000, seed: int = 0) -> dict:
    """{method: {metric: {mean, ci_low, ci_high, seeds[, iqm]}}} plus ``p_improvement`` over ``finetune``
    and the study's ``claims`` (:func:`study_claims`; ``floor``: frozen π*'s curves) where the method makes one."""
    values = per_seed(curves, bounded=bounded)
    claims = study_claims(values, floor, reps, seed)
    out: dict[str, dict] = {}
    for method, vals in values.items():
        out[method] = {k: None if v is None else _interval(v, reps, seed) for k, v in vals.items()}
        if method != BASELINE and BASELINE in values:
            out[method]["p_improvement"] = probability_of_improvement(vals["full_final"], values[BASELINE]["full_final"], reps, seed)
        if method in claims:
            out[method]["claims"] = claims[method]
    return out


CLAIMS_NOTE = ("Each row: a claim of the study with the sign it found, our difference of seed means with "
               "rliable's stratified-bootstrap 95% interval (each method's seeds resampled on their own), the "
               "bootstrap p-value Holm-corrected over this family's claims, and the verdict: *shown* when the "
               "difference has the study's sign, its interval excludes 0 and p (Holm) < 0.05; *leaning* when it has "
               "the study's sign but is not shown; *not shown* otherwise.")


def claim_rows(study: dict) -> list[dict]:
    """The family's claims in :data:`CLAIMS` order (then the methods' order): what the report and
    the summary page print as "study vs ours"."""
    return [{"claim": key, "method": m, "text": CLAIMS[key].text.format(m=m), **stats["claims"][key]}
            for key in CLAIMS for m, stats in study.items() if key in (stats.get("claims") or {})]


def claims_table(study: dict, digits: int = 2) -> list[str]:
    """Markdown: the study's claim and direction, our difference [95% interval], p (Holm), verdict."""
    lines = ["| the study's claim | study's sign | ours [95% interval] | p (Holm) | verdict |", "|---|---|---|---|---|"]
    for r in claim_rows(study):
        lines.append(f"| {r['text']} | {'+' if r['direction'] > 0 else '−'} | {r['diff']:+.{digits}f} "
                     f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}] | {r['p_holm']:.3f} | {r['verdict']} |")
    return lines


def verdict(stat: dict, direction: int = 1) -> str:
    """*shown* when the interval excludes 0 in the study's direction (+1: above, −1: below),
    *leaning* when the point estimate is on that side but the interval covers 0, else *not shown*."""
    lo, hi, mid = stat["ci_low"], stat["ci_high"], stat.get("mean", stat.get("diff"))
    if (direction > 0 and lo > 0) or (direction < 0 and hi < 0):
        return "shown"
    if mid * direction > 0:
        return "leaning"
    return "not shown"


def curve_rows(curves: dict[str, Curves], part: str) -> list[dict]:
    """Wide rows {step, <method>: mean over seeds, <method>_std} for ``dvc plots`` (same steps for all)."""
    first = next(iter(curves.values()))
    steps = first.full_step if part == "full" else first.step
    rows = [{"step": float(s) if not float(s).is_integer() else int(s)} for s in steps]
    for method, c in curves.items():
        arr = getattr(c, part)
        if arr.shape[1] != len(rows):
            raise ValueError(f"{method}: {part} evaluated at different steps from the other methods")
        for j, row in enumerate(rows):
            row[method] = float(arr[:, j].mean())
            row[f"{method}_std"] = float(arr[:, j].std())
    return rows


def table(study: dict, unit: str) -> list[str]:
    """Markdown rows of the study metrics (mean [95% interval]) for a report."""
    head = ["method", "forgetting (FAR)", "CLOSE final", "FAR final", f"full task final ({unit})", "AUC", "forward transfer",
            "P(> finetune)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def cell(s: dict | None) -> str:
        return "–" if s is None else f"{s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"

    for method, m in study.items():
        cells = [cell(m.get(k)) for k in METRICS] + [cell(m.get("p_improvement"))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines
