"""The two-worker split of `make test` (tests/xdist_units.py): each family's smoke repository is
built once, on one worker, with all of its users, and the long units go first, to different
workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xdist_units import smoke_users, work_unit

TESTS = Path(__file__).parent


def test_every_user_of_the_smoke_repositories_is_found_in_the_real_suite():
    users = smoke_users(TESTS)
    assert "tests/test_pipeline_e2e.py::test_smoke_repro_makes_every_artifact" in users
    assert not any("test_flows.py" in u or "test_resume.py" in u for u in users)
    assert work_unit("tests/test_pipeline_e2e.py::test_smoke_repro_makes_every_artifact[robot]", users) == "smoke:robot"
    killed = "tests/test_resume.py::test_sigkilled_dvc_stage_resumes_to_the_uninterrupted_bytes[apple]"
    assert work_unit(killed, users) == killed  # a unit of its own
    assert work_unit("tests/test_flows.py::test_retrieve_model_at_tag", users) == "tests/test_flows.py"
    with pytest.raises(ValueError, match="parametrized with the family"):
        work_unit("tests/test_pipeline_e2e.py::test_smoke_repro_makes_every_artifact", users)


def test_two_workers_build_each_smoke_repository_once_and_take_the_long_units_apart(tmp_path):
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
def smoke_repos():
    built = set()
    def get(family):
        if family not in built:
            built.add(family)
            note("built:" + family)
            time.sleep(1)
        return family
    return get
""")
    families = "['apple', 'nethack', 'montezuma']"
    (suite / "test_a_other.py").write_text("from conftest import note\n" + "".join(
        f"def test_o{i}():\n    note('other')\n" for i in range(4)))
    (suite / "test_pipeline_e2e.py").write_text("import pytest\nfrom conftest import note\n" + "".join(
        f"@pytest.mark.parametrize('family', {families})\ndef test_e{i}(smoke_repos, family):\n"
        f"    note('smoke:' + smoke_repos(family))\n" for i in range(3)))
    (suite / "test_resume.py").write_text(
        "import pytest, time\nfrom conftest import note\n"
        "@pytest.mark.parametrize('f', ['x', 'y'])\ndef test_k(f):\n    note('resume')\n    time.sleep(1)\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadscope",
                          "--no-loadscope-reorder"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    lines = [ln.split() for ln in log.read_text().splitlines()]
    for family in ("apple", "nethack", "montezuma"):
        built = [w for what, w in lines if what == f"built:{family}"]
        users = {w for what, w in lines if what == f"smoke:{family}"}
        assert len(built) == 1 and users == set(built), (family, lines)  # one build, every user on its worker
    first = {w for what, w in lines if what == "built:nethack"}
    second = {w for what, w in lines if what == "built:montezuma"}
    assert first.isdisjoint(second), lines  # the two longest units went to different workers
    assert sum(what == "resume" for what, _ in lines) == 2 and sum(what == "other" for what, _ in lines) == 4
