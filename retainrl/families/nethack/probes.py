"""The committed NetHack probes that the report must carry: the retention-coefficient sweep and the
control for the 16-epoch setting (``experiments/nethack_retention_sweep.py`` writes them).

Why here and not in ``evaluate``: the sweep trains its own runs outside the DAG (it is how the
default coefficients were chosen, so it cannot depend on them), and its result is a committed
file. The report stage reads it (a DVC dep), so the report, its metrics and README always show
the sweep that is committed, and :func:`choose` is the one rule, applied to that file, by which
``params.yaml``'s coefficients are checked (``tests/test_nethack.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

SWEEP_FILE = Path("experiments/results/nethack_retention_sweep.json")
METRICS_FILE = Path("reports/nethack/probes.json")  # what `dvc metrics show` reads of it (the report stage writes it)
PI_STAR, BASE, KS = "pretrained", "finetune", "ks"
KL_FACTOR = 3.0  # "KL on the order of KS's": within this factor of KS's CLOSE KL, either way
# the sweep's protocol key → (params section, key) of the DAG it must match for its pick to apply
PROTOCOL = {"env_steps": ("finetune", "env_steps"), "epochs": ("finetune", "epochs"),
            "episodes": ("evaluate", "episodes"), "max_steps": ("evaluate", "max_steps"), "seed": ("evaluate", "seed")}


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """``METHOD[:K=V,...]`` → (method, {K: V})."""
    method, _, sets = spec.partition(":")
    return method, dict(s.split("=", 1) for s in sets.split(",") if s)


def label(spec: str) -> str:
    method, sets = parse(spec)
    if not sets:
        return f"{method} (DAG default)"
    return f"{method} (" + ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in sets.items()) + ")"


def find(cmps: list[dict], part: str, metric: str, a: str, b: str) -> dict | None:
    return next((c for c in cmps if (c["part"], c["metric"], c["a"], c["b"]) == (part, metric, a, b)), None)


def pi_star_md5(pretrained: Path) -> str:
    """π*'s fingerprint: md5 over its sample-factory checkpoint files in name order.

    Why: a coefficient picked by the sweep holds for the π* it ran from, and π* is not the same
    bits on another kind of CPU (docs/orchestration.md), so the sweep records it and the report
    checks it against the DAG's."""
    import hashlib

    ckpts = sorted((Path(pretrained) / "checkpoint_p0").glob("*.pth"))
    if not ckpts:
        raise FileNotFoundError(f"no π* checkpoint under {pretrained}/checkpoint_p0")
    return hashlib.md5(b"".join(f.read_bytes() for f in ckpts)).hexdigest()


def provenance(sweep: dict, p, pi_md5: str) -> dict:
    """Did the sweep run on this DAG's π* and protocol (``p``: the nethack params)? Its pick is
    evidence for the DAG's coefficients only if both match; a sweep without ``pi_star_md5``
    (older files) cannot say, which counts as not matching."""
    differs = {k: {"sweep": sweep["protocol"].get(k), "dag": getattr(getattr(p, sec), key)}
               for k, (sec, key) in PROTOCOL.items() if sweep["protocol"].get(k) != getattr(getattr(p, sec), key)}
    same_pi = sweep.get("pi_star_md5") == pi_md5
    return {"same_pi_star": same_pi, "same_protocol": not differs, "protocol_differs": differs,
            "matches_dag": same_pi and not differs}


def coefficient_rows(sweep: dict, method: str) -> list[dict]:
    """The sweep's variants of ``method`` that change its coefficient only, by coefficient:
    {spec, coef, close_kl, close_score, far_score, far_vs_pi_star (comparison), close_vs_pi_star}."""
    key = f"retention.{method}.coef"
    out = []
    for spec in sweep["variants"]:
        m, sets = parse(spec)
        if m != method or set(sets) != {key}:
            continue
        pol = sweep["policies"][spec]
        out.append({"spec": spec, "coef": float(sets[key]), "close_kl": pol["close_kl_pi_star"]["mean"],
                    "close_score": pol["close_score_gain"]["mean"], "far_score": pol["far_score_gain"]["mean"],
                    "far_vs_pi_star": find(sweep["comparisons"], "far", "score_gain", spec, PI_STAR),
                    "close_vs_pi_star": find(sweep["comparisons"], "close", "score_gain", spec, PI_STAR)})
    return sorted(out, key=lambda r: r["coef"])


def choose(sweep: dict, method: str) -> dict | None:
    """The rule for a default coefficient, from the sweep: among ``method``'s coefficients whose
    FAR score is not shown below π*'s (it keeps FAR: interval's upper end ≥ 0) and whose CLOSE KL
    is within ``KL_FACTOR`` of KS's (it moves on CLOSE as KS does, rather than freezing), the
    one whose KL is nearest KS's on a log scale. None when no coefficient does both."""
    ks = sweep["policies"].get(KS)
    if ks is None:
        return None
    target = ks["close_kl_pi_star"]["mean"]
    ok = [r for r in coefficient_rows(sweep, method)
          if r["far_vs_pi_star"] is not None and r["far_vs_pi_star"]["ci_high"] >= 0
          and r["close_kl"] > 0 and abs(math.log(r["close_kl"] / target)) <= math.log(KL_FACTOR)]
    return min(ok, key=lambda r: abs(math.log(r["close_kl"] / target))) if ok else None


def control(sweep: dict) -> dict | None:
    """The 16-epoch control: vanilla fine-tuning with a share of its training episodes started
    from FAR states (``finetune.far_share``), against π* and against vanilla fine-tuning.

    The issue's rule: if it still ends below π* on CLOSE (shown), the CLOSE drop of vanilla
    fine-tuning is damage done by the optimisation (16 SGD epochs per batch), not forgetting of
    states it stopped visiting; if it does not, the drop is forgetting. "Does not" needs evidence
    too: the control shown above vanilla fine-tuning on CLOSE. Neither shown: not decided."""
    spec = next((s for s in sweep["variants"] if parse(s)[0] == BASE and "finetune.far_share" in parse(s)[1]), None)
    if spec is None:
        return None
    c = {(part, b): find(sweep["comparisons"], part, "score_gain", spec, b) for part in ("close", "far") for b in (PI_STAR, BASE)}
    falls = c["close", PI_STAR]["verdict"] == "lower"
    kept = c["close", BASE]["verdict"] == "higher"
    reading = "optimisation damage" if falls else "forgetting" if kept else "not decided"
    return {"spec": spec, "far_share": float(parse(spec)[1]["finetune.far_share"]), "comparisons": c,
            "still_falls_on_close": falls, "reading": reading}


def metrics(sweep: dict | None, prov: dict | None = None) -> dict:
    """For ``dvc metrics show``: per swept coefficient its CLOSE KL / CLOSE score / FAR score, the
    chosen coefficient per method (None: none does both), the control's reading, and whether the
    sweep ran on the DAG's π* and protocol (``prov``: :func:`provenance`)."""
    if sweep is None:
        return {}
    out = {"sweep": {"seeds": sweep["seeds"], "ks_close_kl": sweep["policies"].get(KS, {}).get("close_kl_pi_star", {}).get("mean"),
                     **({} if prov is None else {k: prov[k] for k in ("matches_dag", "same_pi_star", "same_protocol")})}}
    for method in ("l2", "ewc"):
        rows = coefficient_rows(sweep, method)
        if rows:
            pick = choose(sweep, method)
            out["sweep"][method] = {"chosen_coef": None if pick is None else pick["coef"],
                                    **{f"{r['coef']:g}": {k: r[k] for k in ("close_kl", "close_score", "far_score")} for r in rows}}
    ctl = control(sweep)
    if ctl is not None:
        out["control"] = {"far_share": ctl["far_share"], "reading": ctl["reading"],
                          **{f"{part}_vs_{'pi_star' if b == PI_STAR else b}": {k: ctl["comparisons"][part, b][k] for k in ("diff", "ci_low", "ci_high", "p_holm")}
                             for part, b in ctl["comparisons"]}}
    return out


def provenance_sentence(prov: dict) -> str:
    if prov["matches_dag"]:
        return "The sweep ran from this DAG's π* (the same checkpoint md5) on its protocol, so its pick applies to it."
    why = ([] if prov["same_pi_star"] else ["from another π* (checkpoint md5 differs or was not recorded)"]) + [
        f"with {k} {v['sweep']} (the DAG: {v['dag']})" for k, v in prov["protocol_differs"].items()]
    return ("**The sweep did not run on this DAG**: " + "; ".join(why) + ". Its pick is no evidence for the DAG's "
            "coefficients until it is rerun (docs/nethack.md).")


def sections(sweep: dict | None, coefs: dict[str, float], prov: dict | None = None) -> list:
    """The report's sweep and control sections (``coefs``: the coefficients the DAG ran with;
    ``prov``: :func:`provenance` of the sweep against the DAG)."""
    from retainrl.pipeline.report import Section, Table

    if sweep is None:
        return [Section("Retention coefficients and the 16-epoch control", [
            f"`{SWEEP_FILE}` is missing: run `python experiments/nethack_retention_sweep.py` (see docs/nethack.md)."])]
    cmps = sweep["comparisons"]

    def cell(c, f=".1f"):
        return "–" if c is None else f"{c['diff']:+{f}} [{c['ci_low']:+{f}}, {c['ci_high']:+{f}}] {c['verdict']}"

    order = [n for n in sweep["policies"] if n != PI_STAR]
    rows = []
    for name in order:
        pol = sweep["policies"][name]
        rows.append([label(name), f"{pol['close_kl_pi_star']['mean']:.3f}", f"{pol['close_score_gain']['mean']:.1f}",
                     f"{pol['far_score_gain']['mean']:.1f}", cell(find(cmps, "close", "score_gain", name, PI_STAR)),
                     cell(find(cmps, "far", "score_gain", name, PI_STAR)), cell(find(cmps, "far", "score_gain", name, BASE)),
                     cell(find(cmps, "close", "kl_pi_star", name, BASE), ".3f")])
    pi = sweep["policies"][PI_STAR]
    picks = []
    for method in ("l2", "ewc"):
        if coefficient_rows(sweep, method):
            pick = choose(sweep, method)
            picks.append(f"{method}: " + ("no swept coefficient both moves like KS and keeps FAR" if pick is None
                                          else f"coef {pick['coef']:g} (CLOSE KL {pick['close_kl']:.3f})")
                         + f"; the DAG ran {method} with coef {coefs[method]:g}.")
    out = [Section("Retention that is not freezing: the coefficient sweep", [
        f"`python experiments/nethack_retention_sweep.py` (`{SWEEP_FILE}`): each variant is {sweep['seeds']} APPO runs "
        f"({sweep['protocol']['env_steps']:,} env steps, {sweep['protocol']['epochs']} epochs, the DAG's training seeds) "
        "from the DAG's own π*, FAR buffer and Fisher, evaluated on exactly this report's CLOSE games and held-out FAR starts "
        f"with the same sampling streams (π*: CLOSE {pi['close_score_gain']['mean']:.1f}, FAR {pi['far_score_gain']['mean']:.1f} "
        f"over the same {sweep['seeds']} sampling seeds). The DAG's vanilla fine-tuning and KS runs (their seeds "
        f"0–{sweep['seeds'] - 1}) play as references. Differences: paired bootstrap over episodes (FAR: start states) and "
        f"seeds, Holm-corrected over the sweep's {sum(c.get('question') == 'sweep' for c in cmps)} comparisons (the control's "
        f"{sum(c.get('question') == 'control' for c in cmps)} are a family of their own). Rule for a default (`retainrl/families/nethack/probes.py`, "
        f"`choose`): FAR not shown below π*, and CLOSE KL within {KL_FACTOR:g}× of KS's; of those, the KL nearest KS's."
        + ("" if prov is None else " " + provenance_sentence(prov)),
        Table(["policy", "CLOSE KL(π*‖π)", "CLOSE score", "FAR score gained", "CLOSE − π*", "FAR − π*", "FAR − finetune",
               "CLOSE KL − finetune"], rows),
        "Chosen: " + " ".join(picks)])]
    ctl = control(sweep)
    if ctl is not None:
        c = ctl["comparisons"]
        out.append(Section("The control for the 16-epoch setting", [
            f"Vanilla fine-tuning with {100 * ctl['far_share']:.0f}% of its training episodes started from the demos' FAR "
            f"start states (`finetune.far_share`), so FAR is in its training distribution: CLOSE − π* {cell(c['close', PI_STAR])}, "
            f"FAR − π* {cell(c['far', PI_STAR])}; against vanilla fine-tuning CLOSE {cell(c['close', BASE])}, FAR "
            f"{cell(c['far', BASE])}. Reading (the issue's rule: still shown below π* on CLOSE → vanilla fine-tuning's CLOSE drop "
            "is damage from the optimisation; shown above vanilla fine-tuning on CLOSE instead → it is forgetting; neither "
            f"→ not decided): **{ctl['reading']}**."]))
    return out
