"""The stream loop: subscribe, take the next batch, hand it to the job, commit on the interval, and survive
aborts; nothing about scoring. A job (the scoring worker, the benchmark's copy-only ceiling) hands it a
`process(batch)` that produces the batch's outputs, and a `between_batches()` for its own updates.

The failure rule: an exception anywhere between consume and commit aborts the open transaction. An abort signal
(AbortRequired: an abortable Kafka error, a failed delivery) rewinds to the committed offsets and tries again,
with a bounded back-off; anything else stops the loop with the batch uncommitted, and closing on that path
never commits.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException

from muse_stream.errors import AbortRequired, FatalKafkaError
from muse_stream.kafka.checkpoint import Checkpoint
from muse_stream.kafka.clients import make_consumer

logger = logging.getLogger(__name__)


class InWorkerLatency:
    """Per event, the time from its batch's consume return to the return of the last produce call of that
    batch: the time the event spent inside the worker, rounded up to the batch's last output (every event of a
    batch is counted with the batch's figure, so this is an upper bound, and one call per batch).

    Kept as counts in fixed log-spaced bins (BINS_PER_DECADE per decade from 1 us to 100 s), so it costs one
    bisect per batch and the counts of several workers add up."""

    BINS_PER_DECADE = 20
    EDGES_NS: tuple[int, ...] = tuple(round(1000 * 10 ** (i / 20)) for i in range(8 * 20 + 1))  # bin i: (e[i-1], e[i]]

    def __init__(self) -> None:
        self.counts = [0] * (len(self.EDGES_NS) + 1)
        # When set, batches whose first event was written before it (Kafka timestamp, epoch ms) are not
        # counted: the bench leaves out its warm-up's events, as its end-to-end figure does.
        self.since_ms: int | None = None

    def add(self, t_taken_ns: int, t_produced_ns: int, events: int, first_ms: int = 0) -> None:
        if self.since_ms is None or first_ms >= self.since_ms:
            self.counts[bisect_left(self.EDGES_NS, t_produced_ns - t_taken_ns)] += events


@dataclass
class LoopStats:
    """Counters of the loop; a job may extend it with its own. The *_ns figures are wall time spent in each
    step (time.perf_counter_ns), summed per batch, never per event; `in_worker` is the per-event latency
    inside the worker (see InWorkerLatency), which the job records (batch_produced) because only it knows when it
    produced."""

    events_in: int = 0
    batches: int = 0
    commits: int = 0
    aborts: int = 0
    rebalances: int = 0
    early_commits: int = 0  # commits made because the worker had caught up, before the interval was out
    consume_ns: int = 0  # in next_batch, including the wait for a first event when the input is idle
    process_ns: int = 0
    commit_ns: int = 0
    batch_taken_ns: int = 0  # when the current batch's next_batch returned (perf_counter_ns)
    batch_first_ms: int = 0  # the current batch's first event's Kafka timestamp (epoch ms)
    in_worker: InWorkerLatency = field(default_factory=InWorkerLatency)

    def batch_produced(self, t_produced_ns: int, events: int) -> None:
        """The current batch's last output was produced at t_produced_ns: its events' in-worker latency."""
        self.in_worker.add(self.batch_taken_ns, t_produced_ns, events, self.batch_first_ms)

    def figures(self) -> dict:
        """Every counter as plain data (what a bench worker reports back)."""
        out = {k: v for k, v in self.__dict__.items()
               if isinstance(v, (int, float)) and k not in ("batch_taken_ns", "batch_first_ms")}
        out["in_worker_counts"] = self.in_worker.counts
        return out


class LoopHooks:
    """What a job may observe; every hook does nothing unless overridden. Called in the loop's thread."""

    def on_turn(self) -> None:
        """A loop turn begins (before the next batch is taken): liveness."""

    def on_commit(self, t_start_ns: int) -> None:
        """A commit succeeded; t_start_ns is time.perf_counter_ns() when it began."""

    def on_abort(self) -> None:
        """The open transaction was dropped."""

    def on_rebalance(self, kind: str, partitions) -> None:
        """kind: assigned, revoked or lost."""


@dataclass(frozen=True)
class LoopSettings:
    topics: tuple[str, ...]
    exactly_once: bool
    max_events: int
    max_wait_s: float
    commit_interval_s: float
    max_aborts_in_a_row: int = 10
    max_backoff_s: float = 5.0
    # Exactly-once, caught up: commit as soon as a batch is done, but keep commits to at most this share of
    # the loop's time (see CommitPacer).
    commit_share: float = 0.8


class CommitPacer:
    """When the open work is committed: the rule that makes latency follow the load.

    - Caught up (the last batch was not full: the consumer had nothing more queued), exactly-once commits as
      soon as the batch is done, since its outputs become visible only then; but not sooner than
      `cost * (1 - share) / share` after the previous commit ended, where `cost` is the moving average of what
      a commit takes, so commits never take more than `share` of the loop's time (at 0.8, the default, the
      wait after a commit is at most a quarter of one commit). A caught-up loop is otherwise idle, so the
      bound only keeps it from committing back to back; as the load rises, batches grow during each commit
      until they fill, and then the interval rule takes over.
    - Behind (full batches), commits wait for `interval`, the configured maximum, so a heavy load pays for
      one transaction per interval, not per batch.
    - At-least-once outputs are visible when produced, so an earlier commit of offsets would buy nothing but
      a blocking flush: it commits on the interval only, and when caught up without blocking (the offsets go
      once the outputs before them are delivered; see Checkpoint.commit).
    """

    def __init__(self, interval_s: float, *, early: bool, share: float = 0.8) -> None:
        self.interval = interval_s
        self.early = early
        self.gap_per_cost = (1.0 - share) / share if 0.0 < share < 1.0 else 0.0
        self.cost = 0.0  # seconds, exponentially weighted
        self.last = time.monotonic()  # when the last commit ended

    def due_at(self, caught_up: bool) -> float:
        """The monotonic time at which pending work is to be committed."""
        at = self.last + self.interval
        if caught_up and self.early:
            at = min(at, self.last + self.cost * self.gap_per_cost)
        return at

    def committed(self, seconds: float) -> None:
        self.cost = seconds if self.cost == 0.0 else 0.8 * self.cost + 0.2 * seconds
        self.last = time.monotonic()


def next_batch(consumer, max_events: int, wait: float) -> list:
    """Wait (up to `wait`) for the first message only, then take whatever else is already queued.

    Under load the queue holds a whole batch, so batches stay full; at a low rate an event is handled as
    soon as it arrives instead of waiting out the batch wait for a batch that will not fill.
    """
    first = consumer.poll(wait)
    if first is None:
        return []
    if max_events == 1:
        return [first]
    return [first, *consumer.consume(max_events - 1, 0)]


def drop_errors(msgs: list) -> list:
    """The batch without error events; a fatal consumer error stops the loop."""
    ok = []
    for m in msgs:
        err = m.error()
        if err is None:
            ok.append(m)
        elif err.fatal() or err.code() == KafkaError._FATAL:  # librdkafka hands a fatal consumer error as _FATAL
            raise FatalKafkaError.wrap("consumer", err)
        elif err.code() != KafkaError._PARTITION_EOF:
            logger.warning("consumer error (continuing): %s", err.str())
    return ok


class StreamLoop:
    """One consumer in the group, one output producer, one checkpoint; `run` until `stop` is set."""

    def __init__(self, settings: LoopSettings, *, consumer_config: dict, producer, process: Callable[[list], None],
                 between_batches: Callable[[], None] | None = None, hooks: LoopHooks | None = None,
                 stats: LoopStats | None = None, stop: threading.Event | None = None, name: str = "worker",
                 consumer=None) -> None:
        self.settings = settings
        self.producer = producer
        self.process = process
        self.between_batches = between_batches or (lambda: None)
        self.hooks = hooks or LoopHooks()
        self.stats = stats if stats is not None else LoopStats()
        self.stop = stop or threading.Event()
        self.name = name
        self.assigned = False
        # `consumer` is for tests of the step order with a fake; workers always build their own.
        self.consumer = consumer if consumer is not None else make_consumer(consumer_config, f"{name} consumer")
        self.checkpoint = Checkpoint(producer, self.consumer, exactly_once=settings.exactly_once)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stop is set, then commit what is open and leave the group. Raises what stopped it."""
        s = self.settings
        try:
            self.checkpoint.init()
            self.consumer.subscribe(list(s.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_lost)
            self._turns()
            self._final_commit()
        except FatalKafkaError:
            self.checkpoint.fail(fatal=True)
            raise
        except BaseException:
            self.checkpoint.fail()  # before close: its revoke callback must not commit the failed batch
            raise
        finally:
            self._close()

    def _turns(self) -> None:
        s, cp, stats, hooks = self.settings, self.checkpoint, self.stats, self.hooks
        aborts_in_a_row = 0
        pacer = CommitPacer(s.commit_interval_s, early=s.exactly_once, share=s.commit_share)
        caught_up, deferred = True, False
        clock = time.perf_counter_ns
        while not self.stop.is_set():
            hooks.on_turn()
            self.between_batches()
            wait = s.max_wait_s
            if cp.pending:  # wait for more input only until the open work is due (or, deferred, briefly)
                wait = max(0.001 if deferred else 0.0, min(wait, pacer.due_at(caught_up) - time.monotonic()))
            t0 = clock()
            msgs = next_batch(self.consumer, s.max_events, wait)
            stats.batch_taken_ns = t1 = clock()
            stats.consume_ns += t1 - t0
            caught_up = len(msgs) < s.max_events
            try:
                if msgs:
                    msgs = drop_errors(msgs)
                if msgs:
                    stats.batch_first_ms = msgs[0].timestamp()[1]
                    cp.begin()
                    self.process(msgs)
                    cp.processed()
                    stats.events_in += len(msgs)
                    stats.batches += 1
                    stats.process_ns += clock() - t1
                now = time.monotonic()
                if cp.pending and now >= pacer.due_at(caught_up):
                    t2 = clock()
                    early = now < pacer.last + pacer.interval
                    # At-least-once and caught up, offsets wait for in-flight outputs without blocking the loop
                    # (until twice the interval: then the flush waits, as it does for full batches).
                    block = s.exactly_once or not caught_up or now >= pacer.last + 2 * pacer.interval
                    if cp.commit(wait=block):
                        stats.commits += 1
                        stats.early_commits += early
                        hooks.on_commit(t2)
                        aborts_in_a_row = 0
                    t3 = clock()
                    stats.commit_ns += t3 - t2
                    deferred = cp.pending
                    if not deferred:
                        pacer.committed((t3 - t2) / 1e9)
            except AbortRequired as e:
                aborts_in_a_row += 1
                if aborts_in_a_row > s.max_aborts_in_a_row:
                    # The same batch keeps failing: stop and say so rather than spin on it forever.
                    raise FatalKafkaError(f"{aborts_in_a_row} transactions in a row aborted; last: {e}",
                                          error=e.error) from None
                logger.warning("%s: aborting the open transaction and re-reading: %s", self.name, e)
                self._abort(rewind=True)
                self.stop.wait(min(s.max_backoff_s, 0.1 * 2 ** aborts_in_a_row))

    def _final_commit(self, when: str = "final") -> None:
        """Commit what is open before the partitions go (a clean stop, or a revoke); if that fails, abort:
        the next owner re-reads those events."""
        try:
            if self.checkpoint.commit():
                self.stats.commits += 1
        except AbortRequired as e:
            logger.warning("%s: %s commit failed (%s); aborting, the next owner re-reads", self.name, when, e)
            self._abort(rewind=False)

    def _abort(self, *, rewind: bool) -> None:
        self.checkpoint.abort(rewind=rewind)
        self.stats.aborts += 1
        self.hooks.on_abort()

    def _close(self) -> None:
        try:
            self.consumer.close()  # leaves the group; after a failure its revoke commits nothing
        except (KafkaException, RuntimeError, AbortRequired) as e:
            logger.warning("%s: closing the consumer: %s", self.name, e)
        if not self.checkpoint.fatal:
            self.producer.close()

    # ---- rebalances ---------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions) -> None:
        self.stats.rebalances += 1
        self.assigned = True
        self.hooks.on_rebalance("assigned", partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        self.stats.rebalances += 1
        self.hooks.on_rebalance("revoked", partitions)
        # Revoked partitions' processed work is committed before they go, so the next owner starts after it.
        self._final_commit("revoke")
        self.assigned = False

    def _on_lost(self, consumer, partitions) -> None:
        self.hooks.on_rebalance("lost", partitions)
        logger.warning("%s: partitions lost; aborting the open transaction", self.name)
        self._abort(rewind=False)
        self.assigned = False
