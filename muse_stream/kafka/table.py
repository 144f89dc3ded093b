"""Reading a compacted topic as a table: all partitions from the beginning, outside any consumer group."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError
from muse_stream.kafka.clients import reader_config


class TopicTable:
    """Yields (key, value) updates of a compacted topic; value None is a tombstone."""

    def __init__(self, settings: Settings, topic: str, *, read_committed: bool = True) -> None:
        self.topic = topic
        # A short fetch wait: a new activation or tenant record reaches the scoring loop within tens of ms.
        self._consumer = Consumer(reader_config(settings, read_committed=read_committed, **{"fetch.wait.max.ms": 20}))
        try:
            md = self._consumer.list_topics(topic, timeout=15)
        except KafkaException as e:
            raise KafkaOpError(f"cannot read topic {topic}: {e.args[0].str()}") from None
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            self._consumer.close()
            raise KafkaOpError(f"topic {topic} does not exist (run `muse-stream topics create`)")
        self._parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(tmd.partitions)]
        self._consumer.assign(self._parts)

    def _drain(self, timeout: float) -> list[tuple[bytes, bytes | None]]:
        out = []
        for msg in self._consumer.consume(num_messages=1000, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaOpError(f"reading {self.topic}: {err.str()}", code=err.code())
            out.append((msg.key() or b"", msg.value()))
        return out

    def catch_up(self, timeout: float = 30.0) -> list[tuple[bytes, bytes | None]]:
        """Everything up to the partitions' end as of now (blocking, bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        ends = {tp.partition: self._high_watermark(tp, deadline) for tp in self._parts}
        out: list[tuple[bytes, bytes | None]] = []
        while True:
            out += self._drain(0.1)
            positions = {tp.partition: tp.offset for tp in self._consumer.position(self._parts)}
            if all(ends[p] <= 0 or positions.get(p, -1) >= ends[p] for p in ends):
                return out
            if time.monotonic() > deadline:
                raise KafkaOpError(f"timed out reading {self.topic} to its end")

    def _high_watermark(self, tp: TopicPartition, deadline: float) -> int:
        # Right after a topic is created its leader may not be known yet: retry retriable errors.
        while True:
            try:
                return self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if not err.retriable() and err.code() != KafkaError.NOT_LEADER_FOR_PARTITION or \
                        time.monotonic() > deadline:
                    raise KafkaOpError(f"reading {self.topic}: {err.str()}", code=err.code()) from None
                time.sleep(0.2)

    def updates(self) -> list[tuple[bytes, bytes | None]]:
        """Whatever arrived since the last call, without blocking."""
        return self._drain(0)

    def close(self) -> None:
        self._consumer.close()
