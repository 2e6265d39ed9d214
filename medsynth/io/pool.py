"""Process pools whose workers end with the process that started them.

A worker of a plain :class:`~concurrent.futures.ProcessPoolExecutor` outlives a parent killed with
``kill -9``: it waits on its task queue for ever. Workers of :func:`process_pool` end with their parent.

multiprocessing (with subprocess, socket, ctypes ...) is imported when the first pool is made: a
conversion that needs no pool does not pay for it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int, every_s: float = 0.5) -> None:
    while True:
        time.sleep(every_s)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent(creator: int) -> None:
    """Make this process end when its parent ends, however it ends: on Linux the kernel sends it SIGKILL
    (``PR_SET_PDEATHSIG``); elsewhere a thread checks the parent every half second. ``creator`` is the
    process that made the pool (the parent itself, or the fork server's parent)."""
    import signal
    import threading

    parent = os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="medsynth-parent-watch").start()
    # the parent ended before the signal was armed: this process was already handed to init
    if os.getppid() != parent or (parent == 1 and creator != 1):
        os._exit(1)


def _init_worker(creator: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(creator)
    if initializer is not None:
        initializer(*initargs)


def fork_inherits() -> bool:
    """Whether the workers of :func:`process_pool` are forked from this process (and so start with its
    memory and modules): Linux, where the pool asks for the fork start method."""
    return sys.platform.startswith("linux")


def process_pool(max_workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A :class:`ProcessPoolExecutor` of ``max_workers`` whose workers end with this process;
    ``initializer(*initargs)`` runs in each worker as usual."""
    from concurrent.futures import ProcessPoolExecutor

    context = None
    if fork_inherits():
        import ctypes  # noqa: F401 -- here, so that forked workers inherit it instead of each importing it
        import multiprocessing

        context = multiprocessing.get_context("fork")  # explicit: Python 3.14 makes forkserver the default
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=context, initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs))
