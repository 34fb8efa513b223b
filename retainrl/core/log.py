"""Logging set-up shared by stages, flows and benchmarks (one format, level from RETAINRL_LOG)."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once; stages call this first so every message has a source."""
    level = (level or os.environ.get("RETAINRL_LOG", "INFO")).upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
