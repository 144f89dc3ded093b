"""The ceiling: the runtime's own stream loop (kafka/loop.py) with a copy-only `process`, and nothing else.

Bytes in, bytes out: no parsing, routing, scoring or transform. Each input record is copied (value and key)
to one of the output topics, chosen by input partition, so the producer fans out over as many topics and
partitions as the runtime's per-tenant decision topics. Client settings, batching, commits, aborts and
rebalances are the runtime's own code, so ceiling and runtime differ only by scoring.
"""

from __future__ import annotations

import threading
import time

from muse_stream.config import Settings
from muse_stream.kafka.clients import input_consumer_config, worker_producer_config
from muse_stream.kafka.loop import LoopSettings, LoopStats, StreamLoop
from muse_stream.kafka.producer import OutputProducer
from muse_stream.worker.runtime import transactional_id


class CeilingWorker:
    """Same loop, client configs, batch size, batch wait and commit interval as worker.runtime.Worker."""

    def __init__(self, settings: Settings, *, slot: int, output_topics: list[str],
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.slot = slot
        self.outputs = list(output_topics)
        self.stop_event = stop or threading.Event()
        self.stats = LoopStats()
        self.loop: StreamLoop | None = None
        self.between_batches = lambda: None  # the bench may hold the loop here (procs._held)

    @property
    def assigned(self) -> bool:
        return self.loop is not None and self.loop.assigned

    @property
    def events_in(self) -> int:
        return self.stats.events_in

    @property
    def commits(self) -> int:
        return self.stats.commits

    def run(self) -> None:
        s = self.settings
        eos = s.runtime.processing_guarantee == "exactly-once"
        tid = transactional_id(s, self.slot) if eos else None
        self.producer = OutputProducer(worker_producer_config(s, transactional_id=tid), name="ceiling producer")
        outs, n_out = self.outputs, len(self.outputs)
        produce_all = self.producer.produce_all

        stats, clock = self.stats, time.perf_counter_ns

        def copy(msgs: list) -> None:
            produce_all([(outs[m.partition() % n_out], m.key(), m.value()) for m in msgs])
            stats.batch_produced(clock(), len(msgs))  # the floor of the runtime's figure

        self.loop = StreamLoop(
            LoopSettings((s.topics.events,), eos, s.batch.max_events, s.batch.max_wait_ms / 1000.0,
                         s.runtime.commit_interval_ms / 1000.0),
            consumer_config=input_consumer_config(s, slot=self.slot), producer=self.producer, process=copy,
            between_batches=self.between_batches, stats=self.stats, stop=self.stop_event, name=f"ceiling {self.slot}")
        self.loop.run()
