"""Atomic artifact writes and the agreement between dvc.yaml and retainrl.core.paths."""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import dvc_outs
from retainrl.core.artifacts import atomic_path, load_npz, save_npz
from retainrl.core.config import ConfigError
from retainrl.core.paths import Paths


def test_failed_write_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_path(dest, directory=True) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("stage crashed")
    assert list(tmp_path.iterdir()) == []


def test_successful_write_replaces_the_old_artifact(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_path(dest, directory=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]


def test_killed_writer_leaves_no_output_and_the_next_run_sweeps_its_temporary(tmp_path):
    dest = tmp_path / "artifact"
    code = (
        "import time, sys; from retainrl.core.artifacts import atomic_path\n"
        f"with atomic_path({str(dest)!r}, directory=True) as tmp:\n"
        "    (tmp / 'part').write_text('x'); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not dest.exists()
    assert len(list(tmp_path.glob(".artifact.*.tmp"))) == 1  # the orphan of the killed run
    with atomic_path(dest, directory=True) as tmp:
        (tmp / "done").write_text("ok")
    assert (dest / "done").exists() and not list(tmp_path.glob(".artifact.*.tmp"))


def test_corrupted_or_missing_npz_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing demos"):
        load_npz(tmp_path / "nope.npz", "demos")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="bad.npz: cannot read demos"):
        load_npz(bad, "demos")
    import numpy as np

    save_npz(tmp_path / "ok.npz", a=np.zeros(3))
    with pytest.raises(ConfigError, match="lacks arrays \\['b'\\]"):
        load_npz(tmp_path / "ok.npz", "demos", ("a", "b"))


def test_dvc_yaml_declares_the_paths_the_code_writes(root):
    """Every family stage's outs in dvc.yaml are the directories retainrl.core.paths gives it."""
    raw = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    p = Paths("apple")
    expect = {
        "apple_collect_demos": [p.demos],
        "apple_pretrain": [p.pretrained],
        "apple_far_buffer": [p.far_buffer],
        "apple_fisher": [p.fisher],
        "apple_report": [p.report],
    }
    declared = dvc_outs(root)
    for stage, outs in expect.items():
        assert [str(o) for o in outs] == declared[stage], stage
    assert raw["apple_finetune"]["outs"] == [str(p.finetune("${item.method}"))]
    assert raw["apple_finetune"]["matrix"]["method"] == "${apple.finetune.methods}"
    assert raw["apple_sweep"]["outs"] == [str(p.sweep("${item.axis}"))]
    metrics = raw["apple_evaluate"]["metrics"][0]
    assert list(metrics) == [str(p.evaluation / "metrics.json")]
    assert set(params["apple"]["finetune"]["methods"]) <= {"scratch", "finetune", "l2", "ewc", "bc", "ks"}


def test_saved_tensors_are_byte_identical_across_processes(tmp_path):
    """Same weights + metadata → same bytes in every process, or DVC sees a changed output."""
    code = (
        "import sys, torch; from retainrl.core.artifacts import save_tensors\n"
        "save_tensors(sys.argv[1], {'b': torch.ones(3), 'a': torch.zeros(2)}, {'zeta': 1, 'alpha': [1, 2], 'mid': 'x'})\n"
    )
    outs = []
    for i in range(3):
        path = tmp_path / f"t{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        outs.append(path.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    from retainrl.core.artifacts import load_metadata

    assert load_metadata(tmp_path / "t0.safetensors") == {"zeta": 1, "alpha": [1, 2], "mid": "x"}
