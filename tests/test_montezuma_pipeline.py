"""Every Montezuma stage end to end at toy scale: collect_demos (recorded route) → pretrain →
far_buffer → fisher → finetune (each retention method) → evaluate → report."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ale_py")

from retainrl.families.montezuma import results as mz_results
from retainrl.families.montezuma import stages as mz
from retainrl.pipeline import generic
from retainrl.core.paths import Paths
from test_montezuma_search import _fixture_result  # tests/ is on sys.path (rootdir-relative imports)


def test_all_stages_tiny(tmp_path, monkeypatch):
    _fixture_result(monkeypatch)
    methods = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
    p = mz.parse_params(
        {
            "route": {"far_boundary": 2},
            "search": {"sticky_checks": 0},
            "pretrain": {"steps": 5, "rnd_steps": 3, "batch_size": 8, "hidden": 32},
            "far_buffer": {"size": 24, "rollout_steps": 12},
            "fisher": {"states": 4},
            "finetune": {
                "methods": methods, "seeds": 2, "updates": 2, "envs": 2, "steps": 8, "epochs": 1, "minibatches": 2,
                "eval_every": 1, "eval_episodes": 2, "eval_close_episodes": 1, "eval_max_steps": 8,
            },
        }
    )
    paths = Paths("montezuma", root=tmp_path)
    from retainrl.retention.methods import KS

    ks_steps = []
    orig = KS.aux_loss
    monkeypatch.setattr(KS, "aux_loss", lambda self, pol, online, step: ks_steps.append(step) or orig(self, pol, online, step))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mz.collect_demos(p, paths)
        mz.pretrain(p, paths)
        generic.stage(mz, "far_buffer")(p, paths)
        generic.stage(mz, "fisher")(p, paths)
        pretrained = {k: v.clone() for k, v in mz.load_pretrained(p, paths).state_dict().items()}
        for m in methods:
            generic.stage(mz, "finetune")(p, paths, "cpu", m)
        mz_results.evaluate(p, paths, "cpu")
        mz_results.report(p, paths)
    finally:
        torch.set_num_threads(threads)
    # KS decays once per actor gradient update: 2 updates × 1 epoch × 2 minibatches per seed, 2 seeds
    assert ks_steps == [0, 1, 2, 3] * 2
    curves = json.loads((paths.finetune("bc") / "curves.json").read_text())["runs"]
    assert [r["seed"] for r in curves] == [0, 1]
    assert curves[0]["frames"] == [64, 128] and len(curves[0]["eval"]) == 3 and len(curves[0]["rooms_visited"]) == 2
    assert all(0 <= e["far_success"] <= 1 and 0 <= e["boundary_success"] <= 1 for e in curves[0]["eval"])
    pi = json.loads((paths.pretrained / "scores.json").read_text())
    assert set(pi) >= {"boundary_success", "far_success", "close_success", "far_rooms"}
    summary = json.loads((paths.evaluation / "summary.json").read_text())
    assert set(summary["methods"]) == set(methods)
    bc = summary["methods"]["bc"]
    assert len(bc["boundary"]["min"]["per_seed"]) == 2 and bc["far"]["forgetting"]["mean"] >= 0
    metrics = json.loads((paths.evaluation / "metrics.json").read_text())
    assert "per_seed" not in json.dumps(metrics)
    rows = json.loads((paths.evaluation / "boundary_success.json").read_text())
    assert [r["step"] for r in rows] == [0, 64, 128] and {"bc", "bc_std", "scratch"} <= set(rows[0])
    for name in ("boundary_success.png", "far_success.png", "episode_return.png", "rooms_visited.png"):
        assert (paths.report / name).stat().st_size > 0
    assert "| ks |" in (paths.report / "report.md").read_text()
    # fine-tuning really changed the weights, and started from π* (not for scratch)
    from safetensors.torch import load_file

    ft = load_file(str(paths.finetune("finetune") / "policy_seed0.safetensors"))
    sc = load_file(str(paths.finetune("scratch") / "policy_seed0.safetensors"))
    w = "actor.weight"
    assert not torch.equal(ft[w], pretrained[w])
    assert (ft[w] - pretrained[w]).abs().max() < (sc[w] - pretrained[w]).abs().max()


def test_em_is_refused():
    with pytest.raises(mz.ConfigError, match=r"montezuma\.finetune\.methods.*off-policy"):
        mz.parse_params({"finetune": {"methods": ["finetune", "em"]}})
