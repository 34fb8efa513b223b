"""How `make test` splits the suite between its two pytest-xdist workers (tests/conftest.py
installs these hooks; tests/test_suite_split.py runs them on a throw-away suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: `make test` runs the suite on two workers (pytest-xdist). A work unit is a whole test file, so a
#: module's fixtures are built once, except that every test using the session's ``smoke_repo``
#: joins one unit, so that repository is built once (on one worker). The units are handed out in
#: this order, the longest first (measured: the smoke repository and its users are about half of
#: the suite, the Prefect module a quarter), so neither worker is left with a long unit at the end;
#: the rest follow in file order.
#:
#: The units come from :func:`pytest_xdist_make_scheduler`, not from ``xdist_group`` marks:
#: pytest 9 builds a node id from its structured id, so the ``@group`` suffix that xdist 3.8's
#: ``--dist loadgroup`` appends to ``item._nodeid`` is lost, and every test became its own unit
#: (the smoke repository was built on both workers).
LONGEST_FIRST = ("smoke_repo", "tests/test_flows.py")


def smoke_repo_users(tests_dir: Path) -> set[str]:
    """Node ids (without parameters) of the test functions that take ``smoke_repo``: read from the
    source, because xdist's controller schedules node ids before any worker reports its items."""
    import ast

    users = set()
    for f in sorted(tests_dir.glob("test_*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and \
                    "smoke_repo" in [a.arg for a in node.args.args]:
                users.add(f"{tests_dir.name}/{f.name}::{node.name}")
    return users


def work_unit(nodeid: str, smoke_users: set[str]) -> str:
    """The unit a test belongs to: "smoke_repo" for the smoke repository's users, else its file."""
    return "smoke_repo" if nodeid.split("[", 1)[0] in smoke_users else nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    users = smoke_repo_users(Path(config.rootpath) / "tests")

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, users)

    return Units(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Longest units first (the scheduler hands units out in collection order: --no-loadscope-reorder)."""
    users = smoke_repo_users(Path(config.rootpath) / "tests")
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(work_unit(it.nodeid, users), len(rank)))  # stable
