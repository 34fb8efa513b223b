"""Worker processes that die with the stage that started them.

A stage killed with SIGKILL (a preempted job, `kill -9`, the kill-and-resume tests) cannot tell
its process pool to stop: the spawned workers would play on as orphans, still writing into the
stage's checkpoint folder while the rerun resumes from it. Linux's ``PR_SET_PDEATHSIG`` has the
kernel send each worker SIGKILL the moment its parent dies, so a rerun never shares its
checkpoints with a ghost of the killed run. Elsewhere (macOS) the call is a no-op and the worker
only checks that its parent is still alive when it starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the call above: no signal would come
        os._exit(1)


def pool_initializer(parent_pid: int, init: Callable[..., None] | None = None, *args) -> None:
    """A ``ProcessPoolExecutor`` initializer: :func:`die_with_parent`, then the pool's own ``init``.

    Use as ``initializer=pool_initializer, initargs=(os.getpid(), init, *init_args)``; the pool
    must be created by the stage's main thread (the signal follows the thread that forked)."""
    die_with_parent(parent_pid)
    if init is not None:
        init(*args)
