"""Paired bootstrap comparisons (retainrl/pipeline/stats.py) and NetHack's use of them in evaluate/report."""

from __future__ import annotations

import numpy as np
import pytest

from retainrl.pipeline.stats import holm, paired_difference, verdict

GAMES = np.random.default_rng(0).gamma(1.0, 300.0, size=30)  # NetHack-like: one game's score is 10× another's


def test_a_constant_shift_on_the_same_games_is_exact_despite_huge_game_variance():
    c = paired_difference(GAMES[None] + 5.0, GAMES[None])
    assert c["diff"] == pytest.approx(5.0)
    assert c["ci_low"] == pytest.approx(5.0) and c["ci_high"] == pytest.approx(5.0)
    assert c["p_above"] == 1.0 and verdict(c) == "higher"


def test_identical_policies_show_no_difference():
    c = paired_difference(GAMES[None], GAMES[None])
    assert c["diff"] == 0.0 and c["ci_low"] == 0.0 == c["ci_high"]
    assert verdict(c) == "no difference shown"


def test_pairing_matters_unpaired_games_give_a_wide_interval():
    other = np.random.default_rng(1).permutation(GAMES)  # same scores, other games: no pairing
    c = paired_difference(GAMES[None] + 5.0, other[None])
    assert c["ci_high"] - c["ci_low"] > 50  # the game variance is back
    assert verdict(c) == "no difference shown"


def test_seed_spread_widens_the_interval_and_can_flip_the_verdict():
    tight = np.stack([GAMES + 20.0] * 3)
    spread = np.stack([GAMES + 20.0 + off for off in (-60.0, 0.0, 60.0)])  # same mean, training seeds disagree
    a, b = paired_difference(tight, GAMES[None]), paired_difference(spread, GAMES[None])
    assert a["diff"] == pytest.approx(b["diff"]) == pytest.approx(20.0)
    assert verdict(a) == "higher" and verdict(b) == "no difference shown"
    assert b["ci_high"] - b["ci_low"] > 50
    assert paired_difference(spread, GAMES[None]) == b  # seeded: the same interval every run


def test_a_handful_of_games_gets_no_verdict():
    c = paired_difference(GAMES[None, :1] + 5.0, GAMES[None, :1])
    assert c["ci_low"] == 5.0 and verdict(c) == "too few episodes"


def test_lower_and_bad_shapes():
    assert verdict(paired_difference(GAMES[None] - 3.0, GAMES[None])) == "lower"
    with pytest.raises(ValueError, match="same .*number of episodes"):
        paired_difference(np.ones((2, 30)), np.ones((1, 29)))


def test_nethack_compares_each_policys_final_snapshot_on_the_same_games():
    from retainrl.families.nethack.results import compare_policies, final_episodes

    rows = []
    for e, g in enumerate(GAMES[:10]):
        for part in ("close", "far"):
            rows.append({"policy": "pretrained", "seed": None, "step": 0, "part": part, "episode": e, "score_gain": g, "kl_pi_star": 0.0})
            for k in range(2):
                rows.append({"policy": "finetune", "seed": k, "step": 100, "part": part, "episode": e, "score_gain": 0.0, "kl_pi_star": 9.0})  # earlier snapshot
                rows.append({"policy": "finetune", "seed": k, "step": 200, "part": part, "episode": e, "score_gain": g - 10, "kl_pi_star": 0.5 + 0.01 * e})
                rows.append({"policy": "ks", "seed": k, "step": 200, "part": part, "episode": e, "score_gain": g + 10, "kl_pi_star": 0.1 + 0.01 * e})
    assert final_episodes(rows, "pretrained", "close").shape == (1, 10)
    np.testing.assert_allclose(final_episodes(rows, "finetune", "far"), np.stack([GAMES[:10] - 10] * 2))
    got = {(c["part"], c["metric"], c["a"], c["b"]): c for c in compare_policies(rows, ["finetune", "ks"])}
    assert set(got) == {(p, "score_gain", a, b) for p in ("close", "far") for a, b in (("finetune", "pretrained"), ("ks", "pretrained"), ("ks", "finetune"))} | {
        (p, "kl_pi_star", "ks", "finetune") for p in ("close", "far")}
    assert got[("close", "score_gain", "ks", "finetune")]["diff"] == pytest.approx(20.0) and verdict(got[("close", "score_gain", "ks", "finetune")]) == "higher"
    kl = got[("far", "kl_pi_star", "ks", "finetune")]  # KS stays closer to π*: a paired difference of −0.4 on every game
    assert kl["diff"] == pytest.approx(-0.4) and verdict(kl) == "lower"
    assert verdict(got[("far", "score_gain", "finetune", "pretrained")]) == "lower"


def test_clustered_bootstrap_widens_the_interval_when_episodes_share_starts():
    """100 FAR episodes from 50 starts (episode e from start e % 50) are 50 independent units:
    resampling episodes one by one would understate the interval by about √2."""
    rng = np.random.default_rng(0)
    per_start = rng.normal(0, 1, (1, 50))
    a = np.tile(per_start, 2) + rng.normal(0, 0.05, (1, 100))
    b = np.zeros((1, 100))
    naive = paired_difference(a, b)
    clustered = paired_difference(a, b, clusters=np.arange(100) % 50)
    assert clustered["diff"] == naive["diff"] and clustered["clusters"] == 50 and naive["clusters"] == 100
    ratio = (clustered["ci_high"] - clustered["ci_low"]) / (naive["ci_high"] - naive["ci_low"])
    assert 1.2 < ratio < 1.7
    with pytest.raises(ValueError, match="cluster ids"):
        paired_difference(a, b, clusters=np.arange(10))
    assert verdict({**clustered, "clusters": 3}) == "too few episodes"


def test_holm_adjusts_known_p_values_and_keeps_the_input():
    comps = [{"p_value": p} for p in (0.01, 0.04, 0.03, 0.005)]
    got = holm(comps)
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → 0.06 (monotone)
    assert [c["p_holm"] for c in got] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert all(c["holm_m"] == 4 for c in got) and "p_holm" not in comps[0]


def test_bootstrap_p_value_is_two_sided_and_never_zero():
    clear = paired_difference(GAMES[None] + 5.0, GAMES[None], n_boot=999)
    assert clear["p_value"] == pytest.approx(2 / 1000)
    assert paired_difference(GAMES[None] - 5.0, GAMES[None], n_boot=999)["p_value"] == pytest.approx(2 / 1000)
    assert paired_difference(GAMES[None], GAMES[None])["p_value"] == 1.0


def test_holm_holds_the_family_wise_error_rate_where_raw_intervals_do_not():
    """Ten comparisons of policies that do not differ, 100 times over: raw 95% intervals call some
    difference in a large share of the reports, Holm's correction in about 5% at most."""
    rng = np.random.default_rng(1)
    raw = corrected = 0
    for rep in range(100):
        comps = [paired_difference(rng.normal(0, 1, (1, 30)), rng.normal(0, 1, (1, 30)), n_boot=500, seed=rep)
                 for _ in range(10)]
        raw += any(verdict(c) != "no difference shown" for c in comps)
        corrected += any(verdict(c) != "no difference shown" for c in holm(comps))
    assert raw >= 25 and corrected <= 12, (raw, corrected)


def test_a_raw_finding_can_fail_the_correction():
    rng = np.random.default_rng(8)
    a = rng.normal(0.45, 1, (1, 60))
    c = paired_difference(a, np.zeros((1, 60)))
    assert verdict(c) == "higher" and 0.005 < c["p_value"] < 0.05  # a modest effect: found alone
    nulls = [paired_difference(rng.normal(0, 1, (1, 60)), np.zeros((1, 60)), seed=k) for k in range(9)]
    assert verdict(holm([c, *nulls])[0]) == "no difference shown"  # not among ten
