"""Register the pipeline as a scheduled Prefect deployment and serve it (``make deploy``).

``flow.serve`` creates the deployment on the server named by PREFECT_API_URL (``make server``
starts one on 127.0.0.1:4200), attaches a cron schedule and default parameters (profile,
environments, methods, seeds, …), then stays in the foreground and executes the scheduled runs
and the runs started from the UI ("Run" → "Custom run" lets you change the parameters).
Stop it with Ctrl-C; the deployment and its past runs remain on the server.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flows.pipeline import check_server, pipeline
from retainrl.orchestration.dag import DagError, load_dag

DEFAULT_CRON = "0 3 * * *"  # nightly; `--cron` to change


def build_parameters(a: argparse.Namespace) -> dict:
    params: dict = {"root": str(Path(a.root).resolve()), "concurrency": a.concurrency, "retries": a.retries, "push": a.push}
    if a.profile:
        params["profile"] = a.profile
    if a.envs:
        params["envs"] = a.envs
    if a.methods:
        params["methods"] = a.methods.split(",")
    if a.seeds:
        params["seeds"] = a.seeds
    if a.targets:
        params["targets"] = a.targets
    return params


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="stages to run (default: the whole pipeline)")
    p.add_argument("--root", default=".")
    p.add_argument("--name", default="retainrl", help="deployment name (default: retainrl)")
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default {DEFAULT_CRON!r}); '' for none")
    p.add_argument("--profile")
    p.add_argument("--env", dest="envs", action="append", default=[])
    p.add_argument("--methods")
    p.add_argument("--seeds", type=int)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--push", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise ConnectionError("PREFECT_API_URL is not set: start the server with `make server` and run `make deploy` "
                                  "(or export PREFECT_API_URL=http://127.0.0.1:4200/api)")
        check_server()
        load_dag(a.root).select(a.targets or None, a.envs or None)
        if a.cron:
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=a.cron)  # validates the expression before anything is registered
    except (ConnectionError, DagError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pipeline.serve(name=a.name, cron=a.cron or None, parameters=build_parameters(a),
                   description="retainrl: the DVC pipeline of dvc.yaml, one task run per stage", limit=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
