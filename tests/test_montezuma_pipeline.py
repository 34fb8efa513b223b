"""Every Montezuma stage end to end at toy scale: collect_demos (recorded route) → pretrain →
far_buffer → fisher → finetune (each retention method) → evaluate → report."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ale_py")

from retainrl.envs import montezuma as mz
from retainrl.paths import Paths
from test_montezuma_search import _fixture_result  # tests/ is on sys.path (rootdir-relative imports)


def test_all_stages_tiny(tmp_path, monkeypatch):
    _fixture_result(monkeypatch)
    methods = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
    p = mz.parse_params(
        {
            "route": {"far_boundary": 2},
            "search": {"sticky_checks": 0},
            "pretrain": {"steps": 5, "batch_size": 8, "hidden": 32},
            "far_buffer": {"size": 24, "rollout_steps": 12},
            "fisher": {"states": 4},
            "finetune": {
                "methods": methods, "updates": 2, "envs": 2, "steps": 8, "epochs": 1, "minibatches": 2,
                "eval_every": 1, "eval_episodes": 1, "eval_max_steps": 8,
            },
        }
    )
    paths = Paths("montezuma", root=tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mz.collect_demos(p, paths)
        mz.pretrain(p, paths)
        mz.far_buffer(p, paths)
        mz.fisher(p, paths)
        pretrained = {k: v.clone() for k, v in mz.load_pretrained(paths, p).state_dict().items()}
        for m in methods:
            mz.finetune(p, paths, "cpu", m)
        mz.evaluate(p, paths, "cpu")
        mz.report(p, paths)
    finally:
        torch.set_num_threads(threads)
    curves = json.loads((paths.finetune("bc") / "curves.json").read_text())
    assert curves["frames"] == [64, 128] and len(curves["eval"]) == 3
    assert all(0 <= e["far_success"] <= 1 for e in curves["eval"])
    metrics = json.loads((paths.evaluation / "metrics.json").read_text())
    assert set(metrics) == {"pretrained", *methods}
    assert (paths.report / "far_success.png").stat().st_size > 0
    assert "| ks |" in (paths.report / "report.md").read_text()
    # fine-tuning really changed the weights, and started from π* (not for scratch)
    from safetensors.torch import load_file

    ft = load_file(str(paths.finetune("finetune") / "policy.safetensors"))
    sc = load_file(str(paths.finetune("scratch") / "policy.safetensors"))
    w = "actor.weight"
    assert not torch.equal(ft[w], pretrained[w])
    assert (ft[w] - pretrained[w]).abs().max() < (sc[w] - pretrained[w]).abs().max()


def test_em_is_refused():
    with pytest.raises(mz.ConfigError, match=r"montezuma\.finetune\.methods.*off-policy"):
        mz.parse_params({"finetune": {"methods": ["finetune", "em"]}})
