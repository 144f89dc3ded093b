"""Running N worker processes in one consumer group (the GIL makes a process the unit of parallelism)."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import signal
import sys

from muse_stream.config import Settings

logger = logging.getLogger(__name__)


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM when its supervisor dies, even by SIGKILL, so none is left behind.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _child(settings: Settings, slot: int, verbose: bool) -> None:
    from muse_stream.logs import setup_logging
    from muse_stream.worker.runtime import run_worker

    _die_with_parent()
    setup_logging(verbose=verbose, fmt=settings.telemetry.log_format)
    sys.exit(run_worker(settings, slot))


def run_workers(settings: Settings, *, workers: int, first_slot: int = 0, verbose: bool = False) -> int:
    """Run `workers` processes (slots first_slot..); forward SIGTERM/SIGINT; exit non-zero if any failed."""
    if workers == 1:
        from muse_stream.worker.runtime import run_worker

        return run_worker(settings, first_slot)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(settings, first_slot + i, verbose), name=f"muse-worker-{first_slot + i}")
             for i in range(workers)]
    for p in procs:
        p.start()

    def _forward(signum, frame):
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each finishes or aborts its transaction

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        logger.error("workers failed: %s", ", ".join(failed))
        return 1
    return 0
