"""The two-worker split of `make test` (tests/xdist_units.py): the smoke repository is built once,
on one worker, and the long units go first, to different workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from xdist_units import smoke_repo_users, work_unit

TESTS = Path(__file__).parent


def test_every_user_of_the_smoke_repository_is_found_in_the_real_suite():
    users = smoke_repo_users(TESTS)
    assert "tests/test_pipeline_e2e.py::test_smoke_repro_makes_every_artifact" in users
    assert "tests/test_resume.py::test_sigkilled_dvc_stage_resumes_to_the_uninterrupted_bytes" in users
    assert not any("test_flows.py" in u for u in users)
    assert work_unit("tests/test_resume.py::test_sigkilled_dvc_stage_resumes_to_the_uninterrupted_bytes[apple]", users) == "smoke_repo"
    assert work_unit("tests/test_resume.py::test_checkpoint_interval_is_wall_clock", users) == "tests/test_resume.py"


def test_two_workers_build_the_smoke_repository_once_and_take_the_long_units_apart(tmp_path):
    log = tmp_path / "log.txt"
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    suite = tmp_path / "tests"
    suite.mkdir()
    (suite / "conftest.py").write_text(f"""
import os, sys, time
import pytest
sys.path.insert(0, {str(TESTS)!r})
from xdist_units import pytest_collection_modifyitems, pytest_xdist_make_scheduler  # noqa: F401

def note(what):
    with open({str(log)!r}, "a") as f:
        f.write(f"{{what}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")

@pytest.fixture(scope="session")
def smoke_repo():
    note("built")
    time.sleep(1)
""")
    (suite / "test_a_other.py").write_text("from conftest import note\n" + "".join(
        f"def test_o{i}():\n    note('other')\n" for i in range(4)))
    (suite / "test_flows.py").write_text("import time\nfrom conftest import note\ndef test_f():\n    note('flows')\n    time.sleep(2)\n")
    (suite / "test_pipeline_e2e.py").write_text("from conftest import note\n" + "".join(
        f"def test_e{i}(smoke_repo):\n    note('smoke')\n" for i in range(3)))
    (suite / "test_resume.py").write_text(
        "import pytest\nfrom conftest import note\ndef test_plain():\n    note('other')\n"
        "@pytest.mark.parametrize('f', ['x', 'y'])\ndef test_k(f, smoke_repo):\n    note('smoke')\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadscope",
                          "--no-loadscope-reorder"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    lines = [ln.split() for ln in log.read_text().splitlines()]
    built = [w for what, w in lines if what == "built"]
    smoke = {w for what, w in lines if what == "smoke"}
    flows = {w for what, w in lines if what == "flows"}
    assert len(built) == 1 and smoke == set(built), lines  # one build, and every user on its worker
    assert flows and flows.isdisjoint(smoke), lines  # the second-longest unit went to the other worker
    assert sum(what == "smoke" for what, _ in lines) == 5 and sum(what == "other" for what, _ in lines) == 5
