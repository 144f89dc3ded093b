"""Pinning for the bench's scaling runs: the broker (every thread of it) and the bench's own process (the load
generator and the readers) on one core, the workers on the others, so the workers' figures are taken with a
core the broker does not share. Linux only; the affinity of every task is restored afterwards."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def why_not_pin(broker_pid: int | None) -> str:
    """"" when the bench can pin, else which of its needs is missing: pinning needs sched_setaffinity, two cores
    or more, and a local broker whose pid we know."""
    if not hasattr(os, "sched_setaffinity"):
        return "this platform cannot pin processes to cores (no sched_setaffinity)"
    if len(os.sched_getaffinity(0)) < 2:
        return "fewer than 2 usable cores"
    if not broker_pid:
        return ("the broker's pid is unknown (pinning needs a broker on this machine started by `muse-stream "
                "kafka start` or by the bench itself)")
    return ""


def _tasks(pid: int | str) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _set(pid: int | str, cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of `pid`; returns each thread's previous affinity."""
    before = {}
    for tid in _tasks(pid):
        try:
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            continue
    return before


def _restore(before: dict[int, set[int]]) -> None:
    for tid, cpus in before.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue


@contextmanager
def kafka_side_pinned(broker_pid: int):
    """Broker and this process on the first usable core; yields the set of cores left for the workers."""
    cores = sorted(os.sched_getaffinity(0))
    kafka_core, workers = {cores[0]}, set(cores[1:])
    broker_before = _set(broker_pid, kafka_core)
    self_before = _set("self", kafka_core)
    try:
        yield workers
    finally:
        _restore(broker_before)
        _restore(self_before)
        # Threads started while pinned (the readers' clients) have ended with their runs; this process's main
        # thread is back to where it was.
        os.sched_setaffinity(0, self_before.get(os.getpid(), set(cores)))
