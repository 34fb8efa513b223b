"""The one entry point behind every thin module in stages/: parse, validate, run, report errors.

``python -m stages.<stage> <env> [<method|axis>]`` loads params.yaml (active profile applied),
validates the env's section before any compute, resolves ``device: auto`` and calls the
family's function for that stage, or the generic stage with the family's answers. Bad input exits with status 2 and a one-line message that
names the key; outputs are only ever moved into place on success (see ``artifacts``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time

from retainrl.core.config import ConfigError, load_params
from retainrl.core.log import setup_logging
from retainrl.core.paths import Paths

log = logging.getLogger("retainrl.core.stage")


def main(stage: str, argv: list[str] | None = None, *, extra: str | None = None, generic=None) -> int:
    """Run ``stage``. ``generic``: the stage every family shares (``retainrl.pipeline.<stage>``),
    called as ``generic(family_module, params, paths, device[, extra])``; a family that defines
    the stage itself replaces it (NetHack's recurrent π* needs its own FAR buffer and Fisher)."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"Run the `{stage}` stage for one environment family.")
    parser.add_argument("env", help="environment family (a top-level section of params.yaml)")
    if extra:
        parser.add_argument(extra, help=f"the {extra} this stage instance runs")
    parser.add_argument("--params", default=os.environ.get("RETAINRL_PARAMS", "params.yaml"))
    args = parser.parse_args(argv)
    setup_logging()
    try:
        import torch

        from retainrl.core.device import resolve_device
        from retainrl.core.family import get_family

        family = get_family(args.env, stage)
        params = load_params(args.params, only=args.env)
        section = params.section(args.env)
        device = resolve_device(params.device)
        torch.set_num_threads(int(os.environ.get("RETAINRL_THREADS", "1")))
        fn = getattr(family, stage, None)
        if fn is None and generic is not None:
            fn = functools.partial(generic, family)
        if fn is None:
            raise ConfigError(f"env: {args.env!r} has no `{stage}` stage")
        paths = Paths(args.env)
        started = time.perf_counter()
        log.info("%s[%s%s] profile=%s device=%s", stage, args.env, f", {getattr(args, extra)}" if extra else "", params.profile, device)
        if stage == "report":
            fn(section, paths)
        elif extra:
            fn(section, paths, device, getattr(args, extra))
        else:
            fn(section, paths, device)
        log.info("%s[%s] done in %.1fs", stage, args.env, time.perf_counter() - started)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
