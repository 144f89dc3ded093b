"""The `run` supervisor: N worker processes in one consumer group (the GIL makes a process the unit of
parallelism), each restarted when it crashes or stalls, all stopped within a bounded time on SIGTERM.

Liveness comes from a heartbeat in shared memory, not from the metrics endpoint: each worker writes the time of
its latest loop turn (time.monotonic, one system-wide clock on Linux) into a `multiprocessing.Value('d')`. A
worker stuck inside a librdkafka call (which can block past its own timeout) stops writing it, and is killed
and restarted from outside. A restarted slot keeps its transactional id and static group membership, so it
fences its dead predecessor's transaction and takes back its partitions without a rebalance of the others.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import multiprocessing as mp
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_exits

from confluent_kafka import Consumer, Producer

from muse_stream.config import Settings
from muse_stream.errors import ConfigError
from muse_stream.kafka.clients import (
    check_reachable,
    input_consumer_config,
    make_client,
    worker_producer_config,
)
from muse_stream.worker.exits import FENCED_EXIT

logger = logging.getLogger(__name__)

NEVER = 0.0  # heartbeat value: not yet beaten since the (re)start
NO_HEARTBEAT = -1.0  # heartbeat value: this worker cannot beat (its run_worker takes no heartbeat)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
TICK_S = 0.25  # how often exits, stalls and due restarts are looked at
GIVE_UP_EXIT = 1
PREFLIGHT_S = 10.0  # how long `run` waits for the cluster's first answer: with start-up, one line within 15 s


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM when its supervisor dies, even by SIGKILL, so none is left behind.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _beater(value):
    """The zero-arg callable a worker calls every loop turn: one store of a double, no lock, no syscall
    beyond the clock read (a lock held by a SIGKILLed worker would hang the supervisor that reads it)."""
    clock = time.monotonic

    def heartbeat() -> None:
        value.value = clock()

    return heartbeat


def _child(settings: Settings, slot: int, verbose: bool, beat=None) -> None:
    """A worker process's entry (spawned): logging, then the worker; its return code is the exit code."""
    from muse_stream.logs import setup_logging
    from muse_stream.worker.runtime import run_worker

    _die_with_parent()
    setup_logging(verbose=verbose, fmt=settings.telemetry.log_format)
    kwargs = {}
    if beat is not None:
        if "heartbeat" in inspect.signature(run_worker).parameters:
            kwargs["heartbeat"] = _beater(beat)
        else:
            beat.value = NO_HEARTBEAT  # the supervisor then restarts this worker on exit only
    sys.exit(run_worker(settings, slot, **kwargs))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Slot:
    slot: int
    beat: object  # the shared heartbeat Value
    proc: mp.process.BaseProcess | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # back-off: when the next start is due
    failures: deque = field(default_factory=deque)  # monotonic times of failures within the last minute
    restarts: int = 0
    stalled_for: float | None = None  # set when the supervisor killed it for not beating
    done: bool = False  # exited cleanly, or fenced by another holder of the slot: not restarted
    fenced: bool = False
    warned_no_beat: bool = False

    @property
    def name(self) -> str:
        return f"muse-worker-{self.slot}"


class Supervisor:
    """Starts the workers, restarts failed or stalled ones, and stops them all on a signal or on giving up."""

    def __init__(self, settings: Settings, *, workers: int, first_slot: int = 0, verbose: bool = False) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.settings = settings
        self.rt = settings.runtime
        self.verbose = verbose
        self._ctx = mp.get_context("spawn")  # a fresh interpreter: no librdkafka threads inherited via fork
        self.slots = [_Slot(first_slot + i, self._ctx.Value("d", NEVER, lock=False)) for i in range(workers)]
        self._stop_signal: int | None = None

    # ---- signals ---------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        # Only a flag: the loop does the work within one tick, so a signal never waits on a stuck worker.
        if self._stop_signal is None:
            self._stop_signal = signum

    # ---- starting, exits, stalls -----------------------------------------------------------------

    def _start(self, s: _Slot) -> None:
        s.beat.value = NEVER
        s.stalled_for = None
        s.restart_at = None
        s.proc = self._ctx.Process(target=_child, args=(self.settings, s.slot, self.verbose, s.beat),
                                   name=s.name, daemon=False)
        s.proc.start()
        s.started_at = time.monotonic()
        logger.info("worker slot %d started (pid %d)", s.slot, s.proc.pid)

    def _backoff(self, failures_in_window: int) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures_in_window - 1))

    def _on_exit(self, s: _Slot, now: float) -> str | None:
        """Handle a worker that has exited; return a reason to give up, or None."""
        code = s.proc.exitcode
        s.proc.join()
        s.proc.close()
        s.proc = None
        if code == 0 and s.stalled_for is None:
            s.done = True
            logger.info("worker slot %d exited cleanly; not restarting it", s.slot)
            return None
        if code == FENCED_EXIT and s.stalled_for is None:
            s.done = s.fenced = True
            logger.error("worker slot %d was fenced: another worker holds slot %d (another `muse-stream run` with "
                         "group %r and the same slots?); this run no longer runs it", s.slot, s.slot,
                         self.rt.group_id, extra={"fields": {"event": "worker_fenced", "worker": s.slot}})
            return None
        how = describe_exit(code)
        if s.stalled_for is not None:
            how += f" after a stall (no heartbeat for {s.stalled_for:.0f}s)"
        s.failures.append(now)
        while s.failures and now - s.failures[0] > 60.0:
            s.failures.popleft()
        if len(s.failures) > self.rt.max_restarts_per_minute:
            return (f"worker slot {s.slot} failed {len(s.failures)} times within a minute (last: {how}); "
                    f"runtime.max_restarts_per_minute is {self.rt.max_restarts_per_minute}")
        delay = self._backoff(len(s.failures))
        s.restarts += 1
        s.restart_at = now + delay
        logger.warning("worker slot %d %s; restart %d (%d in the last minute) in %.1fs",
                       s.slot, how, s.restarts, len(s.failures), delay,
                       extra={"fields": {"event": "worker_restart", "worker": s.slot, "exit": code,
                                         "stalled": s.stalled_for is not None, "restarts": s.restarts}})
        return None

    def _check_stall(self, s: _Slot, now: float) -> None:
        beat = s.beat.value
        if beat == NO_HEARTBEAT:
            if not s.warned_no_beat:
                s.warned_no_beat = True
                logger.warning("worker slot %d gives no heartbeat: it is restarted when it exits, but a stall "
                               "inside it is not detected", s.slot)
            return
        if beat > NEVER:
            silent, limit = now - beat, self.rt.stall_after_s
        else:
            silent, limit = now - s.started_at, self.rt.stall_after_s + self.rt.startup_grace_s
        if silent > limit and s.stalled_for is None:
            s.stalled_for = silent
            phase = "" if beat > NEVER else " since its start"
            logger.error("worker slot %d (pid %d) has not turned its loop for %.0fs%s; killing it",
                         s.slot, s.proc.pid, silent, phase)
            s.proc.kill()  # SIGKILL: a thread stuck inside librdkafka answers nothing gentler

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until a stop signal, giving up, or every worker has exited cleanly; return the exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for s in self.slots:
                if self._stop_signal is None:
                    self._start(s)
            give_up = None
            while self._stop_signal is None and give_up is None:
                live = [s.proc.sentinel for s in self.slots if s.proc is not None]
                if not live and all(s.done for s in self.slots):
                    return FENCED_EXIT if any(s.fenced for s in self.slots) else 0
                wait_for_exits(live, timeout=TICK_S)
                now = time.monotonic()
                for s in self.slots:
                    if s.proc is not None and s.proc.exitcode is not None:
                        give_up = give_up or self._on_exit(s, now)
                    elif s.proc is not None:
                        self._check_stall(s, now)
                    elif s.restart_at is not None and now >= s.restart_at and give_up is None:
                        self._start(s)
            if give_up is not None:
                logger.error("giving up: %s; stopping the other workers", give_up,
                             extra={"fields": {"event": "supervisor_gave_up"}})
                self._stop_all()
                return GIVE_UP_EXIT
            logger.info("signal %d: stopping %d worker(s), up to %.0fs for them to finish", self._stop_signal,
                        sum(s.proc is not None for s in self.slots), self.rt.shutdown_grace_s)
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> int:
        """SIGTERM every live worker, SIGKILL whatever is left after the grace; 0 when all stopped cleanly."""
        procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            if p.exitcode is None:
                p.terminate()  # each finishes or aborts its open transaction and leaves
        deadline = time.monotonic() + self.rt.shutdown_grace_s
        while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
            wait_for_exits([p.sentinel for p in procs if p.exitcode is None],
                           timeout=max(0.0, min(TICK_S, deadline - time.monotonic())))
        unclean = []
        for p in procs:
            if p.exitcode is None:
                logger.error("%s (pid %d) did not stop within %.0fs; killing it", p.name, p.pid,
                             self.rt.shutdown_grace_s)
                p.kill()
            p.join(5)
            # A worker still importing when SIGTERM came dies by the signal itself: that is a clean stop too.
            if p.exitcode not in (0, -signal.SIGTERM):
                unclean.append(f"{p.name} ({describe_exit(p.exitcode)})")
        for s in self.slots:
            s.proc = None
        if unclean:
            logger.error("workers that did not stop cleanly: %s", ", ".join(unclean))
            return 1
        return 0


def check_metrics_ports(settings: Settings, *, first_slot: int, workers: int) -> None:
    """ConfigError, before any worker starts, when a worker slot's metrics port is taken (most often by another
    `run` of the same slots): each worker would otherwise fail at its start and be restarted until `run` gave up."""
    tel = settings.telemetry
    if not tel.metrics_port:
        return
    for slot in range(first_slot, first_slot + workers):
        port = tel.metrics_port + slot
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the endpoint itself binds
            try:
                probe.bind((tel.metrics_host, port))
            except OSError as e:
                raise ConfigError(f"telemetry.metrics_port: {tel.metrics_host}:{port} (metrics_port + worker slot "
                                  f"{slot}) is in use ({e.strerror}): another `muse-stream run` of these slots? "
                                  "Give this run another metrics_port or --slot") from None


def preflight(settings: Settings, *, first_slot: int = 0, timeout: float = PREFLIGHT_S) -> None:
    """Stop `run` before any worker starts, with one line, on what no restart can fix: an invalid
    [kafka.client] value (ConfigError naming the property, never its value), credentials the cluster
    refuses (KafkaOpError naming the address, mechanism and user), or no cluster answering at the address
    within `timeout` (a wrong address would otherwise restart workers for ever). Once running, the
    supervisor rides out outages: workers that lose the cluster are restarted with back-off."""
    rdlog = logging.getLogger("muse_stream.librdkafka")
    producer, errors = make_client(Producer, worker_producer_config(settings), "run")
    consumer, consumer_errors = make_client(Consumer, input_consumer_config(settings, slot=first_slot), "run")
    # Made only to check its settings: whether the cluster answers is check_reachable's to say, in one line.
    consumer_errors.quiet = rdlog.disabled = True
    try:
        consumer.close()
    finally:
        rdlog.disabled = False
    check_reachable(producer, settings, timeout, errors=errors)


def unserved_intents(settings: Settings) -> dict[str, list[str]]:
    """Intent -> the tenants that allow it (not suspended, no version pinned for it) while no version of it
    is active on the models topic: their events for it become dead letters (reason no_active_model)."""
    from muse_stream.models.store import read_models
    from muse_stream.tenants import read_tenants

    reg = read_models(settings)
    tenants = read_tenants(settings) or {t.tenant_id: t for t in settings.tenants}
    out: dict[str, list[str]] = {}
    for tid, cfg in sorted(tenants.items()):
        if cfg.suspended:
            continue
        for intent in cfg.intents:
            if intent not in reg.activations and intent not in cfg.pinned_versions:
                out.setdefault(intent, []).append(tid)
    return out


def warn_unserved(settings: Settings) -> dict[str, list[str]]:
    """A warning at start per allowed intent with no active model: `run` is otherwise silent about it."""
    from muse_stream.errors import KafkaOpError

    try:
        unserved = unserved_intents(settings)
    except KafkaOpError as e:
        # Topics not there (yet): the workers say so themselves, restart, and give up by their own rule.
        logger.debug("no check for intents without a model: %s", e)
        return {}
    for intent, tids in sorted(unserved.items()):
        logger.warning("intent %s has no active model: events of %s for it go to the dead-letter topic %s "
                       "(reason no_active_model) until one is published with --activate",
                       intent, ", ".join(tids), settings.topics.deadletter,
                       extra={"fields": {"event": "no_active_model", "intent": intent, "tenants": tids}})
    return unserved


def run_workers(settings: Settings, *, workers: int, first_slot: int = 0, verbose: bool = False) -> int:
    """Run `workers` supervised processes (slots first_slot..); return the exit code for `run`."""
    check_metrics_ports(settings, first_slot=first_slot, workers=workers)
    preflight(settings, first_slot=first_slot)
    warn_unserved(settings)
    return Supervisor(settings, workers=workers, first_slot=first_slot, verbose=verbose).run()
