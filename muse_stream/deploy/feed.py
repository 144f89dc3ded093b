"""Reading what a deployment judges: the shadow pairs of an intent as they arrive, and the labels topic.

A ShadowFeed follows the intent's shadow topic from a wall-clock time on (read_committed, no group), keeping
the pairs of one shadow version scored beside chosen incumbent versions, so a window grows batch by batch
without re-reading the topic; a ShadowSetting follows which version is the intent's shadow the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError, ModelError
from muse_stream.kafka.clients import make_consumer, reader_config
from muse_stream.kafka.table import TopicTable
from muse_stream.models.records import ShadowRecord, parse_models_record, shadow_key

logger = logging.getLogger(__name__)

_FIELDS = ("event_id", "tenant_id", "event_time", "incumbent_version", "incumbent_score", "incumbent_raw",
           "shadow_raw")


class Window:
    """Shadow pairs as arrays, in event-time order once `sorted()`."""

    def __init__(self, cols: dict[str, list]) -> None:
        self.event_id = np.asarray(cols["event_id"], dtype=object)
        self.tenant = np.asarray(cols["tenant_id"], dtype=object)
        self.event_time = np.asarray(cols["event_time"], dtype=np.int64)
        self.incumbent_version = np.asarray(cols["incumbent_version"], dtype=object)
        self.incumbent = np.asarray(cols["incumbent_score"], dtype=np.float64)
        self.incumbent_raw = np.asarray(cols["incumbent_raw"], dtype=np.float64)
        self.shadow_raw = np.asarray(cols["shadow_raw"], dtype=np.float64)

    def __len__(self) -> int:
        return int(self.shadow_raw.size)

    def take(self, rows: np.ndarray) -> Window:
        w = Window.__new__(Window)
        for k, v in vars(self).items():
            setattr(w, k, v[rows])
        return w

    def sorted(self) -> Window:
        return self.take(np.argsort(self.event_time, kind="stable"))

    def split(self, holdout_share: float) -> tuple[Window, Window]:
        """The first events by event time (the fit) and the later ones (the held-out tail the guards judge)."""
        s = self.sorted()
        cut = round(len(s) * (1.0 - holdout_share))
        idx = np.arange(len(s))
        return s.take(idx[:cut]), s.take(idx[cut:])


class ShadowFeed:
    def __init__(self, settings: Settings, intent: str, shadow_version: str, incumbents: Iterable[str],
                 since_ms: int) -> None:
        self.topic = settings.topics.shadow_topic(intent)
        self.shadow_version = shadow_version
        self.incumbents = set(incumbents)
        self.cols: dict[str, list] = {f: [] for f in _FIELDS}
        self.since_ms = since_ms
        self.c = make_consumer(reader_config(settings, **{"fetch.wait.max.ms": 100}), f"{self.topic} deploy reader")
        self.assigned = False
        self._assign()

    def _assign(self) -> None:
        """Assign the topic's partitions from since_ms on; the workers create a shadow topic when they first
        write to it, so until then there is nothing to assign (tried again on the next poll)."""
        md = self.c.list_topics(self.topic, timeout=15).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            return
        try:
            found = self.c.offsets_for_times([TopicPartition(self.topic, p, self.since_ms)
                                              for p in sorted(md.partitions)], timeout=15)
        except KafkaException:  # a topic just created may not have its leaders yet
            return
        # A partition with no record at or after since_ms gives -1 (its end): start there.
        self.c.assign([TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else -1)
                       for tp in found])
        self.assigned = True

    def want(self, incumbents: Iterable[str]) -> None:
        self.incumbents |= set(incumbents)

    def poll(self, timeout: float = 0.5) -> int:
        """Read what has arrived; returns how many wanted pairs were added."""
        added, end = 0, time.monotonic() + timeout
        if not self.assigned:
            self._assign()
            if not self.assigned:
                time.sleep(timeout)
                return 0
        while True:
            msgs = self.c.consume(5000, max(0.0, end - time.monotonic()))
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaOpError.wrap(f"reading {self.topic}", err)
                r = orjson.loads(m.value())
                if r.get("shadow_version") != self.shadow_version or r.get("incumbent_version") not in self.incumbents:
                    continue
                for f in _FIELDS:
                    self.cols[f].append(r[f])
                added += 1
            if not msgs or time.monotonic() >= end:
                return added

    def __len__(self) -> int:
        return len(self.cols["shadow_raw"])

    def window(self, start: int = 0, stop: int | None = None) -> Window:
        return Window({f: v[start:stop] for f, v in self.cols.items()})

    def close(self) -> None:
        self.c.close()


def read_labels(settings: Settings, event_ids: np.ndarray, timeout: float = 10.0) -> np.ndarray | None:
    """Per event id, its label from topics.labels (1, 0; NaN when unknown); None when the topic does not
    exist or holds no label for these events. The latest label of an event wins."""
    c = make_consumer(reader_config(settings), "labels reader")
    try:
        md = c.list_topics(settings.topics.labels, timeout=10).topics.get(settings.topics.labels)
        if md is None or md.error is not None or not md.partitions:
            return None
        bounds = {p: c.get_watermark_offsets(TopicPartition(settings.topics.labels, p), timeout=10)
                  for p in sorted(md.partitions)}
        # Only partitions holding records, read to their end as of now.
        parts = [TopicPartition(settings.topics.labels, p, lo) for p, (lo, hi) in bounds.items() if hi > lo]
        if not parts:
            return None
        ends = {tp.partition: bounds[tp.partition][1] for tp in parts}
        c.assign(parts)
        wanted = set(event_ids.tolist())
        labels: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(5000, 0.2):
                if m.error() is not None:
                    continue
                try:
                    r = orjson.loads(m.value())
                    if r["event_id"] in wanted:
                        labels[r["event_id"]] = int(r["label"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    logger.warning("labels record at %s/%d refused: not {event_id, label, label_time}",
                                   m.topic(), m.offset())
            pos = {tp.partition: tp.offset for tp in c.position(parts)}
            if all(pos.get(p, 0) >= e for p, e in ends.items()):
                break
    finally:
        c.close()
    if not labels:
        return None
    return np.fromiter((labels.get(e, np.nan) for e in event_ids.tolist()), dtype=np.float64, count=event_ids.size)


class ShadowSetting:
    """The intent's shadow record as it is now, followed on the models topic by one consumer that reads the
    topic once and then only what arrives: a deployment checks every few seconds, while it collects, that its
    candidate is still the shadow, and re-reading the whole models topic (boosters included) each time would
    cost megabytes a check."""

    def __init__(self, settings: Settings, intent: str) -> None:
        self._key = shadow_key(intent)
        self._value: bytes | None = None
        self._table = TopicTable(settings, settings.topics.models)
        self._take(self._table.catch_up())

    def _take(self, rows) -> None:
        for k, v in rows:
            if k == self._key:
                self._value = v

    def version(self) -> int | None:
        """The shadow version set now (None: no shadow, or a record that does not parse)."""
        self._take(self._table.updates())
        if self._value is None:
            return None
        try:
            rec = parse_models_record(self._value)
        except ModelError:
            return None
        return rec.version if isinstance(rec, ShadowRecord) else None

    def close(self) -> None:
        self._table.close()
