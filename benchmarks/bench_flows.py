"""Orchestration overhead on a fully cached pipeline: the Prefect flow vs a plain `dvc repro` no-op.

Both are measured in the same run on the same checkout: a smoke-profile copy of the project
(made and reproduced once, untimed) unless --root names an already reproduced checkout. The flow
reports to a real Prefect server started here (127.0.0.1, a free port, a temporary PREFECT_HOME),
as `make server` + `make flow` would. Timed, each ``--repeats`` times (median reported):

* ``dvc_repro``: ``python -m dvc repro`` (CLI, process start included);
* ``flow_cli``: ``python -m flows.pipeline`` (CLI, process start + Prefect import included);
* ``flow_inproc``: the flow called in an already warm Python process (the served-deployment case).

The per-stage overhead is (flow − dvc repro) / number of stages. Writes benchmarks/results/flows.json.

    nice -n 10 .venv/bin/python -m benchmarks.bench_flows [--root PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_smoke_copy(dest: Path, env: dict) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["profile"] = "smoke"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    print("reproducing the smoke pipeline once (untimed setup)…", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=dest, env=env, check=True)
    return dest


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{res.stderr[-2000:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="an already reproduced checkout (default: a fresh smoke copy)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/flows.json"))
    a = ap.parse_args(argv)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RETAINRL_LOG": "WARNING",
           "PYTHONPATH": str(ROOT)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    server = None
    try:
        repo = Path(a.root).resolve() if a.root else make_smoke_copy(tmp / "repo", env)
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=repo, env=env)
        if status.returncode != 0:
            raise SystemExit(f"{repo} is not fully cached (`dvc status` reports changes): reproduce it first")
        port = free_port()
        home = tmp / "prefect"
        env.update({"PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                    "PREFECT_LOGGING_LEVEL": "WARNING"})
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-ui"], env=env, cwd=tmp, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        import urllib.request

        for _ in range(180):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        else:
            raise SystemExit("the Prefect server did not start")
        os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "RETAINRL_LOG")})
        from flows.pipeline import FlowConfig, run
        from retainrl.orchestration.dag import load_dag

        n_stages = len(load_dag(repo).stages)
        run(FlowConfig(root=str(repo)))  # warm-up: imports, first flow registration
        times: dict[str, list[float]] = {"dvc_repro": [], "flow_cli": [], "flow_inproc": []}
        for _ in range(a.repeats):
            times["dvc_repro"].append(timed([sys.executable, "-m", "dvc", "repro"], repo, env))
            times["flow_cli"].append(timed([sys.executable, "-m", "flows.pipeline", "--root", str(repo)], tmp, env))
            t = time.perf_counter()
            result = run(FlowConfig(root=str(repo)))
            times["flow_inproc"].append(time.perf_counter() - t)
            assert not any(r["ran"] for r in result.values()), "the pipeline was not fully cached"
        med = {k: statistics.median(v) for k, v in times.items()}
        out = {
            "what": "fully cached pipeline: Prefect flow (real server) vs plain `dvc repro` no-op, same run, median of repeats",
            "command": "python -m benchmarks.bench_flows" + (f" --root {a.root}" if a.root else "") + f" --repeats {a.repeats}",
            "stages": n_stages,
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_flow_cli_over_dvc_repro": round(med["flow_cli"] / med["dvc_repro"], 2),
            "ratio_flow_inproc_over_dvc_repro": round(med["flow_inproc"] / med["dvc_repro"], 2),
            "overhead_per_stage_s": {
                "flow_cli": round((med["flow_cli"] - med["dvc_repro"]) / n_stages, 3),
                "flow_inproc": round((med["flow_inproc"] - med["dvc_repro"]) / n_stages, 3),
            },
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        }
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
