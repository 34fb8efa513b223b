"""The Prefect flow that runs the pipeline dvc.yaml declares.

One task run per DVC stage (named after the stage, with the stage's output as its logs). The
DAG is read from DVC (retainrl.orchestration.dag); the flow body is a small scheduler: a stage is submitted
once all of its upstream stages have finished, at most ``concurrency`` at a time, so the
fine-tune matrix runs side by side. A stage DVC reports as up to date (and whose upstream did
not just re-run) is skipped. Each stage runs as ``dvc repro --single-item STAGE`` (see
flows/dvcops.py for why that is parallel) and is in dvc.lock as soon as it succeeds, so a failing stage fails the flow with its own error message and keeps every output
that was already made; retries cover transient failures.

``python -m flows.pipeline --help`` for the CLI; ``flows/serve.py`` registers the deployment.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows import dvcops
from flows.remote import StageError, merge_results, run_remote, work_order
from flows.workspace import (
    BRANCH_PREFIX,
    WorkspaceBusy,
    WorkspaceError,
    default_run_name,
    isolated_workspace,
    workspace_lock,
)
from retainrl.orchestration.dag import DagError, StageInfo, load_dag

log = logging.getLogger("retainrl.flows")


@dataclass
class FlowConfig:
    """Typed parameters of one pipeline run (also the deployment's parameters)."""

    root: str = "."
    targets: list[str] = field(default_factory=list)  # stage names / matrix groups; empty = all
    envs: list[str] = field(default_factory=list)  # environment families; empty = all
    profile: str | None = None  # sets `profile:` in the run's own params.yaml (like `dvc exp run -S profile=…`)
    methods: list[str] | None = None  # writes <env>.finetune.methods
    seeds: int | None = None  # writes profiles.<profile>.<env>.finetune.seeds (<env>.finetune.seeds for default)
    concurrency: int = 2
    retries: int = 0
    retry_delay: float = 5.0
    push: bool = False
    remote: str | None = None  # DVC remote for push / the distributed mode (default: core.remote)
    dask: str | None = None  # None: threads here; "local": a LocalCluster; "tcp://host:port": that scheduler
    dask_workers: int = 2
    git_url: str | None = None  # where dask workers clone the project (default: root)
    name: str | None = None  # with overrides: the run's name, its results land on branch runs/<name>

    @property
    def overrides(self) -> bool:
        """Whether the run changes params (then it runs in its own worktree, flows/workspace.py)."""
        return self.profile is not None or self.methods is not None or self.seeds is not None

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be ≥ 1, got {self.concurrency}")
        if self.retries < 0:
            raise ValueError(f"retries must be ≥ 0, got {self.retries}")
        if self.seeds is not None and self.seeds < 1:
            raise ValueError(f"seeds must be ≥ 1, got {self.seeds}")
        from retainrl.core.config import PROFILES

        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"profile: unknown profile {self.profile!r}; allowed: {', '.join(PROFILES)}")
        if self.dask not in (None, "local") and not re.match(r"^(tcp|tls|inproc|ws|wss)://[^\s]+$", self.dask):
            raise ValueError(f"dask must be 'local' or a scheduler address like tcp://127.0.0.1:8786, got {self.dask!r}")


# ----------------------------------------------------------------------------- params overrides
def apply_params(root: Path, cfg: FlowConfig, envs: list[str]) -> None:
    """Write profile/methods/seeds into params.yaml, as `dvc exp run -S` would (comments kept)."""
    if cfg.profile is None and cfg.methods is None and cfg.seeds is None:
        return
    from dvc.utils.serialize import modify_yaml

    from retainrl.core.config import PROFILES

    if cfg.profile is not None and cfg.profile not in PROFILES:
        raise ValueError(f"profile: unknown profile {cfg.profile!r}; allowed: {', '.join(PROFILES)}")
    with modify_yaml(str(root / "params.yaml")) as params:
        if cfg.profile is not None:
            params["profile"] = cfg.profile
        for env in envs:
            if env not in params:
                raise ValueError(f"environment {env!r} has no section in params.yaml")
            if cfg.methods is not None:
                params[env]["finetune"]["methods"] = list(cfg.methods)
            if cfg.seeds is not None:
                profile = params.get("profile", "default")
                if profile == "default":  # the base values are the default profile (profiles.default stays empty)
                    params[env]["finetune"]["seeds"] = int(cfg.seeds)
                else:
                    prof = params.setdefault("profiles", {}).setdefault(profile, {}) or {}
                    params["profiles"][profile] = prof
                    prof.setdefault(env, {}).setdefault("finetune", {})["seeds"] = int(cfg.seeds)
    from retainrl.core.config import ConfigError, load_params

    try:
        load_params(root / "params.yaml")
    except ConfigError as err:
        raise ValueError(f"params.yaml after overrides is invalid: {err}") from err


# ----------------------------------------------------------------------------- the task
@task(name="stage")
def run_stage(root: str, stage: dict, changed_at_start: bool, upstream: dict[str, dict], order: dict | None) -> dict:
    """Run one DVC stage (or skip it when DVC says it is up to date); returns its status."""
    logger = get_run_logger()
    info = StageInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in stage.items()})
    started = time.perf_counter()
    upstream_ran = [n for n, r in upstream.items() if r["ran"]]
    if info.frozen:
        logger.info("%s is frozen: skipped", info.name)
        return {"stage": info.name, "ran": False, "lock": None, "seconds": 0.0}
    if not changed_at_start and not upstream_ran:
        logger.info("%s is up to date: skipped", info.name)
        return {"stage": info.name, "ran": False, "lock": None, "seconds": 0.0}
    recheck = not changed_at_start  # only upstream ran: the outputs it consumed may be identical
    if order is not None:  # distributed: a fresh clone on the worker, artifacts via the DVC remote
        res = run_remote(order, info.name, upstream, recheck, logger.info)
        return {"stage": info.name, **res, "seconds": time.perf_counter() - started}
    if recheck and info.name not in dvcops.changed(root, [info.name]):
        logger.info("%s: upstream re-ran but produced the same outputs: skipped", info.name)
        return {"stage": info.name, "ran": False, "lock": None, "seconds": 0.0}
    # `dvc repro --single-item` releases the repo lock while the command runs (DVC's
    # `unlocked_repo(cmd_run)`), so sibling stages started this way really run side by side;
    # --wait-for-lock makes each wait for the short locked phases (status, dvc.lock update).
    cmd = f"{shlex.quote(sys.executable)} -m dvc --wait-for-lock repro --single-item {shlex.quote(info.name)}"
    logger.info("Running stage %r:\n> %s", info.name, info.cmd)
    rc, tail = dvcops.run_command(cmd, str(root), dvcops.bin_env(), logger.info)
    if rc != 0:
        raise StageError(info.name, rc, tail)
    secs = time.perf_counter() - started
    logger.info("%s done in %.1fs and recorded in dvc.lock", info.name, secs)
    return {"stage": info.name, "ran": True, "lock": None, "seconds": secs}


# ----------------------------------------------------------------------------- the flow
@flow(name="retainrl-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=32))
def pipeline(root: str = ".", targets: list[str] | None = None, envs: list[str] | None = None, profile: str | None = None,
             methods: list[str] | None = None, seeds: int | None = None, concurrency: int = 2, retries: int = 0,
             retry_delay: float = 5.0, push: bool = False, remote: str | None = None, distributed: bool = False,
             git_url: str | None = None, name: str | None = None) -> dict:
    """Run the DVC pipeline at ``root`` (targets + upstream, like ``dvc repro TARGETS``).

    With overrides (profile, methods, seeds) it runs in an isolated git worktree and leaves its
    results on branch ``runs/<name>``; without, in ``root`` under the workspace's flow lock
    (flows/workspace.py).
    """
    logger = get_run_logger()
    cfg = FlowConfig(str(root), list(targets or []), list(envs or []), profile, methods, seeds, concurrency, retries,
                     retry_delay, push, remote, None, 2, git_url, name)
    cfg.validate()
    rootp = Path(root).resolve()
    load_dag(rootp).select(cfg.targets or None, cfg.envs or None)  # validate names before any workspace is made
    if cfg.overrides:  # never rewrite the user's params.yaml: a worktree of its own, results on runs/<name>
        run_name = cfg.name or default_run_name(cfg.profile)
        with isolated_workspace(rootp, run_name) as work:
            logger.info("overrides given: running in the isolated workspace %s; results on branch %s%s",
                        work, BRANCH_PREFIX, run_name)
            # named before the stages run, so a failed run says where its partial results are too
            create_markdown_artifact(f"Results of this run: branch `{BRANCH_PREFIX}{run_name}` "
                                     f"(`git show {BRANCH_PREFIX}{run_name}:reports/index.md`).", key="retainrl-run-branch",
                                     description="where this flow run's dvc.lock and reports are")
            return _run_dag(work, cfg, distributed)
    with workspace_lock(rootp):
        return _run_dag(rootp, cfg, distributed)


def _run_dag(rootp: Path, cfg: FlowConfig, distributed: bool) -> dict:
    """The flow's body in one workspace: params overrides, then every selected stage in DAG order."""
    logger = get_run_logger()
    push, remote = cfg.push, cfg.remote
    dag = load_dag(rootp)
    env_list = cfg.envs or dag.envs()
    dag.select(cfg.targets or None, cfg.envs or None)  # validate names before touching params.yaml
    apply_params(rootp, cfg, env_list)
    dag = load_dag(rootp).select(cfg.targets or None, cfg.envs or None)  # matrices may have changed
    if push:
        dvcops.check_remote(rootp, remote)
    order = work_order(rootp, remote, cfg.git_url) if distributed else None
    names = dag.topological()
    changed = dvcops.changed(rootp, names)
    logger.info("%d stages selected, %d changed according to `dvc status`: %s", len(names), len(changed), sorted(changed))
    if order is not None and (fresh := [n for n in names if n not in changed]):
        # Workers see nothing of this disk: up-to-date outputs they may need go through the remote.
        dvcops.dvc(rootp, "push", *(["-r", remote] if remote else []), *fresh)

    stage_task = run_stage.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay)
    results: dict[str, dict] = {}
    inflight: dict = {}
    failed: list[tuple[str, BaseException]] = []
    pending = dag.critical_order()  # the longest remaining chain first, when several stages are ready
    while pending or inflight:
        if not failed:  # after a failure, let running stages finish but start nothing new
            for name in list(pending):
                if len(inflight) >= cfg.concurrency:
                    break
                info = dag.stages[name]
                if all(u in results for u in info.upstream):
                    pending.remove(name)
                    fut = stage_task.with_options(task_run_name=name).submit(
                        str(rootp), asdict(info), name in changed, {u: results[u] for u in info.upstream}, order)
                    inflight[fut] = name
        else:
            pending.clear()
        if not inflight:
            break
        done, _ = wait(list(inflight), timeout=0.25)
        for fut in done:
            name = inflight.pop(fut)
            try:
                results[name] = fut.result()
            except BaseException as err:  # noqa: BLE001 — the stage's own error, re-raised below
                failed.append((name, err))
    if order is not None:
        merge_results(rootp, results)
    not_run = [n for n in names if n not in results and n not in dict(failed)]
    rows = [{"stage": n, "status": ("ran" if results[n]["ran"] else "skipped") if n in results else
             ("failed" if n in dict(failed) else "not run"), "seconds": round(results.get(n, {}).get("seconds", 0.0), 2)} for n in names]
    create_table_artifact(rows, key="retainrl-stages", description="What each DVC stage did in this run")
    if failed:
        name, err = failed[0]
        logger.error("stage %s failed; %d stage(s) not run: %s", name, len(not_run), not_run)
        raise err
    _publish_reports(rootp, dag)
    if push:
        dvcops.dvc(rootp, "push", *(["-r", remote] if remote else []), *names)
        logger.info("pushed the outputs of %d stages to the DVC remote", len(names))
    return {n: {"ran": r["ran"], "seconds": r["seconds"]} for n, r in results.items()}


def _publish_reports(root: Path, dag) -> None:
    """Publish markdown reports made by the sink stages (stages nothing depends on) as artifacts."""
    sinks = [s for s in dag.stages.values() if not dag.downstream(s.name)]
    for s in sinks:
        for rel in s.outs:
            p = root / rel
            for md in ([p] if p.suffix == ".md" else sorted(p.glob("*.md")) if p.is_dir() else []):
                key = re.sub(r"[^a-z0-9-]+", "-", f"{s.name}-{md.stem}".lower()).strip("-")
                create_markdown_artifact(md.read_text(), key=key, description=f"{rel}/{md.name} made by {s.name}")
    from retainrl.pipeline.summary import write_index

    index = write_index(root)  # the cross-family page, from every family's metrics
    create_markdown_artifact(index.read_text(), key="retainrl-results", description="reports/index.md: every family's results")


def make_flow(cfg: FlowConfig):
    """The flow with the task runner the config asks for: threads here, or a dask cluster."""
    if cfg.dask is None:
        return pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(cfg.concurrency, 1)))
    from prefect_dask import DaskTaskRunner

    if cfg.dask == "local":
        runner = DaskTaskRunner(cluster_class="distributed.LocalCluster",
                                cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True,
                                                "host": "127.0.0.1", "dashboard_address": None})
    else:
        runner = DaskTaskRunner(address=cfg.dask)
    return pipeline.with_options(task_runner=runner)


def check_dask(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when the scheduler address does not answer."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(address)
    try:
        with socket.create_connection((u.hostname, u.port or 8786), timeout=timeout):
            pass
    except OSError as err:
        raise ConnectionError(f"dask scheduler {address} is unreachable: {err}") from err


def run(cfg: FlowConfig) -> dict:
    cfg.validate()
    if cfg.dask not in (None, "local"):
        check_dask(cfg.dask)
    fl = make_flow(cfg)
    return fl(root=cfg.root, targets=cfg.targets, envs=cfg.envs, profile=cfg.profile, methods=cfg.methods, seeds=cfg.seeds,
              concurrency=cfg.concurrency, retries=cfg.retries, retry_delay=cfg.retry_delay, push=cfg.push, remote=cfg.remote,
              distributed=cfg.dask is not None, git_url=cfg.git_url, name=cfg.name)


def check_server() -> None:
    """When PREFECT_API_URL is set, make sure the server answers before any work starts."""
    import urllib.request

    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as r:
            r.read()
    except Exception as err:  # noqa: BLE001
        raise ConnectionError(f"Prefect server at {url} is unreachable ({err}); start it with `make server` "
                              "or unset PREFECT_API_URL to use a temporary one") from err


def parse_args(argv: list[str] | None = None) -> FlowConfig:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="stages or matrix groups to run (with their upstream); default: all")
    p.add_argument("--root", default=".", help="project root (the directory with dvc.yaml)")
    p.add_argument("--env", dest="envs", action="append", default=[], help="restrict to an environment family (repeatable)")
    p.add_argument("--profile", help="set `profile:` in params.yaml first (smoke|default|paper)")
    p.add_argument("--methods", help="comma-separated fine-tuning methods written to <env>.finetune.methods")
    p.add_argument("--seeds", type=int, help="number of fine-tuning seeds for the active profile")
    p.add_argument("--concurrency", type=int, default=2, help="stages run at the same time (default 2)")
    p.add_argument("--retries", type=int, default=0, help="retries per stage for transient failures")
    p.add_argument("--retry-delay", type=float, default=5.0)
    p.add_argument("--push", action="store_true", help="`dvc push` the outputs at the end")
    p.add_argument("--remote", help="DVC remote name (default: the repo's default remote)")
    p.add_argument("--dask", nargs="?", const="local", help="run stages on dask: 'local' (LocalCluster) or tcp://HOST:PORT")
    p.add_argument("--dask-workers", type=int, default=2, help="LocalCluster workers (default 2)")
    p.add_argument("--git-url", help="where dask workers clone the project (default: --root; push HEAD there first)")
    p.add_argument("--name", help="with --profile/--methods/--seeds: the run's name; its results land on branch runs/NAME "
                                  "(default: PROFILE-UTCTIME)")
    a = p.parse_args(argv)
    return FlowConfig(a.root, a.targets, a.envs, a.profile, a.methods.split(",") if a.methods else None, a.seeds,
                      a.concurrency, a.retries, a.retry_delay, a.push, a.remote, a.dask, a.dask_workers, a.git_url, a.name)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    try:
        cfg.validate()
        check_server()
        load_dag(cfg.root).select(cfg.targets or None, cfg.envs or None)  # bad names fail before any flow run
        if cfg.push or cfg.dask:
            (dvcops.check_remote(cfg.root, cfg.remote))
        if not cfg.overrides:
            with workspace_lock(Path(cfg.root)):  # refuse before a flow run is even created; the flow takes it again
                pass
        run(cfg)
    except (DagError, ValueError, ConnectionError, dvcops.DvcError, StageError, WorkspaceBusy, WorkspaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, StageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
