"""The shared study metrics: per-seed values from known curves, rliable intervals, verdicts."""

import numpy as np
import pytest

from retainrl.pipeline.evaluation import auc
from retainrl.pipeline.study import Curves, per_seed, probability_of_improvement, study_metrics, verdict


def curves(far, full, close=None, steps=(0, 1, 2)):
    far, full = np.asarray(far, float), np.asarray(full, float)
    return Curves(step=np.asarray(steps), close=far if close is None else close, far=far, full=full)


def test_per_seed_values_follow_the_study_definitions():
    c = {
        "finetune": curves([[1.0, 0.2, 0.6], [1.0, 0.4, 0.4]], [[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]),
        "scratch": curves([[0.0, 0.0, 0.0]] * 2, [[0.0, 0.0, 0.5]] * 2),
    }
    v = per_seed(c, bounded=True)
    np.testing.assert_allclose(v["finetune"]["forgetting"], [0.8, 0.6])  # start − min
    np.testing.assert_allclose(v["finetune"]["far_final"], [0.6, 0.4])
    np.testing.assert_allclose(v["finetune"]["auc"], [0.5, 0.5])  # trapezoid of 0, .5, 1 over [0, 2] / 2
    a_s = 0.125  # scratch: 0, 0, .5
    np.testing.assert_allclose(v["finetune"]["forward_transfer"], [(0.5 - a_s) / (1 - a_s)] * 2)
    assert v["scratch"]["forward_transfer"] == pytest.approx([0.0, 0.0])
    unbounded = per_seed(c, bounded=False)
    np.testing.assert_allclose(unbounded["finetune"]["forward_transfer"], [0.5 - a_s] * 2)
    np.testing.assert_allclose(auc(np.array([[2.0, 2.0]]), np.array([0, 10])), [2.0])


def test_intervals_and_probability_of_improvement():
    rng = np.random.default_rng(0)
    high = curves(rng.uniform(0.6, 0.9, (6, 3)), rng.uniform(0.7, 0.9, (6, 3)))
    low = curves(rng.uniform(0.6, 0.9, (6, 3)), rng.uniform(0.0, 0.2, (6, 3)))
    out = study_metrics({"finetune": low, "ks": high}, bounded=True, reps=500)
    for method in out:
        assert out[method]["forward_transfer"] is None  # no scratch run here
        for stat in filter(None, (v for k, v in out[method].items() if k != "claims")):
            assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
    assert out["ks"]["full_final"]["seeds"] == 6 and "iqm" in out["ks"]["full_final"]
    assert out["ks"]["p_improvement"]["mean"] == pytest.approx(1.0)  # every ks seed beats every finetune seed
    assert "p_improvement" not in out["finetune"]
    assert probability_of_improvement([1, 2], [1, 2], reps=200, seed=0)["mean"] == pytest.approx(0.5)  # ties count half
    with pytest.raises(ValueError, match="shapes"):
        Curves(step=[0, 1], close=[[0, 1]], far=[[0, 1, 2]], full=[[0, 1]])


def test_verdicts():
    assert verdict({"mean": 1.0, "ci_low": 0.1, "ci_high": 2.0}) == "shown"
    assert verdict({"mean": 1.0, "ci_low": -0.1, "ci_high": 2.0}) == "leaning"
    assert verdict({"mean": -1.0, "ci_low": -2.0, "ci_high": 0.5}) == "not shown"
    assert verdict({"mean": -1.0, "ci_low": -2.0, "ci_high": -0.5}, direction=-1) == "shown"


def test_every_method_carries_every_metric_name():
    """Without a scratch run forward transfer is null, not missing; a scratch run on another
    schedule is an error, not a silently wrong number."""
    c = {"finetune": curves([[1.0, 0.5, 0.5]], [[0.0, 0.5, 1.0]]), "ks": curves([[1.0, 1.0, 1.0]], [[0.0, 1.0, 1.0]])}
    out = study_metrics(c, bounded=True, reps=100)
    assert out["ks"]["forward_transfer"] is None and set(out["ks"]) >= {"forgetting", "auc", "full_final", "p_improvement"}
    c["scratch"] = Curves(step=[0, 2], close=[[0, 0]], far=[[0, 0]], full=[[0, 1]])
    with pytest.raises(ValueError, match="forward transfer needs one schedule"):
        per_seed(c, bounded=True)
    solved = {"finetune": c["finetune"], "scratch": curves([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]])}
    assert per_seed(solved, bounded=True)["finetune"]["forward_transfer"] is None  # scratch AUC 1: ratio undefined


def test_intervals_are_reproducible_in_and_across_processes():
    """rliable 1.2 resamples with numpy's global generator whatever random_state it is given:
    the study seeds it per call, so the same stage gives the same metrics.json every time, and the
    caller's global numpy state is left as it was."""
    import json
    import subprocess
    import sys

    code = ("import json, numpy as np\nfrom retainrl.pipeline.study import Curves, study_metrics\n"
            "r = np.random.default_rng(7)\n"
            "c = {m: Curves(step=np.arange(6.0), close=r.random((5, 6)), far=r.random((5, 6)), full=r.random((5, 6))) "
            "for m in ('scratch', 'finetune', 'bc')}\n"
            "print(json.dumps([study_metrics(c, bounded=True, reps=500) for _ in range(2)]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]
    assert runs[0][0] == runs[0][1] == runs[1][0] == runs[1][1]
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    study_metrics({"finetune": Curves(step=np.arange(3.0), close=np.ones((3, 3)), far=np.ones((3, 3)), full=np.ones((3, 3)))},
                  bounded=True, reps=50)
    assert np.random.random() == expected


def _run(far_start, far_end, full_end, seeds=5, noise=0.02, seed=0):
    """Curves of one method whose FAR goes from far_start to far_end and whose full task ends at full_end."""
    r = np.random.default_rng(seed)
    far = np.stack([np.full(seeds, far_start), np.full(seeds, (far_start + far_end) / 2), far_end + r.normal(0, noise, seeds)], 1)
    full = np.stack([np.zeros(seeds), np.full(seeds, full_end / 2), full_end + r.normal(0, noise, seeds)], 1)
    return Curves(step=np.arange(3), close=far, far=far, full=full)


def test_the_study_claims_are_differences_with_holm_corrected_verdicts():
    """FT's FAR dip above the frozen floor, a retention method that forgets less and ends above FT
    and scratch: *shown*; a method level with FT: not shown; scratch makes no claim; Holm corrects
    over the family's claims."""
    from retainrl.pipeline.study import CLAIMS, claim_rows, per_seed

    def dip(depth, full_end, seed):  # FAR 1 → 1 − depth → back to 1; full task ends at full_end
        r = np.random.default_rng(seed)
        far = np.stack([np.ones(5), 1 - depth + r.normal(0, 0.02, 5), np.ones(5)], 1)
        full = np.stack([np.zeros(5), np.full(5, full_end / 2), full_end + r.normal(0, 0.02, 5)], 1)
        return Curves(step=np.arange(3), close=far, far=far, full=full)

    c = {"finetune": dip(0.6, 0.5, 1), "bc": dip(0.05, 0.9, 2), "l2": dip(0.6, 0.5, 3), "scratch": _run(0.0, 0.0, 0.1, seed=4)}
    floor = dip(0.05, 0.5, 5)
    out = study_metrics(c, bounded=True, floor=floor, reps=1000)
    assert "claims" not in out["scratch"] and set(out["finetune"]["claims"]) == {"forgets"}
    assert set(out["bc"]["claims"]) == set(CLAIMS) - {"forgets"}
    v, fl = per_seed(c, bounded=True), floor.far[:, 0] - floor.far.min(axis=1)
    forgets = out["finetune"]["claims"]["forgets"]
    assert forgets["diff"] == pytest.approx(v["finetune"]["forgetting"].mean() - fl.mean()) and forgets["floor"]
    assert forgets["verdict"] == "shown"  # a transient dip counts: FAR is back at 1 by the end
    bc = out["bc"]["claims"]
    assert bc["beats_finetune"]["diff"] == pytest.approx(c["bc"].full[:, -1].mean() - c["finetune"].full[:, -1].mean())
    assert {k: v["verdict"] for k, v in bc.items()} == {"forgets_less": "shown", "beats_finetune": "shown", "beats_scratch": "shown"}
    level = out["l2"]["claims"]["beats_finetune"]
    assert level["ci_low"] < 0 < level["ci_high"] and level["verdict"] in ("leaning", "not shown")
    rows = claim_rows(out)
    assert len(rows) == 7 and all(r["holm_m"] == 7 and r["p_holm"] >= r["p_value"] for r in rows)
    assert [r["claim"] for r in rows] == ["forgets", "forgets_less", "forgets_less", "beats_finetune", "beats_finetune",
                                          "beats_scratch", "beats_scratch"]
    no_floor = study_metrics(c, bounded=True, reps=1000)["finetune"]["claims"]["forgets"]
    assert no_floor["diff"] == pytest.approx(v["finetune"]["forgetting"].mean()) and not no_floor["floor"]


def test_claim_verdicts_need_the_sign_the_interval_and_the_correction():
    from retainrl.pipeline.study import claim_verdict

    base = {"diff": 1.0, "ci_low": 0.2, "ci_high": 2.0, "p_holm": 0.01, "direction": 1, "seeds": 5, "seeds_against": 5}
    assert claim_verdict(base) == "shown"
    assert claim_verdict({**base, "p_holm": 0.2}) == "leaning"  # the raw interval excludes 0, the correction does not
    assert claim_verdict({**base, "ci_low": -0.1}) == "leaning"
    assert claim_verdict({**base, "direction": -1}) == "not shown"
    assert claim_verdict({**base, "diff": -1.0, "ci_low": -2.0, "ci_high": -0.2, "direction": -1}) == "shown"
    assert claim_verdict({**base, "seeds_against": 1}) == "too few seeds"
