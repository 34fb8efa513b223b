"""Reading `dvc status --json`: the one place that parses it, for `make run` and the Prefect flow.

What is stale decides what runs, so output that holds no JSON object is an error, never "nothing
to do" (a crashed or misconfigured DVC must not pass for an up-to-date DAG).
"""

from __future__ import annotations

import json


def parse_status(stdout: str) -> dict:
    """The JSON object of ``dvc status --json`` output (DVC may print a warning line before it).

    Raises ``ValueError`` when there is none: an up-to-date DAG prints ``{}``, not nothing.
    """
    out = stdout.strip()
    if "{" not in out:
        raise ValueError(f"no JSON object in `dvc status --json` output: {out[-300:]!r}")
    return json.loads(out[out.index("{"):])  # from a "{", a JSON value is an object or an error
