"""retainrl.core.procs: a pool worker dies with the stage that spawned it (issue 21).

A parent process starts a spawn pool with :func:`pool_initializer`, hands it a job that would
run for minutes, says the worker's pid, and is then SIGKILLed. Without the parent-death signal
the worker would live on as an orphan (and, in a real stage, keep writing checkpoints the rerun
resumes from); with it the kernel kills the worker at once. The test waits for that state change,
not for a fixed time: it polls until the worker is gone, with a generous ceiling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from retainrl.core.procs import pool_initializer

    def work(_):
        print(os.getpid(), flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=pool_initializer, initargs=(os.getpid(),)) as pool:
            pool.submit(work, 0)
            time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has died already
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_worker_dies_when_its_stage_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path, start_new_session=True)
    try:
        worker = int(parent.stdout.readline())  # blocks until the job runs in the worker
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        end = time.monotonic() + 120
        while alive(worker) and time.monotonic() < end:
            time.sleep(0.2)
        assert not alive(worker), "the pool worker outlived its killed parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # the worker shares the parent's session: no orphan survives a failure
        except ProcessLookupError:
            pass


def test_a_worker_whose_parent_is_already_gone_exits():
    """The parent died before the worker could ask for the signal: the worker must not run on."""
    code = "import os; from retainrl.core.procs import die_with_parent; die_with_parent(os.getppid() + 1); print('ran on')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and "ran on" not in done.stdout, (done.returncode, done.stdout, done.stderr)
