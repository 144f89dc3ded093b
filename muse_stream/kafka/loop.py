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
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

from muse_stream.errors import AbortRequired, FatalKafkaError
from muse_stream.kafka.checkpoint import Checkpoint
from muse_stream.kafka.clients import make_consumer

logger = logging.getLogger(__name__)


@dataclass
class LoopStats:
    """Counters of the loop; a job may extend it with its own."""

    events_in: int = 0
    batches: int = 0
    commits: int = 0
    aborts: int = 0
    rebalances: int = 0


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
        last_commit = time.monotonic()
        while not self.stop.is_set():
            hooks.on_turn()
            self.between_batches()
            msgs = next_batch(self.consumer, s.max_events, s.max_wait_s)
            try:
                if msgs:
                    msgs = drop_errors(msgs)
                if msgs:
                    cp.begin()
                    self.process(msgs)
                    cp.processed()
                    stats.events_in += len(msgs)
                    stats.batches += 1
                if time.monotonic() - last_commit >= s.commit_interval_s:
                    t0 = time.perf_counter_ns()
                    if cp.commit():
                        stats.commits += 1
                        hooks.on_commit(t0)
                        aborts_in_a_row = 0
                    last_commit = time.monotonic()
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
