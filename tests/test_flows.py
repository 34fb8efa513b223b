"""Orchestration (issue #3): the Prefect flow over the DVC DAG, the served deployment on a real
server, the dask mode, versioned retrieval and bad input. CPU only, smoke profile.

One plain `dvc repro` copy (``ref``) and one flow-run copy (``flowed``) are shared by the module;
scenarios that change a repository work on a cheap `cp -a` of one of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo  # tests/ is on sys.path (pytest rootdir import mode)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, cwd, env=None, check=True):
    res = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check:
        assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RETAINRL_LOG": "WARNING",
       "PYTHONPATH": str(ROOT)}
# Up to the evaluation: every kind of stage and the fine-tune fan-out, without the sweeps and
# the report (the slowest part on 2 cores; tests/test_pipeline_e2e.py runs them with `dvc repro`).
TARGETS = ["apple_evaluate"]
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def lock_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def snapshot(repo: Path) -> tuple:
    """What 'repository untouched' means: git's view, dvc.lock and params.yaml byte for byte."""
    st = sh(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout
    return st, (repo / "dvc.lock").read_bytes() if (repo / "dvc.lock").exists() else b"", (repo / "params.yaml").read_bytes()


def assert_status_clean(repo: Path) -> None:
    out = sh([sys.executable, "-m", "dvc", "status", "--with-deps", *TARGETS], repo).stdout
    assert "Data and pipelines are up to date." in out, out


def clone_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A smoke-profile copy of the project as a fresh git repo, with a local DVC remote in tmp."""
    repo = copy_repo(ROOT, tmp_path_factory.mktemp("base"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    remote = tmp_path_factory.mktemp("remote")
    sh([sys.executable, "-m", "dvc", "remote", "add", "-f", "-d", "storage", str(remote)], repo)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*GIT, "commit", "-qm", "init"]):
        sh(cmd, repo)
    return repo


@pytest.fixture(scope="module")
def ref_started(base, tmp_path_factory):
    """Start the reference `dvc repro` in the background so it overlaps with the flow run."""
    repo = clone_dir(base, tmp_path_factory.mktemp("ref") / "repo")
    log = open(repo.parent / "repro.log", "w")
    proc = subprocess.Popen(["nice", "-n", "5", sys.executable, "-m", "dvc", "repro", *TARGETS], cwd=repo, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT)
    yield repo, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def ref(ref_started) -> Path:
    """The reference: a plain `dvc repro` of the smoke pipeline up to the evaluation."""
    repo, proc = ref_started
    assert proc.wait() == 0, (repo.parent / "repro.log").read_text()[-3000:]
    return repo


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def flowed(base, harness, ref_started, tmp_path_factory) -> tuple[Path, dict]:
    """The smoke pipeline up to the evaluation run by the Prefect flow, two stages at a time."""
    from flows.pipeline import FlowConfig, run

    repo = clone_dir(base, tmp_path_factory.mktemp("flowed") / "repo")
    result = run(FlowConfig(root=str(repo), targets=TARGETS, concurrency=2))
    return repo, result


# ----------------------------------------------------------------------------- (1) the flow
def test_flow_runs_every_stage_and_matches_dvc_repro(flowed, ref):
    repo, result = flowed
    from retainrl.orchestration.dag import load_dag

    assert set(result) == set(load_dag(repo).select(TARGETS).stages)  # one task per stage, names from DVC
    assert all(r["ran"] for r in result.values())
    assert_status_clean(repo)
    mine, theirs = lock_stages(repo), lock_stages(ref)
    differ = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
    assert not differ, f"dvc.lock differs from `dvc repro`'s: {differ}"  # cmd, deps, params, out hashes


def test_second_flow_run_skips_everything(flowed):
    repo, _ = flowed
    from flows.pipeline import FlowConfig, run

    before = snapshot(repo)
    result = run(FlowConfig(root=str(repo), targets=["apple_finetune"]))
    assert result and not any(r["ran"] for r in result.values())
    assert snapshot(repo) == before


def test_failing_stage_fails_the_flow_keeps_upstream_and_retries(ref, harness, tmp_path):
    from flows.pipeline import FlowConfig, run

    repo = clone_dir(ref, tmp_path / "repo")
    with open(repo / "params.yaml") as f:
        params = yaml.safe_load(f)
    params["profiles"]["smoke"]["apple"]["far_buffer"]["size"] = 96  # far_buffer re-runs first
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage_py = repo / "stages/fisher.py"
    stage_py.write_text("import sys\nsys.exit('error: fisher exploded (injected)')\n" + stage_py.read_text())
    old = lock_stages(repo)
    with pytest.raises(Exception, match="fisher exploded"):
        run(FlowConfig(root=str(repo), targets=["apple_fisher"], retries=1, retry_delay=0))
    new = lock_stages(repo)
    assert new["apple_far_buffer"] != old["apple_far_buffer"]  # the stage that succeeded is recorded
    assert (repo / "data/apple/far_buffer/far_buffer.npz").exists()
    assert new["apple_fisher"] == old["apple_fisher"]

    # A transient failure (fails once, then works) is absorbed by a retry.
    marker = tmp_path / "failed-once"
    stage_py.write_text(f"import pathlib, sys\nm = pathlib.Path({str(marker)!r})\n"
                        "if not m.exists():\n    m.touch(); sys.exit('error: transient')\n"
                        + stage_py.read_text().split("\n", 2)[2])
    result = run(FlowConfig(root=str(repo), targets=["apple_fisher"], retries=1, retry_delay=0))
    assert marker.exists() and result["apple_fisher"]["ran"]


# ----------------------------------------------------------------------------- (1b) workspaces
def branch_file(repo: Path, branch: str, rel: str) -> str:
    return sh(["git", "show", f"{branch}:{rel}"], repo).stdout


def test_flow_with_overrides_runs_in_its_own_worktree_and_leaves_the_workspace_as_it_was(ref, harness, tmp_path):
    """--seeds (like a scheduled run's overrides) must not touch params.yaml: the run happens in a
    worktree that shares the DVC cache and ends on branch runs/<name>, retrievable by revision;
    the user's uncommitted edits travel into the run; a failing run leaves its partial results there too."""
    from flows.pipeline import FlowConfig, run
    from flows.workspace import WorkspaceError
    from retainrl.orchestration.retrieve import dvc_md5, fetch

    repo = clone_dir(ref, tmp_path / "repo")
    with open(repo / "params.yaml", "a") as f:
        f.write("# an uncommitted edit of the user's\n")
    before = snapshot(repo)
    result = run(FlowConfig(root=str(repo), targets=["apple_finetune@bc"], seeds=3, name="seeds3"))
    assert result["apple_finetune@bc"]["ran"]  # seeds is in the smoke overlay, which every apple stage reads
    assert snapshot(repo) == before  # params.yaml, dvc.lock and git status byte for byte
    assert sh(["git", "worktree", "list", "--porcelain"], repo).stdout.count("worktree ") == 1
    run_params = yaml.safe_load(branch_file(repo, "runs/seeds3", "params.yaml"))
    assert run_params["profiles"]["smoke"]["apple"]["finetune"]["seeds"] == 3
    assert "# an uncommitted edit of the user's" in branch_file(repo, "runs/seeds3", "params.yaml")

    def out_md5(lock: dict) -> str:
        return {o["path"]: o["md5"] for o in lock["apple_finetune@bc"]["outs"]}["models/apple/finetune/bc"]

    md5 = out_md5(yaml.safe_load(branch_file(repo, "runs/seeds3", "dvc.lock"))["stages"])
    assert md5 != out_md5(lock_stages(repo))
    (got,) = fetch(repo, "models/apple/finetune/bc", rev="runs/seeds3", out=tmp_path / "bc-seeds3")
    assert dvc_md5(got) == md5
    # The same overrides again: DVC's run cache, in the shared cache, gives back the very same bytes
    # (a real rerun would not: the dvclive logs inside the out carry timestamps).
    run(FlowConfig(root=str(repo), targets=["apple_finetune@bc"], seeds=3, name="again"))
    assert out_md5(yaml.safe_load(branch_file(repo, "runs/again", "dvc.lock"))["stages"]) == md5
    assert snapshot(repo) == before
    with pytest.raises(WorkspaceError, match="runs/seeds3 exists already"):
        run(FlowConfig(root=str(repo), targets=["apple_finetune@bc"], seeds=3, name="seeds3"))

    stage_py = repo / "stages/finetune.py"  # an uncommitted, failing stage: the run fails in its worktree
    stage_py.write_text("import sys\nsys.exit('error: finetune exploded (injected)')\n" + stage_py.read_text())
    before = snapshot(repo)
    with pytest.raises(Exception, match="finetune exploded"):
        run(FlowConfig(root=str(repo), targets=["apple_finetune@bc"], seeds=4, name="bad"))
    assert snapshot(repo) == before
    assert "failed" in sh(["git", "log", "-1", "--format=%s", "runs/bad"], repo).stdout
    assert sh(["git", "worktree", "list", "--porcelain"], repo).stdout.count("worktree ") == 1


def test_a_second_flow_on_the_same_workspace_refuses_until_the_first_is_gone(ref, harness, tmp_path, capsys):
    from flows.pipeline import main

    repo = clone_dir(ref, tmp_path / "repo")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from flows.workspace import workspace_lock\n"
                               "with workspace_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)", str(repo)],
                              env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(repo)
        assert main(["--root", str(repo), "apple_pretrain"]) == 2
        err = capsys.readouterr().err
        assert "another retainrl flow is running" in err and f"pid {holder.pid}" in err, err
        assert snapshot(repo) == before
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock, no stale lock is left behind
        holder.wait()
    assert main(["--root", str(repo), "apple_pretrain"]) == 0
    assert_status_clean(repo)


# ----------------------------------------------------------------------------- (2) real server + deployment
def test_served_deployment_runs_from_the_api(ref, tmp_path):
    import httpx

    ref = clone_dir(ref, tmp_path / "repo")
    before = snapshot(ref)  # the served run has overrides: it must run in a worktree of its own

    port = free_port()
    home = tmp_path / "prefect-home"
    env = {**ENV, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}  # upcoming runs within seconds, not a minute
    api = env["PREFECT_API_URL"]
    procs = []
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}  # shown when the test fails
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", str(port), "--no-ui"], env=env, cwd=tmp_path, start_new_session=True,
                                      stdout=logs["server"], stderr=subprocess.STDOUT))
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "server health")
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.serve", "--root", str(ref), "--name", "test",
                                       "--cron", "0 3 * * *", "--profile", "smoke", "--seeds", "2", "apple_pretrain"],
                                      env={**env, "RETAINRL_LOG": "INFO", "PREFECT_LOGGING_LEVEL": "INFO"}, cwd=ROOT,
                                      start_new_session=True, stdout=logs["serve"], stderr=subprocess.STDOUT))
        dep = wait_for(lambda: _ok(httpx.get(f"{api}/deployments/name/retainrl-pipeline/test", timeout=5)), 120, "deployment")
        assert dep["parameters"]["profile"] == "smoke" and dep["parameters"]["targets"] == ["apple_pretrain"]
        schedules = dep.get("schedules") or []
        assert any(s["schedule"].get("cron") == "0 3 * * *" for s in schedules), schedules
        # the server's scheduler turns the cron into upcoming runs (SQLAlchemy 2.1 broke its bulk
        # insert under prefect 3.8.8: the schedule showed in the UI and never produced a run)
        upcoming = wait_for(lambda: httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
            "deployments": {"id": {"any_": [dep["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}).json(),
            240, "the scheduler's upcoming runs")
        assert all(r["auto_scheduled"] and r["expected_start_time"][14:19] == "00:00" for r in upcoming), upcoming
        run = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}, timeout=10).json()
        # Waits on progress, not on a wall-clock budget: it fails only when neither the run's state
        # nor its task runs nor its log have moved for STALL_S (a loaded 2-core box is slow, not stuck).
        final = wait_for_progress(api, run["id"])
        assert final["state"]["type"] == "COMPLETED", (final["state"], run_story(api, run["id"]))
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}, timeout=10).json()
        assert sorted(t["name"] for t in tasks) == ["apple_collect_demos", "apple_pretrain"]
        assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
        arts = httpx.post(f"{api}/artifacts/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}, timeout=10).json()
        assert any(a["key"] == "retainrl-stages" and a["type"] == "table" for a in arts)
        assert any(a["key"] == "retainrl-results" and a["type"] == "markdown" for a in arts)  # reports/index.md
        assert any(a["key"] == "retainrl-run-branch" for a in arts)
        assert snapshot(ref) == before
        branches = sh(["git", "branch", "--list", "runs/*"], ref).stdout.split()
        assert len(branches) == 1 and branches[0].startswith("runs/smoke-"), branches
    except BaseException as err:  # say why: the served processes' own output
        for f in logs.values():
            f.flush()
        tails = {n: (tmp_path / f"{n}.log").read_text()[-4000:] for n in logs}
        story = run_story(api, run["id"]) if "run" in locals() and isinstance(run, dict) and "id" in run else "no flow run was created"
        raise AssertionError(f"{err!r}\n--- the flow run, from the API\n{story}\n--- prefect server log (tail)\n{tails['server']}"
                             f"\n--- flows.serve log (tail)\n{tails['serve']}") from err
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for f in logs.values():
            f.close()


def _ok(r):
    return r.json() if r.status_code == 200 else None


def _final(fr):
    return fr if fr["state"] and fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


STALL_S = 300  # no visible progress of the served flow run for this long: it is stuck, not slow


def _progress(api: str, run_id: str) -> tuple[dict, tuple]:
    """The flow run, and what counts as progress: its state, each task run's state, its log's length."""
    import httpx

    fr = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}, timeout=10).json()
    logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}, timeout=10).json()
    state = fr.get("state") or {}
    return fr, (state.get("type"), state.get("name"), tuple(sorted((t["name"], (t.get("state") or {}).get("type")) for t in tasks)), len(logs))


def wait_for_progress(api: str, run_id: str, stall_s: float = STALL_S, ceiling_s: float = 3600) -> dict:
    """Poll the served flow run until it ends; fail if it shows no progress for ``stall_s``."""
    start = last_move = time.monotonic()
    seen = None
    while time.monotonic() - start < ceiling_s:
        try:
            fr, mark = _progress(api, run_id)
        except Exception:  # noqa: BLE001 — the server is busy: a missed poll is not progress, nor a failure
            fr, mark = None, seen
        if mark != seen:
            seen, last_move = mark, time.monotonic()
        if fr is not None and _final(fr):
            return fr
        if time.monotonic() - last_move > stall_s:
            raise AssertionError(f"the flow run made no progress for {stall_s:.0f} s (last seen: {seen})")
        time.sleep(1)
    raise AssertionError(f"the flow run did not end within {ceiling_s:.0f} s (last seen: {seen})")


def run_story(api: str, run_id: str) -> str:
    """What the API knows of a flow run: its state history, its task runs, its last log lines."""
    import httpx

    try:
        states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=10).json()
        lines = [f"state {s['timestamp']} {s['type']} {s['name']}: {(s.get('message') or '')[:300]}" for s in states]
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}, timeout=10).json()
        lines += [f"task {t['name']}: {(t.get('state') or {}).get('type')}" for t in tasks]
        logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_DESC",
                                                       "limit": 40}, timeout=10).json()
        lines += [f"log {r['timestamp']} {r['message'][:300]}" for r in reversed(logs)]
        return "\n".join(lines)
    except Exception as err:  # noqa: BLE001 — the server may be what failed
        return f"(the API did not answer: {err!r})"


def wait_for(fn, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = fn()
        except Exception:  # noqa: BLE001 — not up yet
            got = None
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- (3) retrieval
def test_retrieve_model_at_tag(ref, tmp_path):
    from retainrl.orchestration.retrieve import dvc_md5, fetch

    repo = clone_dir(ref, tmp_path / "repo")
    sh(["git", "add", "-A"], repo)
    sh([*GIT, "commit", "-qm", "smoke results"], repo)
    sh(["git", "tag", "v1"], repo)
    at_v1 = {o["path"]: o["md5"] for o in lock_stages(repo)["apple_pretrain"]["outs"]}["models/apple/pretrained"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["apple"]["pretrain"]["steps"] = 40
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh([sys.executable, "-m", "dvc", "repro", "apple_pretrain"], repo)
    sh([*GIT, "commit", "-qam", "fewer pretraining steps"], repo)
    now = {o["path"]: o["md5"] for o in lock_stages(repo)["apple_pretrain"]["outs"]}["models/apple/pretrained"]
    assert now != at_v1
    (got,) = fetch(repo, "apple_pretrain", rev="v1", out=tmp_path / "pretrained-v1", verify=True)
    assert dvc_md5(got) == at_v1
    (got_now,) = fetch(repo, "models/apple/pretrained", rev="HEAD", out=tmp_path / "pretrained-now")
    assert dvc_md5(got_now) == now


# ----------------------------------------------------------------------------- (4) dask
def test_dask_localcluster_fan_out(ref, harness, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import FlowConfig, run

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # worker processes report to the same server
    repo = clone_dir(ref, tmp_path / "repo")
    sh(["git", "add", "-A"], repo)
    sh([*GIT, "commit", "-qm", "results"], repo)
    remote = tmp_path / "remote"
    sh([sys.executable, "-m", "dvc", "remote", "add", "-f", "--local", "-d", "cluster", str(remote)], repo)
    for m in ("ewc", "bc"):
        shutil.rmtree(repo / f"models/apple/finetune/{m}")
    result = run(FlowConfig(root=str(repo), targets=["apple_finetune"], dask="local", dask_workers=2, concurrency=2))
    assert {n for n, r in result.items() if r["ran"]} == {"apple_finetune@ewc", "apple_finetune@bc"}
    assert lock_stages(repo) == lock_stages(ref)
    assert_status_clean(repo)
    assert list((remote / "files" / "md5").iterdir())  # the artifacts travelled through the remote


# ----------------------------------------------------------------------------- (5) bad input
@pytest.mark.parametrize("argv, message", [
    (["apple_nope"], "unknown stage 'apple_nope'"),
    (["--env", "atari"], "unknown environment 'atari'"),
    (["--dask", "tcp://127.0.0.1:{port}"], "unreachable"),
    (["--push", "--remote", "nowhere"], "DVC remote 'nowhere' does not exist"),
    (["--profile", "huge"], "unknown profile 'huge'"),
    (["--dask", "not-an-address"], "scheduler address"),
])
def test_bad_input_clear_message_and_untouched_repo(ref, argv, message, capsys):
    from flows.pipeline import main

    port = free_port()
    before = snapshot(ref)
    rc = main(["--root", str(ref), *[a.format(port=port) for a in argv]])
    assert rc != 0
    assert message in capsys.readouterr().err
    assert snapshot(ref) == before


def test_unreachable_server_and_bad_revision(ref, capsys, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import main
    from retainrl.orchestration.retrieve import main as retrieve

    before = snapshot(ref)
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        assert main(["--root", str(ref)]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert retrieve(["apple_pretrain", "--root", str(ref), "--rev", "no-such-tag"]) == 2
    assert "unknown revision 'no-such-tag'" in capsys.readouterr().err
    assert snapshot(ref) == before
