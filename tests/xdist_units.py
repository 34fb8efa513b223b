"""How `make test` splits the suite between its two pytest-xdist workers (tests/conftest.py
installs these hooks; tests/test_suite_split.py runs them on a throw-away suite)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

#: `make test` runs the suite on two workers (pytest-xdist). A work unit is normally a whole test
#: file, so a module's fixtures are built once. Two exceptions:
#:
#: * every test that takes the session's ``smoke_repos`` joins the unit ``smoke:<family>`` of the
#:   family it is parametrized with, so each family's smoke DAG is built once, on one worker, and
#:   the five families' DAGs are spread over both workers;
#: * in :data:`ONE_UNIT_PER_TEST` files each test is a unit of its own (long, independent tests:
#:   the kill-and-resume runs), so they spread over the workers too.
#:
#: Units are handed out longest first (:data:`LONGEST_FIRST`, measured: ``pytest --durations``),
#: so neither worker is left with a long unit at the end; the rest follow in file order.
#:
#: The units come from :func:`pytest_xdist_make_scheduler`, not from ``xdist_group`` marks:
#: pytest 9 builds a node id from its structured id, so the ``@group`` suffix that xdist 3.8's
#: ``--dist loadgroup`` appends to ``item._nodeid`` is lost, and every test became its own unit.
SMOKE = "smoke_repos"
ONE_UNIT_PER_TEST = ("tests/test_resume.py",)
LONGEST_FIRST = ("tests/test_flows.py", "smoke:nethack", "smoke:montezuma", "smoke:robot", "smoke:apple", "smoke:minigrid",
                 "tests/test_resume.py::test_sigkilled_appo_stage_resumes_from_sample_factorys_checkpoint",
                 "tests/test_resume.py::test_sigkilled_dvc_stage_resumes_to_the_uninterrupted_bytes[robot]",
                 "tests/test_nethack.py")


def smoke_users(tests_dir: Path) -> set[str]:
    """Node ids (without parameters) of the test functions that take ``smoke_repos``: read from
    the source, because xdist's controller schedules node ids before any worker reports its items."""
    users = set()
    for f in sorted(tests_dir.glob("test_*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and SMOKE in [a.arg for a in node.args.args]:
                users.add(f"{tests_dir.name}/{f.name}::{node.name}")
    return users


def work_unit(nodeid: str, users: set[str]) -> str:
    """The unit a test belongs to: ``smoke:<family>`` for a smoke repository's users (the family is
    the test's parameter), the test itself in :data:`ONE_UNIT_PER_TEST` files, else its file."""
    func, _, param = nodeid.partition("[")
    if func in users:
        if not param:
            raise ValueError(f"{nodeid}: a test of {SMOKE} must be parametrized with the family it reads")
        return f"smoke:{param.rstrip(']')}"
    file = nodeid.split("::", 1)[0]
    return nodeid if file in ONE_UNIT_PER_TEST else file


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    users = smoke_users(Path(config.rootpath) / "tests")

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, users)

    return Units(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Longest units first (the scheduler hands units out in collection order: --no-loadscope-reorder)."""
    users = smoke_users(Path(config.rootpath) / "tests")
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(work_unit(it.nodeid, users), len(rank)))  # stable
