"""The worker: consume a micro-batch, score it, produce decisions and dead letters, commit — exactly once.

One worker is one process with one consumer (in the group) and one producer (transactional, with a stable
transactional.id per worker slot, so a restarted slot fences its own zombie). Model and tenant updates are
applied between batches, never inside one.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import FatalKafkaError, KafkaOpError
from muse_stream.kafka.checkpoint import AbortRequired, call_with_retry, commit_transaction
from muse_stream.kafka.clients import (
    input_consumer_config,
    next_batch,
    produce_waiting,
    worker_producer_config,
)
from muse_stream.kafka.table import TopicTable
from muse_stream.kafka.topics import TopicSpec, create_topics, existing_topics
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.deadletter import headers as dead_headers
from muse_stream.scoring.scorer import BatchOutput, BatchScorer
from muse_stream.scoring.shadow import ShadowScorer
from muse_stream.telemetry import NoTelemetry, Telemetry
from muse_stream.tenants import TenantRegistry

logger = logging.getLogger(__name__)
MAX_ABORTS_IN_A_ROW = 10


@dataclass
class WorkerStats:
    """Counters a worker keeps (aggregated per batch); telemetry and tests read them."""

    events_in: int = 0
    decisions: int = 0
    dead_letters: int = 0
    batches: int = 0
    commits: int = 0
    aborts: int = 0
    rebalances: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    scored: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, out: BatchOutput, n_in: int) -> None:
        self.events_in += n_in
        self.batches += 1
        self.decisions += len(out.decisions)
        self.dead_letters += len(out.dead)
        for d in out.dead:
            self.dead_by_reason[d.reason.value] = self.dead_by_reason.get(d.reason.value, 0) + 1
        for k, v in out.scored.items():
            self.scored[k] = self.scored.get(k, 0) + v


def transactional_id(settings: Settings, slot: int) -> str:
    """Stable per worker slot across restarts: the restarted slot fences its predecessor's open transaction."""
    return f"{settings.runtime.transactional_id_prefix}-{settings.runtime.group_id}-{slot}"


class Worker:
    def __init__(self, settings: Settings, *, slot: int = 0, input_topics: list[str] | None = None,
                 output_topic=None, stop: threading.Event | None = None, batch_hook=None) -> None:
        self.settings = settings
        self.slot = slot
        self.exactly_once = settings.runtime.processing_guarantee == "exactly-once"
        self.input_topics = input_topics or settings.topics.inputs
        self.stop_event = stop or threading.Event()
        self.stats = WorkerStats()
        self.tenants = TenantRegistry(settings)
        self.models = ModelRegistry()
        self.shadow = ShadowScorer(settings, self.models)
        self.scorer = BatchScorer(self.tenants, self.models, max_abs_feature=settings.runtime.max_abs_feature,
                                  max_event_bytes=settings.runtime.max_event_bytes, output_topic=output_topic)
        self._batch_hook = batch_hook  # called with (output, n_in) after each batch; telemetry uses it
        self._in_txn = False
        self._uncommitted = False  # consumed messages whose offsets are not yet committed
        self._known_topics: set[str] = set()
        self._delivery_error: KafkaError | None = None
        self._fatal = False  # after a fatal error the producer is unusable: no commit, abort or flush on the way out
        self.assigned = False
        self.ready = False
        # Metrics, traces, drift, health endpoint: per batch, never per event.
        self.telemetry = Telemetry(self) if settings.telemetry.enabled else NoTelemetry()

    # ---- set-up ------------------------------------------------------------------------------

    def _make_clients(self) -> None:
        s = self.settings
        existing_topics(s, timeout=15)  # fail in seconds, with the address, when no cluster answers
        if self.exactly_once:
            self.producer = Producer(worker_producer_config(s, transactional_id=transactional_id(s, self.slot)))
            call_with_retry("init_transactions", self.producer.init_transactions, 60)
        else:
            self.producer = Producer(worker_producer_config(s, on_delivery=self._on_delivery))
        self.consumer = Consumer(input_consumer_config(s))
        self.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self._models_table = TopicTable(s, s.topics.models)
        self._tenants_table = TopicTable(s, s.topics.tenants)
        for k, v in self._models_table.catch_up():
            self.models.apply(k, v)
        for k, v in self._tenants_table.catch_up():
            self.tenants.apply(k, v)
        self._ensure_output_topics()

    def _on_delivery(self, err, msg) -> None:
        # At-least-once only: keep the first failure and raise it before the next offset commit.
        if err is not None and self._delivery_error is None:
            self._delivery_error = err

    def _ensure_output_topics(self) -> None:
        """Create the decision topic of any tenant seen for the first time, before anything is produced to it."""
        wanted = {self.scorer.output_topic(t) for t in self.tenants.tenants}
        wanted.add(self.settings.topics.deadletter)
        wanted |= {self.settings.topics.shadow_topic(intent) for intent in self.shadow.active()}
        new = wanted - self._known_topics
        if new:
            t = self.settings.topics
            create_topics(self.settings, [TopicSpec(n, t.decisions_partitions) for n in sorted(new)],
                          replication_factor=t.replication_factor)
            self._known_topics |= new

    def _refresh(self) -> None:
        """Between batches: apply new models and tenant records."""
        gen = self.models.generation
        for k, v in self._models_table.updates():
            self.models.apply(k, v)
        if self.models.generation != gen:
            self._ensure_output_topics()  # a new shadow version writes to its intent's shadow topic
        self.telemetry.on_models()
        tv = self.tenants.version
        for k, v in self._tenants_table.updates():
            self.tenants.apply(k, v)
        if self.tenants.version != tv:
            self._ensure_output_topics()

    # ---- rebalances --------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions) -> None:
        self.stats.rebalances += 1
        self.assigned = True
        self.telemetry.on_rebalance("assigned", partitions)
        logger.info("worker %d assigned %s", self.slot, _fmt_parts(partitions), extra=self._log_fields(
            "assigned", partitions))

    def _log_fields(self, kind: str, partitions) -> dict:
        """The ids a rebalance line carries in JSON logs: who, which group, which partitions."""
        return {"fields": {"event": "rebalance", "kind": kind, "worker": self.slot,
                           "group_id": self.settings.runtime.group_id,
                           "partitions": [f"{p.topic}[{p.partition}]" for p in partitions]}}

    def _on_revoke(self, consumer, partitions) -> None:
        self.stats.rebalances += 1
        self.telemetry.on_rebalance("revoked", partitions)
        logger.info("worker %d revoked %s", self.slot, _fmt_parts(partitions), extra=self._log_fields(
            "revoked", partitions))
        # Revoked partitions' work is committed before they go, so the next owner starts after it.
        try:
            self._commit()
        except AbortRequired as e:
            logger.warning("commit on revoke failed (%s); aborting, the next owner re-reads", e)
            self._abort(rewind=False)
        self.assigned = False

    def _on_lost(self, consumer, partitions) -> None:
        self.telemetry.on_rebalance("lost", partitions)
        logger.warning("worker %d lost %s; aborting the open transaction", self.slot, _fmt_parts(partitions),
                       extra=self._log_fields("lost", partitions))
        self._abort(rewind=False)
        self.assigned = False

    # ---- the transaction ---------------------------------------------------------------------

    def _produce(self, out: BatchOutput, extra: list = ()) -> None:
        producer = self.producer
        produce = producer.produce
        for topic, key, value in itertools.chain(out.decisions, extra):
            try:
                produce(topic, value, key)
            except BufferError:  # the client's queue is full: wait for room (a single retry could fail again)
                produce_waiting(producer, topic, value, key)
        dl = self.settings.topics.deadletter
        for d in out.dead:
            m = d.msg
            produce_waiting(producer, dl, m.value(), m.key(),
                            dead_headers(d.reason, d.detail, m.topic(), m.partition(), m.offset()))
        self.producer.poll(0)

    def _offsets(self) -> list[TopicPartition]:
        """The next offsets to read: the consumer's positions, which stand just after the last message it
        returned. Every returned message has been processed (and its outputs produced) before a commit, so
        these are last processed + 1, read in one call instead of tracked per message."""
        return [tp for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0]

    def _commit(self) -> None:
        if self._fatal:
            return
        t_commit = time.perf_counter_ns()
        if self.exactly_once:
            if not self._in_txn:
                return
            commit_transaction(self.producer, self._offsets(), self.consumer.consumer_group_metadata())
            self._in_txn = False
        else:
            if not self._uncommitted:
                return
            # At-least-once: every output is delivered before its input's offset is committed.
            if self.producer.flush(30) != 0:
                raise AbortRequired("decisions not delivered within 30s")
            if self._delivery_error is not None:
                err, self._delivery_error = self._delivery_error, None
                raise AbortRequired(f"a decision was not delivered: {err.str()}")
            try:
                self.consumer.commit(offsets=self._offsets(), asynchronous=False)
            except KafkaException as e:
                raise AbortRequired(f"offset commit failed: {e.args[0].str()}") from None
        self._uncommitted = False
        self.stats.commits += 1
        self.telemetry.on_commit(t_commit)

    def _abort(self, *, rewind: bool = True) -> None:
        """Drop the open transaction; with rewind, seek every assigned partition back to its committed offset."""
        if self.exactly_once and self._in_txn and not self._fatal:
            try:
                call_with_retry("abort_transaction", self.producer.abort_transaction, 30)
            except AbortRequired as e:
                raise FatalKafkaError(f"abort failed: {e}") from None
            self._in_txn = False
        self._uncommitted = False
        self.stats.aborts += 1
        self.telemetry.on_abort()
        if rewind:
            assignment = self.consumer.assignment()
            if assignment:
                for tp in self.consumer.committed(assignment, timeout=30):
                    if tp.offset < 0:
                        tp.offset = -2  # OFFSET_BEGINNING: nothing committed yet (auto.offset.reset=earliest)
                    self.consumer.seek(tp)

    def _process(self, msgs: list) -> None:
        if self.exactly_once and not self._in_txn:
            call_with_retry("begin_transaction", self.producer.begin_transaction)
            self._in_txn = True
        t_score = time.perf_counter_ns()
        out = self.scorer.process(msgs, int(time.time() * 1000))
        shadow = self.shadow.records(out)  # at most one more booster call per intent, in the same transaction
        t_scored = time.perf_counter_ns()
        self._produce(out, shadow)
        self._uncommitted = True
        self.stats.add(out, len(msgs))
        self.telemetry.on_batch(out, msgs, t_score, t_scored)
        if self._batch_hook is not None:
            self._batch_hook(out, len(msgs))

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stop is set; then finish the open transaction and leave the group cleanly."""
        self.telemetry.start()  # liveness answers during start-up; readiness once assigned and loaded
        self._make_clients()
        self.ready = True
        s = self.settings
        max_events, wait = s.batch.max_events, s.batch.max_wait_ms / 1000.0
        interval = s.runtime.commit_interval_ms / 1000.0
        last_commit = time.monotonic()
        try:
            aborts_in_a_row, commits_seen = 0, self.stats.commits
            while not self.stop_event.is_set():
                self._refresh()
                self.telemetry.poll_start()
                msgs = next_batch(self.consumer, max_events, wait)
                try:
                    if msgs:
                        msgs = self._drop_errors(msgs)
                        if msgs:
                            self._process(msgs)
                    if time.monotonic() - last_commit >= interval:
                        self._commit()
                        last_commit = time.monotonic()
                except AbortRequired as e:
                    aborts_in_a_row += 1
                    if aborts_in_a_row > MAX_ABORTS_IN_A_ROW:
                        # The same batch keeps failing: stop and say so rather than spin on it forever.
                        self._abort(rewind=False)
                        raise FatalKafkaError(f"{aborts_in_a_row} transactions in a row aborted; last: {e}") from None
                    logger.warning("worker %d aborting the open transaction and re-reading: %s", self.slot, e)
                    self._abort()
                    time.sleep(min(5.0, 0.1 * 2 ** aborts_in_a_row))
                else:
                    if self.stats.commits != commits_seen:
                        aborts_in_a_row, commits_seen = 0, self.stats.commits
            try:
                self._commit()
            except AbortRequired as e:
                logger.warning("final commit failed (%s); aborting: the next owner re-reads those events", e)
                self._abort(rewind=False)
        except FatalKafkaError:
            self._fatal = True
            raise
        finally:
            self.ready = False
            self._close()
            self.telemetry.close()

    def _drop_errors(self, msgs: list) -> list:
        ok = []
        for m in msgs:
            err = m.error()
            if err is None:
                ok.append(m)
            elif err.fatal():
                raise FatalKafkaError(f"consumer: {err.str()}", code=err.code())
            elif err.code() != KafkaError._PARTITION_EOF:
                logger.warning("consumer error (continuing): %s", err.str())
        return ok

    def _close(self) -> None:
        for closer in (getattr(self, "consumer", None), getattr(self, "_models_table", None),
                       getattr(self, "_tenants_table", None)):
            if closer is not None:
                try:
                    closer.close()
                except (KafkaException, RuntimeError) as e:
                    logger.warning("closing: %s", e)
        producer = getattr(self, "producer", None)
        if producer is not None and not self._fatal:
            producer.flush(10)


def _fatal_fields(settings: Settings, slot: int, e: KafkaOpError) -> dict:
    return {"fields": {"event": "fatal", "worker": slot, "group_id": settings.runtime.group_id,
                       "transactional_id": transactional_id(settings, slot), "code": e.code, "error": str(e)}}


def _fmt_parts(parts) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in parts) or "nothing"


def run_worker(settings: Settings, slot: int) -> int:
    """A worker process's entry: SIGTERM and SIGINT finish (or abort) the open transaction and exit 0."""
    stop = threading.Event()

    def _stop(signum, frame):
        logger.info("worker %d: signal %d, finishing", slot, signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        Worker(settings, slot=slot, stop=stop).run()
    except FatalKafkaError as e:
        logger.error("worker %d: fatal Kafka error, exiting: %s", slot, e, extra=_fatal_fields(settings, slot, e))
        return 3
    except KafkaOpError as e:
        logger.error("worker %d: %s", slot, e, extra=_fatal_fields(settings, slot, e))
        return 2
    return 0
