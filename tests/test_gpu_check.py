"""benchmarks/gpu_check.py, dry-run on the CPU: the command the lent GPU machine runs must work here.

One subprocess run of ``--device cpu --tiny`` (every section, ~40 s on 2 loaded cores), then
in-process checks of the two ways a section can fail to give a figure: skipped (a package is
missing, as metaworld is on the GPU machine) and failed (recorded; the others still run).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def numbers(obj, path=""):
    """Every int/float leaf of a JSON value, with where it is."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RETAINRL_LOG": "WARNING"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, out


def test_dry_run_writes_every_section(dry_run):
    proc, out = dry_run
    assert proc.stdout.strip().splitlines()[-1] == str(out)  # the only print: the path
    rec = json.loads(out.read_text())
    assert rec["dry_run"] and rec["tiny"]
    assert set(rec["sections"]) == set(gpu_check.SECTIONS)
    for name, sec in rec["sections"].items():
        assert sec["device_name"] and sec["torch"], name
        assert sec["status"] in ("ok", "skipped"), (name, sec.get("error"), sec.get("traceback"))
        if sec["status"] == "skipped":
            assert sec["reason"], name
            continue
        bad = [(p, v) for p, v in numbers(sec) if not math.isfinite(v)]
        assert not bad, (name, bad)
        assert sec["gpu"] and sec["cpu"], name
        assert sec["ratio"] is not None and sec["ratio"] > 0, name


def test_dry_run_figures(dry_run):
    rec = json.loads(dry_run[1].read_text())["sections"]
    for name in ("sac", "ppo_rnd"):
        for side in ("gpu", "cpu"):
            assert rec[name][side]["updates_per_s"] > 0, (name, side)
    if rec["appo"]["status"] == "ok":
        for side in ("gpu", "cpu"):
            run = rec["appo"][side]
            assert run["env_steps"] > 0 and run["learner_updates"] > 0
            assert run["env_steps_per_s"] > 0 and run["learner_updates_per_s"] > 0
    for name, sec in rec.items():
        if name.startswith("finetune_") and sec["status"] == "ok":
            cmp = sec["comparison"]
            assert cmp["metrics"], name
            if cmp["expect_close"]:  # CPU against CPU: the same numbers
                assert cmp["all_within_tolerance"], (name, cmp)
    if rec["finetune_nethack"]["status"] == "ok":
        assert rec["finetune_nethack"]["forward_check"]["within_tolerance"]
        assert rec["finetune_nethack"]["comparison"]["metrics"]["step0_weights"]["max_abs_diff"] == 0.0


def test_missing_package_is_a_skip_with_its_reason(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "metaworld" else real(name, *a))
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--sections", "finetune_robot", "--out", str(out)]) == 0
    sec = json.loads(out.read_text())["sections"]["finetune_robot"]
    assert sec["status"] == "skipped" and "metaworld" in sec["reason"]


def test_a_failing_section_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    def boom(c):
        raise RuntimeError("kaput")

    monkeypatch.setitem(gpu_check.SECTIONS, "sac", boom)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--sections", "sac,finetune_apple", "--out", str(out)]) == 1
    secs = json.loads(out.read_text())["sections"]
    assert secs["sac"]["status"] == "error" and "kaput" in secs["sac"]["error"]
    assert secs["finetune_apple"]["status"] == "ok"


def test_sections_flag():
    assert gpu_check.parse_sections("finetune") == [k for k in gpu_check.SECTIONS if k.startswith("finetune_")]
    assert gpu_check.parse_sections("appo,sac") == ["sac", "appo"]  # always in the script's order
    with pytest.raises(SystemExit):
        gpu_check.parse_sections("nope")
