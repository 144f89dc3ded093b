"""Worker processes for a bench run, and what /proc says about them (CPU time, peak RSS).

Each worker is a real process (multiprocessing, spawn), like `muse-stream run --workers N`: it imports
everything, reports "imported", waits at a gate so that all workers of a run start together, runs a
runtime.Worker (or the ceiling loop) until SIGTERM, and reports its counters, CPU and peak RSS.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

from muse_stream.config import Settings
from muse_stream.errors import MuseError

logger = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(MuseError):
    """A bench run could not complete (a worker failed, or a bounded wait ran out)."""


def proc_cpu_seconds(pid: int | str = "self") -> float | None:
    """utime + stime of a process, in seconds, from /proc/<pid>/stat (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def proc_status_kb(pid: int | str, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_busy_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat, to tell how loaded the whole machine was."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def _worker_class():
    """runtime.Worker, or a candidate named by MUSE_BENCH_WORKER_CLASS=module:Class (to measure a change to
    the loop before making it)."""
    name = os.environ.get("MUSE_BENCH_WORKER_CLASS")
    if not name:
        from muse_stream.worker.runtime import Worker

        return Worker
    import importlib

    module, _, cls = name.partition(":")
    return getattr(importlib.import_module(module), cls)


def _held(w, between, go):
    """between_batches that keeps the worker's partitions paused until `go` is set (every worker of the run
    has its partitions), so that with several workers the first to join does not read most of the input before
    the group has formed. The loop still polls meanwhile, which is how the group forms."""
    state = {"released": False}

    def between_held() -> None:
        if not state["released"]:
            consumer = w.loop.consumer if w.loop is not None else None
            if go.is_set():
                state["released"] = True
                if consumer is not None:
                    consumer.resume(consumer.assignment())
            elif consumer is not None:
                consumer.pause(consumer.assignment())  # again after each rebalance: a new assignment is not paused
        between()

    return between_held


def _child(kind: str, settings: Settings, slot: int, output_topics: list[str], gate, reports, verbose: bool,
           cpus: set[int] | None = None, go=None, measure=None) -> None:
    from muse_stream.logs import setup_logging
    from muse_stream.worker.supervisor import _die_with_parent

    _die_with_parent()
    setup_logging(verbose=verbose)
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
        # Synthetic traffic drifts from the synthetic calibration by construction: not worth a warning here.
        logging.getLogger("muse_stream.telemetry.drift").setLevel(logging.ERROR)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    import xgboost  # noqa: F401 - imported before the gate, so import time is not counted as work

    from muse_stream.bench.ceiling import CeilingWorker

    reports.put(("imported", slot, os.getpid(), None))
    if not gate.wait(120):
        reports.put(("error", slot, os.getpid(), "the gate never opened"))
        return
    if cpus:
        os.sched_setaffinity(0, cpus)  # a pinned run: this worker on the cores it was given
    cpu0 = proc_cpu_seconds()
    if kind == "ceiling":
        w = CeilingWorker(settings, slot=slot, output_topics=output_topics, stop=stop)
    elif kind == "state-floor":
        from muse_stream.bench.state_floor import FloorWorker

        w = FloorWorker(settings, slot=slot, stop=stop)
    else:
        w = _worker_class()(settings, slot=slot, stop=stop)
    if go is not None:
        w.between_batches = _held(w, w.between_batches, go)
    if measure is not None:
        threading.Thread(target=_measure_from, args=(w, measure, stop), daemon=True).start()

    def _watch_assignment():
        while not stop.is_set():
            if w.assigned:
                reports.put(("assigned", slot, os.getpid(), time.time()))
                return
            time.sleep(0.005)

    threading.Thread(target=_watch_assignment, daemon=True).start()
    error = None
    try:
        w.run()
    except Exception as e:  # noqa: BLE001 - reported to the bench, which fails the run
        error = f"{type(e).__name__}: {e}"
    counters = w.stats.figures()  # the loop's counters and step timers (and the scoring job's)
    reports.put(("done", slot, os.getpid(), {
        "error": error, "counters": counters, "cpu_s": (proc_cpu_seconds() or 0.0) - (cpu0 or 0.0),
        "peak_rss_kb": proc_status_kb("self", "VmHWM"),
    }))


def _measure_from(w, since, stop: threading.Event) -> None:
    """Once the bench has set where its warm-up ends (`since`, epoch ms; 0 until then), the in-worker latency
    counts only batches of events written after it: the same events as the end-to-end latency's. A raw shared
    value, polled: an Event's set() could block forever on a lock a killed worker held in its wait."""
    while not stop.wait(0.05):
        value = since.value
        if value > 0:
            w.stats.in_worker.since_ms = int(value)
            return


@dataclass
class WorkerGroup:
    """W worker processes of one run: start (gated), wait for assignment, sample, stop, collect."""

    kind: str  # "runtime", "ceiling" or "state-floor" (bench/state_floor.py)
    settings: Settings
    workers: int
    output_topics: list[str] = field(default_factory=list)
    verbose: bool = False
    cpus: set[int] | None = None  # pin every worker to these cores
    hold: bool = False  # workers read nothing until every one of them has partitions (see _held)

    def __post_init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._gate = ctx.Event()
        self._go = ctx.Event() if self.hold else None
        self._reports = ctx.Queue()
        self._measure = ctx.RawValue("d", 0.0)
        self.procs = [ctx.Process(target=_child, name=f"bench-{self.kind}-{i}",
                                  args=(self.kind, self.settings, i, self.output_topics, self._gate,
                                        self._reports, self.verbose, self.cpus, self._go, self._measure))
                      for i in range(self.workers)]
        self.pids: dict[int, int] = {}
        self.assigned_at: dict[int, float] = {}
        self.done: dict[int, dict] = {}
        self.errors: list[str] = []

    def _drain(self, timeout: float) -> bool:
        try:
            kind, slot, pid, data = self._reports.get(timeout=timeout)
        except queue.Empty:
            return False
        if kind == "imported":
            self.pids[slot] = pid
        elif kind == "assigned":
            self.assigned_at[slot] = data
            if self._go is not None and len(self.assigned_at) == self.workers:
                self._go.set()
        elif kind == "done":
            self.done[slot] = data
            if data["error"]:
                self.errors.append(f"worker {slot}: {data['error']}")
        elif kind == "error":
            self.errors.append(f"worker {slot}: {data}")
        return True

    def _wait_for(self, what: str, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.errors:
                raise BenchError("; ".join(self.errors))
            dead = [p.name for p in self.procs if p.exitcode is not None and p.exitcode != 0]
            if dead:
                raise BenchError(f"worker process(es) exited: {', '.join(dead)}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for workers to {what}")
            self._drain(0.1)

    def start(self, *, timeout: float = 120.0) -> None:
        """Start the processes, wait until each has imported everything, then open the gate for all at once."""
        for p in self.procs:
            p.start()
        self._wait_for("import", lambda: len(self.pids) == self.workers, timeout)
        self._gate.set()

    def measure_from(self, since_ms: float) -> None:
        """Every worker's in-worker latency counts only events written at or after since_ms (epoch ms)."""
        self._measure.value = since_ms

    def wait_assigned(self, timeout: float = 60.0) -> None:
        self._wait_for("join the group", lambda: len(self.assigned_at) == self.workers, timeout)

    def stable_since(self) -> float | None:
        """Wall time at which the last worker got its first assignment (the group's start-up rebalance is
        over); None while some worker has none yet."""
        if len(self.assigned_at) < self.workers:
            return None
        return max(self.assigned_at.values())

    def check(self) -> None:
        """Raise when a worker has failed (non-blocking)."""
        while self._drain(0):
            pass
        if self.errors:
            raise BenchError("; ".join(self.errors))
        dead = [p.name for p in self.procs if p.exitcode is not None]
        if dead:
            raise BenchError(f"worker process(es) exited early: {', '.join(dead)}")

    def cpu_seconds(self) -> dict[int, float | None]:
        return {slot: proc_cpu_seconds(pid) for slot, pid in self.pids.items()}

    def stop(self, *, timeout: float = 60.0) -> None:
        """SIGTERM every worker (each commits its open transaction and leaves the group), then collect."""
        started = [p for p in self.procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + timeout
        while len(self.done) < len(self.pids) and time.monotonic() < deadline:
            if not self._drain(0.2) and all(not p.is_alive() for p in started):
                while self._drain(0.2):
                    pass
                break
        for p in started:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                logger.warning("%s did not stop within %.0fs; killing it", p.name, timeout)
                p.kill()
                p.join(5)
                self.errors.append(f"{p.name} had to be killed")
        self._reports.close()
