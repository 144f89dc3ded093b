"""The scoring job on the engine's stream loop: score a micro-batch, produce its decisions and dead letters.

One worker is one process with one consumer (in the group) and one producer (transactional, with a stable
transactional.id per worker slot, so a restarted slot fences its own zombie). The engine (kafka/loop.py,
kafka/checkpoint.py) owns consuming, committing and aborting; this module owns what a batch becomes. Model
and tenant updates are applied between batches, never inside one.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from muse_stream.config import Settings
from muse_stream.errors import ConfigError, FatalKafkaError, KafkaOpError, StuckConsumerError
from muse_stream.kafka.clients import check_reachable, input_consumer_config, worker_producer_config
from muse_stream.kafka.loop import LoopHooks, LoopSettings, LoopStats, StreamLoop
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.starts import StartWatch
from muse_stream.kafka.table import TopicTable
from muse_stream.kafka.topics import TopicSpec, create_topics
from muse_stream.models.bands import ReferenceCache
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.deadletter import write_dead_letters
from muse_stream.scoring.scorer import BatchOutput, BatchScorer
from muse_stream.scoring.shadow import ShadowScorer
from muse_stream.state.engine import StateEngine, check_state_dir
from muse_stream.telemetry import NoTelemetry, Telemetry
from muse_stream.tenants import TenantRegistry
from muse_stream.worker.exits import FATAL_KAFKA_EXIT, FENCED_EXIT
from muse_stream.worker.progress import ProgressWatch
from muse_stream.worker.refusals import RefusedOutputs

logger = logging.getLogger(__name__)
_FENCED = {"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "FENCED_INSTANCE_ID"}


@dataclass
class WorkerStats(LoopStats):
    """The loop's counters and the scoring job's (aggregated per batch); telemetry and tests read them."""

    decisions: int = 0
    dead_letters: int = 0
    score_ns: int = 0  # scorer and shadow scorer (parse, route, matrix, predict, transform, format)
    produce_ns: int = 0  # decisions, shadow records and dead letters handed to the producer
    telemetry_ns: int = 0  # every telemetry call of the loop (per batch, per turn, the timed updates)
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    scored: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, out: BatchOutput) -> None:
        self.decisions += len(out.decisions)
        self.dead_letters += len(out.dead)
        for d in out.dead:
            self.dead_by_reason[d.reason.value] = self.dead_by_reason.get(d.reason.value, 0) + 1
        for k, v in out.scored.items():
            self.scored[k] = self.scored.get(k, 0) + v


def transactional_id(settings: Settings, slot: int) -> str:
    """Stable per worker slot across restarts: the restarted slot fences its predecessor's open transaction."""
    return f"{settings.runtime.transactional_id_prefix}-{settings.runtime.group_id}-{slot}"


class _Hooks(LoopHooks):
    """The loop's events, to telemetry, the supervisor's heartbeat and the log."""

    def __init__(self, worker: Worker, heartbeat) -> None:
        self.w, self.heartbeat = worker, heartbeat

    def on_turn(self) -> None:
        self.heartbeat()
        t = time.perf_counter_ns()
        self.w.telemetry.poll_start()
        self.w.stats.telemetry_ns += time.perf_counter_ns() - t

    def on_commit(self, t_start_ns: int) -> None:
        self.w.state.committed()  # the transaction's state writes reach RocksDB only now
        self.w.telemetry.on_commit(t_start_ns)

    def on_abort(self) -> None:
        self.w.state.aborted()
        self.w.telemetry.on_abort()
        # An output topic deleted behind the worker's back fails every transaction that writes to it (its
        # records time out), other tenants' decisions with them: check the topics again before the retry.
        self.w._known_topics.clear()

    def on_rebalance(self, kind: str, partitions) -> None:
        w = self.w
        if w.state.enabled:  # assigned: restore each store before its partition is scored
            (w.state.assign if kind == "assigned" else w.state.release)(partitions)
        w.telemetry.on_rebalance(kind, partitions)
        (w.starts.assigned if kind == "assigned" else w.starts.released)(partitions)
        names = [f"{p.topic}[{p.partition}]" for p in partitions]
        (logger.warning if kind == "lost" else logger.info)(
            "worker %d %s %s", w.slot, kind, ", ".join(names) or "nothing",
            extra={"fields": {"event": "rebalance", "kind": kind, "worker": w.slot,
                              "group_id": w.settings.runtime.group_id, "partitions": names}})


class Worker:
    def __init__(self, settings: Settings, *, slot: int = 0, stop: threading.Event | None = None,
                 heartbeat=None) -> None:
        self.settings = settings
        self.slot = slot
        self.stop_event = stop or threading.Event()
        self.stats = WorkerStats()
        # Rate bands resolve through each intent's reference, read from the models topic.
        self.tenants = TenantRegistry(settings, references=ReferenceCache(lambda: self.models.references))
        self.models = ModelRegistry(pins=self.tenants.pinned_versions, intents=settings.intents)  # pins stay loaded
        self.shadow = ShadowScorer(settings, self.models)
        self.state = StateEngine(settings, slot=slot, heartbeat=lambda: self._heartbeat())
        self.scorer = BatchScorer(self.tenants, self.models, max_abs_feature=settings.runtime.max_abs_feature,
                                  max_event_bytes=settings.runtime.max_event_bytes, intents=settings.intents,
                                  state=self.state)
        self.loop: StreamLoop | None = None
        self.ready = False
        self._heartbeat = heartbeat or (lambda: None)
        self._known_topics: set[str] = set()
        self._events_seen = 0
        self.refused = RefusedOutputs()  # decision topics that refuse decisions (worker/refusals.py)
        # An assigned partition whose committed offset stays unreadable past twice the transaction timeout (a
        # transaction holding it never ended on the broker) is reported, not waited on in silence.
        self.starts = StartWatch(after_s=2 * settings.runtime.transaction_timeout_ms / 1000.0 + 30.0)
        self.progress = ProgressWatch(settings, after_s=settings.runtime.stuck_after_s)
        # Metrics, traces, drift, health endpoint: per batch, never per event.
        self.telemetry = Telemetry(self) if settings.telemetry.enabled else NoTelemetry()

    @property
    def consumer(self):
        return self.loop.consumer if self.loop is not None else None

    @property
    def assigned(self) -> bool:
        return self.loop is not None and self.loop.assigned

    def run(self) -> None:
        """Run until stop is set; then finish the open transaction and leave the group cleanly."""
        s, eos = self.settings, self.settings.runtime.processing_guarantee == "exactly-once"
        self.telemetry.start()  # liveness answers during start-up; readiness once assigned and loaded
        tables: list[TopicTable] = []
        try:
            tid = transactional_id(s, self.slot) if eos else None
            self.producer = OutputProducer(worker_producer_config(s, transactional_id=tid),
                                           name=f"worker {self.slot} producer")
            # Seconds, with the address (or the refused login), when no cluster answers.
            check_reachable(self.producer.client, s, errors=self.producer.errors)
            self._heartbeat()  # each start-up phase beats once it is done: the supervisor's grace covers the first
            tables += [TopicTable(s, s.topics.models), TopicTable(s, s.topics.tenants)]
            self._models_table, self._tenants_table = tables
            for k, v in self._models_table.catch_up():
                self.models.apply(k, v)
            for k, v in self._tenants_table.catch_up():
                self.tenants.apply(k, v)
            self.scorer.warm_loaded()
            settle_heap()
            self._heartbeat()
            self._ensure_output_topics()
            if self.state.enabled:
                check_state_dir(s)
                self.state.ensure_topics()
            self.loop = StreamLoop(
                LoopSettings(tuple(s.topics.inputs), eos, s.batch.max_events, s.batch.max_wait_ms / 1000.0,
                             s.runtime.commit_interval_ms / 1000.0),
                consumer_config=input_consumer_config(s, slot=self.slot), producer=self.producer,
                process=self.process, between_batches=self.between_batches, hooks=_Hooks(self, self._heartbeat),
                stats=self.stats, stop=self.stop_event, name=f"worker {self.slot}")
            self._heartbeat()
            self.ready = True
            self.loop.run()
        finally:
            self.ready = False
            for t in tables:
                t.close()
            self.state.close()
            self.telemetry.close()

    def between_batches(self) -> None:
        """Apply new models and tenant records; create the topics they need before anything is produced."""
        if self.starts.waiting:
            self._report_unstarted()
        if self.producer.refusing:
            outputs = {self.scorer.output_topic(tid) for tid in self.tenants.tenants}
            self.refused.note(self.producer.refusing, outputs.__contains__)
        self.telemetry.on_held(self.starts.held)
        if self.stats.events_in != self._events_seen:
            self._events_seen = self.stats.events_in
            self.progress.consumed()
        else:
            self._end_if_stuck()
        gen, tv = self.models.generation, self.tenants.version
        for k, v in self._models_table.updates():
            self.models.apply(k, v)
        self.telemetry.on_models()
        for k, v in self._tenants_table.updates():
            self.tenants.apply(k, v)
        if self.models.generation != gen or self.tenants.version != tv:
            self.scorer.warm_loaded()
            settle_heap()
            self._ensure_output_topics()
        elif not self._known_topics:  # after an abort: an output topic may have been deleted
            try:  # bounded, and again next turn if Kafka is away (a broker restart aborts too)
                self._ensure_output_topics(timeout=5.0)
            except KafkaOpError as e:
                logger.warning("worker %d: checking the output topics after an abort: %s", self.slot, e)

    def _report_unstarted(self) -> None:
        stuck = self.starts.check(self.consumer)
        if not stuck:
            return
        names = [f"{t}[{p}]" for t, p, _ in stuck]
        waited = max(w for _, _, w in stuck)
        logger.error(
            "worker %d: the committed offsets of input partitions %s have been unreadable for %.0fs while the "
            "broker answers: a transaction holding them is still open there, and until they are read the worker "
            "may get no event from any of its partitions. A broker that dropped the transaction's markers after "
            "an unclean restart does this; see docs/operations.md, 'Brokers that leave a transaction open'",
            self.slot, ", ".join(names), waited,
            extra={"fields": {"event": "partitions_not_started", "worker": self.slot,
                              "group_id": self.settings.runtime.group_id, "partitions": names,
                              "waited_s": round(waited)}})

    def _end_if_stuck(self) -> None:
        stalled = self.progress.check()
        if not stalled:
            return
        names = [f"{self.settings.topics.events}[{p}]" for p in stalled]
        idle = self.progress.clock() - self.progress.last_event
        logger.error(
            "worker %d has taken no event for %.0fs while input partitions %s have events waiting and their "
            "committed offsets stand still: ending it, to be restarted with new clients", self.slot, idle,
            ", ".join(names), extra={"fields": {"event": "consumer_stuck", "worker": self.slot,
                                                "group_id": self.settings.runtime.group_id, "partitions": names,
                                                "idle_s": round(idle)}})
        raise StuckConsumerError(f"no progress for {idle:.0f}s on {', '.join(names)}")

    def _ensure_output_topics(self, timeout: float = 30.0) -> None:
        t = self.settings.topics
        wanted = {self.scorer.output_topic(tid) for tid in self.tenants.tenants} | {t.deadletter}
        wanted |= {t.shadow_topic(intent) for intent in self.shadow.active()}
        new = wanted - self._known_topics
        if new:
            create_topics(self.settings, [TopicSpec(n, t.decisions_partitions) for n in sorted(new)],
                          replication_factor=t.replication_factor, timeout=timeout)
            self._known_topics |= new

    def process(self, msgs: list) -> None:
        """One batch: score, shadow-score, produce every output. The loop commits it."""
        t_score = time.perf_counter_ns()
        if self.starts.held:  # a held partition that yields again is ready again
            self.starts.yielded(msgs)
        out = self.scorer.process(msgs, int(time.time() * 1000))
        if self.refused.topics:
            self.refused.divert(out, msgs)
        shadow = self.shadow.records(out)  # at most one more booster call per intent, in the same transaction
        t_scored = time.perf_counter_ns()
        self.producer.produce_all(out.decisions)
        self.producer.produce_all(shadow)
        self.state.produce(self.producer)  # the batch's state writes, in the same transaction
        write_dead_letters(self.producer, self.settings.topics.deadletter, out.dead)
        t_produced = time.perf_counter_ns()
        st = self.stats
        st.batch_produced(t_produced, len(msgs))
        st.score_ns += t_scored - t_score
        st.produce_ns += t_produced - t_scored
        st.add(out)
        self.telemetry.on_batch(out, msgs, t_score, t_scored)
        st.telemetry_ns += time.perf_counter_ns() - t_produced


def _fatal_fields(settings: Settings, slot: int, e: KafkaOpError) -> dict:
    return {"fields": {"event": "fatal", "worker": slot, "group_id": settings.runtime.group_id,
                       "transactional_id": transactional_id(settings, slot), "code": e.code, "error": str(e)}}


def run_worker(settings: Settings, slot: int, heartbeat=None) -> int:
    """A worker process's entry: SIGTERM and SIGINT finish (or abort) the open transaction and exit 0.
    `heartbeat`, a zero-arg callable, is called every loop turn (the supervisor's liveness signal)."""
    stop = threading.Event()

    def _stop(signum, frame):
        logger.info("worker %d: signal %d, finishing", slot, signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        Worker(settings, slot=slot, stop=stop, heartbeat=heartbeat).run()
    except FatalKafkaError as e:
        name = e.error.name() if e.error is not None else ""
        fenced = name in _FENCED or "fenced" in str(e).lower()
        hint = f" (another worker holds slot {slot}: run each slot once)" if fenced else ""
        logger.error("worker %d: fatal Kafka error, exiting: %s%s", slot, e, hint,
                     extra=_fatal_fields(settings, slot, e))
        return FENCED_EXIT if fenced else FATAL_KAFKA_EXIT
    except StuckConsumerError:
        return 2  # said in the consumer_stuck line; restarted by the supervisor
    except ConfigError as e:  # found at start-up (`run` checks the same before any worker starts)
        logger.error("worker %d: %s", slot, e)
        return 2
    except KafkaOpError as e:
        logger.error("worker %d: %s", slot, e, extra=_fatal_fields(settings, slot, e))
        return 2
    except Exception:
        # The loop aborted the open transaction before this: the batch stays uncommitted, to be read again.
        logger.exception("worker %d: stopped by an unexpected error; nothing of the failed batch was committed", slot)
        return 4
    return 0


def settle_heap() -> None:
    """Take the worker's long-lived objects (registries, models, tables: everything alive once its models are
    loaded) out of the cyclic collector's reach. Without it, a full collection walked them all every few
    seconds, 20-35 ms inside whichever batch it fell in. Objects
    still go when their last reference does; a cycle among them waits for the next call, which first puts
    everything back and collects (after a model or tenant change, between batches)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
