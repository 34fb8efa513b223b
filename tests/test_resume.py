"""Killed fine-tuning resumes where it stopped (issue #21): the checkpoint store, each learner's
resume bit for bit in process, and a real SIGKILL of a `dvc repro` stage rerun to the same bytes.

Learners wired so far: REINFORCE (AppleRetrieval). SAC, PPO+RND and sample-factory's APPO are not
yet (tracked in issue #21).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import retainrl.families.apple.stages as A
from retainrl.learners.checkpoint import Checkpoint
from test_pipeline_e2e import copy_repo  # tests/ is on sys.path (pytest rootdir import mode)

ROOT = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands in for a SIGKILL inside the process: the run stops after a checkpoint was written."""


def test_checkpoint_keys_on_params_and_code_and_drops_stale_ones(tmp_path):
    a = Checkpoint.for_stage("apple_finetune@ewc", 0, family="apple", method="ewc", params={"lr": 0.1}, root=tmp_path, code="c1")
    a.save({"progress": "x", "n": 1})
    same = Checkpoint.for_stage("apple_finetune@ewc", 0, family="apple", method="ewc", params={"lr": 0.1}, root=tmp_path, code="c1")
    assert same.load() == {"progress": "x", "n": 1}
    # the interval is not part of the key: changing it keeps the checkpoint
    assert Checkpoint.for_stage("apple_finetune@ewc", 60, family="apple", method="ewc",
                                params={"lr": 0.1, "checkpoint": {"every_s": 60}}, root=tmp_path, code="c1").load() is not None
    other = Checkpoint.for_stage("apple_finetune@ewc", 0, family="apple", method="ewc", params={"lr": 0.2}, root=tmp_path, code="c1")
    assert other.load() is None and not a.file.exists()  # other params: a fresh start, the stale state removed
    other.save({"n": 2})
    assert Checkpoint.for_stage("apple_finetune@ewc", 0, family="apple", method="ewc", params={"lr": 0.2}, root=tmp_path,
                                code="c2").load() is None  # other code: the same
    other.clear()
    assert not (tmp_path / "apple_finetune@ewc").exists()


def test_checkpoint_interval_is_wall_clock(tmp_path):
    ck = Checkpoint(tmp_path / "k", every_s=3600)
    assert not ck.maybe_save(lambda: {"n": 1}) and not ck.file.exists()
    ck.every_s = 0
    assert ck.maybe_save(lambda: {"n": 1}) and ck.load() == {"n": 1}


@pytest.mark.parametrize("method", ["ewc", "bc", "ks"])
def test_reinforce_resumes_bit_for_bit(method, tmp_path):
    """Interrupted after iteration 24 of 40 and resumed, every curve and weight equals the
    uninterrupted run's exactly (BC and KS draw from the same torch stream as the learner)."""
    from retainrl.retention.fisher import fisher_diagonal

    p = A.Params.model_validate({"finetune": {"iterations": 40, "eval_every": 5, "eval_episodes": 50, "seeds": 2,
                                              "episodes_per_iteration": 16}})
    pi = A.LogisticPolicy(1, torch.tensor([[0.9, -1.2]]))
    far = A.far_states(pi, p.env, p.far_buffer)
    fisher = fisher_diagonal(pi, far["obs"])
    ref_curves, ref_pol = A.finetune_seeds(method, p, pi, far, fisher, progress=False)

    ck = Checkpoint(tmp_path / "ck", every_s=0)
    logged: list[int] = []

    def stop_at_25(it, scores):
        logged.append(it)
        if it == 25:  # the evaluation after iteration 25 raises: the last checkpoint is iteration 24's
            raise Killed

    with pytest.raises(Killed):
        A.finetune_seeds(method, p, pi, far, fisher, progress=False, on_eval=stop_at_25, checkpoint=ck)
    assert torch.load(ck.file, weights_only=False)["iteration"] == 24
    replayed: list[int] = []
    curves, pol = A.finetune_seeds(method, p, pi, far, fisher, progress=False, checkpoint=ck,
                                   on_eval=lambda it, s: replayed.append(it))
    assert replayed == list(range(0, 41, 5))  # the logger sees the whole run, evaluations before the kill included
    for k in ref_curves:
        assert torch.equal(curves[k], ref_curves[k]), k
    assert torch.equal(pol.weight, ref_pol.weight)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkilled_dvc_stage_resumes_to_the_uninterrupted_bytes(tmp_path):
    """`dvc repro apple_finetune@ewc` SIGKILLed mid-run (process group, as a preempted job), then
    rerun: it resumes from the checkpoint, finishes, removes the checkpoint, and its curves and
    policy are byte for byte those of an uninterrupted run."""
    stage = "apple_finetune@ewc"
    dvc = [sys.executable, "-m", "dvc"]

    def project(name: str) -> tuple[Path, dict]:
        repo = copy_repo(ROOT, tmp_path / name)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["profile"] = "smoke"
        params["profiles"]["smoke"]["apple"]["finetune"].update({"iterations": 600, "eval_every": 50})
        params["apple"]["checkpoint"]["every_s"] = 0
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(repo), "RETAINRL_LOG": "INFO"}
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):  # dvclive wants a commit
            subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
        return repo, env

    ref_repo, env = project("reference")  # uninterrupted, in its own copy (no run cache shared with the other)
    subprocess.run([*dvc, "repro", stage], cwd=ref_repo, env=env, check=True, capture_output=True)
    reference = {f: _sha(ref_repo / "models/apple/finetune/ewc" / f) for f in ("curves.npz", "policy.safetensors")}

    repo, env = project("killed")
    out = repo / "models/apple/finetune/ewc"
    subprocess.run([*dvc, "repro", "apple_fisher"], cwd=repo, env=env, check=True, capture_output=True)
    ckroot = repo / ".checkpoints" / stage
    proc = subprocess.Popen([*dvc, "repro", stage], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    progress = 0
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(ckroot.glob("*/state.pt"))
        if files:
            try:
                progress = torch.load(files[0], weights_only=False)["iteration"]
            except Exception:  # noqa: BLE001 — caught between os.replace and the read: try again
                progress = 0
            if progress >= 100:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the stage finished before it could be killed: raise its iterations"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 100 <= progress < 600 and not out.exists()  # DVC removed the out; only the checkpoint is left

    res = subprocess.run([*dvc, "repro", stage], cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resuming apple_finetune@ewc from its checkpoint (iteration" in res.stdout + res.stderr
    assert {f: _sha(out / f) for f in reference} == reference
    assert not ckroot.exists()  # removed on success
