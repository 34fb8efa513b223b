"""The NetHack report's committed probes: the coefficient rule, the control's reading, and that
params.yaml's L2/EWC coefficients are what the rule picks from the committed sweep."""

import json
from pathlib import Path

import pytest

from retainrl.families.nethack import probes

ROOT = Path(__file__).resolve().parents[1]


def cmp(part, metric, a, b, diff, lo, hi, verdict, question="sweep"):
    return {"part": part, "metric": metric, "a": a, "b": b, "diff": diff, "ci_low": lo, "ci_high": hi, "p_holm": 0.01,
            "verdict": verdict, "question": question}


def pol(kl, close, far):
    return {"close_kl_pi_star": {"mean": kl}, "close_score_gain": {"mean": close}, "far_score_gain": {"mean": far}}


def sweep(close_vs_pi, close_vs_ft):
    variants = ["l2:retention.l2.coef=1.0", "l2:retention.l2.coef=0.3", "l2:retention.l2.coef=0.1",
                "ewc:retention.ewc.coef=1e4", "finetune:finetune.far_share=0.25"]
    policies = {"pretrained": pol(0, 30, 100), "finetune": pol(0.8, 18, 80), "ks": pol(0.04, 30, 104),
                variants[0]: pol(0.005, 30, 110), variants[1]: pol(0.03, 29, 100), variants[2]: pol(0.2, 25, 70),
                variants[3]: pol(1e-6, 30, 100), variants[4]: pol(0.5, 20, 90)}
    c = [cmp("far", "score_gain", variants[0], "pretrained", 10, -5, 25, "no difference shown"),
         cmp("far", "score_gain", variants[1], "pretrained", 0, -15, 15, "no difference shown"),
         cmp("far", "score_gain", variants[2], "pretrained", -30, -50, -10, "lower"),  # moves like KS? no: loses FAR
         cmp("far", "score_gain", variants[3], "pretrained", 0, -10, 10, "no difference shown"),
         cmp("close", "score_gain", variants[4], "pretrained", *close_vs_pi, question="control"),
         cmp("close", "score_gain", variants[4], "finetune", *close_vs_ft, question="control"),
         cmp("far", "score_gain", variants[4], "pretrained", 0, -20, 20, "no difference shown", question="control"),
         cmp("far", "score_gain", variants[4], "finetune", 10, -10, 30, "no difference shown", question="control")]
    return {"seeds": 2, "variants": variants, "policies": policies, "comparisons": c,
            "protocol": {"env_steps": 30000, "epochs": 16}}


def test_choose_takes_the_coefficient_that_moves_like_ks_and_keeps_far():
    s = sweep((-10, -15, -5, "lower"), (2, -3, 7, "no difference shown"))
    assert probes.choose(s, "l2")["coef"] == 0.3  # 1.0 freezes (KL 8× below KS's), 0.1 loses FAR
    assert probes.choose(s, "ewc") is None  # its only value freezes: reported as "none does both"
    assert probes.choose({**s, "policies": {k: v for k, v in s["policies"].items() if k != "ks"}}, "l2") is None
    m = probes.metrics(s)
    assert m["sweep"]["l2"]["chosen_coef"] == 0.3 and m["sweep"]["ewc"]["chosen_coef"] is None
    assert m["sweep"]["l2"]["0.1"]["far_score"] == 70


@pytest.mark.parametrize("close_vs_pi, close_vs_ft, reading", [
    ((-10, -15, -5, "lower"), (2, -3, 7, "no difference shown"), "optimisation damage"),
    ((-1, -6, 4, "no difference shown"), (9, 4, 14, "higher"), "forgetting"),
    ((-4, -9, 1, "no difference shown"), (5, -1, 11, "no difference shown"), "not decided"),
])
def test_the_control_reads_damage_forgetting_or_not_decided(close_vs_pi, close_vs_ft, reading):
    ctl = probes.control(sweep(close_vs_pi, close_vs_ft))
    assert ctl["reading"] == reading and ctl["far_share"] == 0.25
    assert probes.metrics(sweep(close_vs_pi, close_vs_ft))["control"]["reading"] == reading


def test_the_report_sections_name_the_pick_and_the_reading(tmp_path):
    from retainrl.pipeline.report import Report, render

    text = render(Report("t", probes.sections(sweep((-10, -15, -5, "lower"), (2, -3, 7, "no difference shown")),
                                              {"l2": 1.0, "ewc": 2e6})), tmp_path)
    assert "l2: coef 0.3" in text and "ewc: no swept coefficient" in text and "**optimisation damage**" in text
    assert "l2 (coef 0.1)" in text


def test_provenance_says_when_the_sweep_did_not_run_on_the_dags_pi_star_or_protocol(tmp_path):
    """A pick holds for the π* and budget it was swept on; the report must say when either differs."""
    from retainrl.core.config import load_params
    from retainrl.pipeline.report import Report, render

    p = load_params(str(ROOT / "params.yaml"), only="nethack").section("nethack")
    ckpt = tmp_path / "pretrained" / "checkpoint_p0"
    ckpt.mkdir(parents=True)
    (ckpt / "a.pth").write_bytes(b"pi*")
    md5 = probes.pi_star_md5(tmp_path / "pretrained")
    proto = {k: getattr(getattr(p, sec), key) for k, (sec, key) in probes.PROTOCOL.items()}
    s = {**sweep((-10, -15, -5, "lower"), (2, -3, 7, "no difference shown")), "protocol": proto, "pi_star_md5": md5}
    assert probes.provenance(s, p, md5)["matches_dag"]
    other = probes.provenance({**s, "protocol": {**proto, "env_steps": proto["env_steps"] + 1}}, p, md5)
    assert not other["matches_dag"] and other["same_pi_star"] and list(other["protocol_differs"]) == ["env_steps"]
    (ckpt / "a.pth").write_bytes(b"another pi*")
    moved = probes.provenance(s, p, probes.pi_star_md5(tmp_path / "pretrained"))
    assert not moved["matches_dag"] and not moved["same_pi_star"] and moved["same_protocol"]
    assert not probes.provenance({k: v for k, v in s.items() if k != "pi_star_md5"}, p, md5)["same_pi_star"]
    text = render(Report("t", probes.sections(s, {"l2": 0.3, "ewc": 1.0}, other)), tmp_path)
    assert "**The sweep did not run on this DAG**" in text and f"env_steps {proto['env_steps'] + 1}" in text
    assert probes.metrics(s, moved)["sweep"]["same_pi_star"] is False


def test_the_committed_report_says_its_sweep_ran_on_the_dags_pi_star_and_protocol():
    """The report stage checks the sweep's π* md5 and protocol against the DAG's (it has π* as a
    dep); the committed metrics must say they match, or params.yaml's picks rest on another π*."""
    m = json.loads((ROOT / probes.METRICS_FILE).read_text())
    assert m["sweep"]["matches_dag"] is True, m["sweep"]


def test_params_yaml_coefficients_are_the_committed_sweeps_choice():
    from retainrl.core.config import load_params

    s = json.loads((ROOT / probes.SWEEP_FILE).read_text())
    p = load_params(str(ROOT / "params.yaml"), only="nethack").section("nethack")
    for method in ("l2", "ewc"):
        pick = probes.choose(s, method)
        assert pick is not None, f"the committed sweep has no {method} coefficient that moves like KS and keeps FAR"
        assert getattr(p.retention, method).coef == pick["coef"], method


def test_the_docs_results_block_is_what_the_committed_files_give(root):
    """docs/nethack.md's findings are generated from the committed metrics, sweep and DAG minutes:
    a rerun that changes a number fails here until ``python -m retainrl.families.nethack.digest``
    rewrites the block."""
    from retainrl.families.nethack import digest
    from retainrl.pipeline.docblocks import read_block

    assert read_block(root / digest.DOCS, digest.BEGIN, digest.END) == digest.block(root).strip()


def test_the_digest_calls_a_comparison_shown_only_after_holm():
    """Shown = the Holm-corrected verdict; an interval that excludes 0 alone is said to be less."""
    from retainrl.families.nethack.digest import _finding

    base = {"diff": -5.0, "ci_low": -9.0, "ci_high": -1.0}
    assert _finding({**base, "verdict": "lower"}) == "shown after Holm"
    assert _finding({**base, "verdict": "no difference shown"}).startswith("its interval excludes 0")
    assert _finding({**base, "ci_high": 2.0, "verdict": "no difference shown"}) == "not shown"
