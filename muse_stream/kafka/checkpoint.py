"""Begin, commit and abort: the progress of one stream worker, exactly-once or at-least-once, and the
classification of the errors that decide between retrying, aborting and stopping.

The rule this object keeps: nothing is committed past a record that has no output. Offsets are recorded only
once a batch's outputs are produced (`processed`), and after a failure (`fail`) it commits nothing at all, so a
consumer closing on an error path (whose revoke callback asks for a commit) cannot commit a failed batch.
"""

from __future__ import annotations

import logging
import time
from enum import Enum

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from muse_stream.errors import AbortRequired, FatalKafkaError

logger = logging.getLogger(__name__)


class ErrorAction(Enum):
    RETRY = "retry"
    ABORT = "abort"
    FATAL = "fatal"


def classify(err: KafkaError) -> ErrorAction:
    """What to do about a transactional error: retry the same call, abort and rewind, or stop."""
    if err.fatal():
        return ErrorAction.FATAL
    if err.txn_requires_abort():
        return ErrorAction.ABORT
    if err.retriable():
        return ErrorAction.RETRY
    # Anything unclassified in a transaction cannot be trusted to have left it usable.
    return ErrorAction.FATAL


def call_with_retry(what: str, fn, *args, attempts: int = 5, backoff: float = 0.2):
    """Run one transactional call; retry retriable errors (bounded), raise AbortRequired or FatalKafkaError."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args)
        except KafkaException as e:
            err: KafkaError = e.args[0]
            action = classify(err)
            if action is ErrorAction.RETRY and attempt < attempts:
                logger.warning("%s: retriable error (%s), attempt %d/%d", what, err.str(), attempt, attempts)
                time.sleep(backoff * attempt)
                continue
            if action is ErrorAction.FATAL:
                raise FatalKafkaError.wrap(what, err) from None
            # Abortable, or retriable past its bound: give the batch back to the committed offsets.
            raise AbortRequired.wrap(what, err) from None
    raise AssertionError("unreachable")


class Checkpoint:
    """What one worker processed since its last commit, and the one way it is committed or dropped.

    `producer` is a kafka.producer.OutputProducer (transactional when exactly_once); `consumer` the group
    member whose offsets are committed.
    """

    def __init__(self, producer, consumer, *, exactly_once: bool, timeout: float = 30.0) -> None:
        self.producer = producer
        self.consumer = consumer
        self.exactly_once = exactly_once
        self.timeout = timeout
        self.in_transaction = False
        self.closed = False  # after a failure: commits nothing, ever
        self.fatal = False  # after a fatal error the producer is unusable: not even an abort
        self._offsets: list[TopicPartition] = []  # next offsets to read, as of the last processed batch

    def init(self) -> None:
        """Exactly-once: register the transactional id, fencing any older producer of this worker slot and
        aborting what it left open."""
        if self.exactly_once:
            call_with_retry("init_transactions", self.producer.client.init_transactions, 60)

    def begin(self) -> None:
        if self.closed:
            raise AbortRequired("the checkpoint was closed after a failure")
        if self.exactly_once and not self.in_transaction:
            call_with_retry("begin_transaction", self.producer.client.begin_transaction)
            self.in_transaction = True

    def processed(self) -> None:
        """Call right after a batch's outputs are produced: its offsets may now be committed.

        The consumer's positions stand just after the last message it returned, and no message has been
        returned since the batch (rebalance callbacks run inside poll and consume only, never between a batch
        and this call), so they are exactly last processed + 1, read in one call instead of per message."""
        c = self.consumer
        self._offsets = [tp for tp in c.position(c.assignment()) if tp.offset >= 0]

    @property
    def pending(self) -> bool:
        return self.in_transaction if self.exactly_once else bool(self._offsets)

    def commit(self, *, wait: bool = True) -> bool:
        """Commit what was processed since the last commit; False when there was nothing to commit.

        At-least-once with wait=False: commit only if every output is already delivered, without blocking on
        a flush; False (still pending) while some are in flight. At a light load they are delivered within a
        round trip, so the offsets follow without the loop ever stopping for them."""
        if self.closed or self.fatal or not self.pending:
            return False
        if not self.exactly_once and not wait and self.producer.in_flight():
            return False
        if self.exactly_once:
            # 1. No commit over a lost write: a delivery that already failed aborts here, with its own reason.
            self.producer.raise_delivery_error()
            # 2. The next offsets to read join the transaction, with the group metadata, so that a zombie of
            #    this member, fenced by a newer generation, cannot commit them.
            if self._offsets:
                call_with_retry("send_offsets_to_transaction", self.producer.client.send_offsets_to_transaction,
                                self._offsets, self.consumer.consumer_group_metadata(), self.timeout)
            # 3. commit_transaction flushes every record first; any failed delivery makes it fail (abortable).
            call_with_retry("commit_transaction", self.producer.client.commit_transaction, self.timeout)
            self.in_transaction = False
        else:
            # 1. Every output is delivered (flush raises any failed delivery) before its input's offset moves.
            self.producer.flush(self.timeout)
            # 2. Then the offsets, synchronously.
            try:
                self.consumer.commit(offsets=self._offsets, asynchronous=False)
            except KafkaException as e:
                raise AbortRequired.wrap("offset commit", e.args[0]) from None
        self._offsets = []
        return True

    def abort(self, *, rewind: bool) -> None:
        """Drop the open transaction (at-least-once: commit nothing); with rewind, seek every assigned
        partition back to its committed offset, so the dropped batches are read again."""
        self._offsets = []
        if self.exactly_once and self.in_transaction and not self.fatal:
            try:
                call_with_retry("abort_transaction", self.producer.client.abort_transaction, self.timeout)
            except AbortRequired as e:
                raise FatalKafkaError(f"abort failed: {e}", error=e.error) from None
            self.in_transaction = False
        self.producer.discard_delivery_errors()
        if rewind:
            self._rewind()

    def _rewind(self) -> None:
        assignment = self.consumer.assignment()
        if not assignment:
            return
        try:
            committed = self.consumer.committed(assignment, timeout=self.timeout)
        except KafkaException as e:
            raise AbortRequired.wrap("reading committed offsets to rewind", e.args[0]) from None
        for tp in committed:
            if tp.offset < 0:
                tp.offset = -2  # OFFSET_BEGINNING: nothing committed yet (auto.offset.reset=earliest)
            self.consumer.seek(tp)

    def fail(self, *, fatal: bool = False) -> None:
        """After an error the loop cannot handle: commit nothing from now on, and abort the open transaction
        (best effort; if the abort cannot be sent, the broker aborts it at transaction.timeout.ms, or the next
        init_transactions of this worker slot does)."""
        self.closed = True
        self.fatal = self.fatal or fatal
        self._offsets = []
        if self.exactly_once and self.in_transaction and not self.fatal:
            try:
                self.producer.client.abort_transaction(min(self.timeout, 10.0))
            except KafkaException as e:
                logger.warning("aborting after a failure: %s", e.args[0].str())
        self.in_transaction = False
