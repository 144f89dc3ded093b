"""Reading a run's outputs back as a downstream consumer would: read_committed, from the beginning.

- ArrivalReader: while a run is going, notes when outputs become visible (count and time per poll), with as
  little per-record work as possible, since it shares the machine with the workers and the broker.
- LatencyReader: at an offered rate, the visibility time of every decision, by event sequence number.
- verify(): after the workers have stopped, every output read to the end: each input record (topic,
  partition, offset) must have exactly one output.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from muse_stream.bench.load import seq_of_key
from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError
from muse_stream.kafka.clients import consumer_config

_READER_EXTRA = {"fetch.wait.max.ms": 10, "socket.nagle.disable": True}


def _partitions(consumer: Consumer, topics: list[str], *, offset: int = 0, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    parts = []
    for t in topics:
        while True:
            md = consumer.list_topics(t, timeout=10).topics.get(t)
            if md is not None and md.error is None and md.partitions:
                break
            if time.monotonic() > deadline:
                raise KafkaOpError(f"topic {t} has no partitions (does it exist?)")
            time.sleep(0.2)
        parts += [TopicPartition(t, p, offset) for p in sorted(md.partitions)]
    return parts


def _reader(settings: Settings, group: str, **extra) -> Consumer:
    return Consumer(consumer_config(settings, group_id=group, read_committed=True, **(_READER_EXTRA | extra)))


class ArrivalReader(threading.Thread):
    """Counts outputs as they become visible, and times the steady window from `start` to the last output.

    The window opens at the first poll that shows outputs once every worker has its partitions (`ready()`
    returns that wall time; None while the group is still forming), so a multi-worker run is not charged for
    its start-up rebalance. on_first/on_start/on_done are called (in this thread) at the first output, the
    window's start and its end, to sample CPU.
    """

    def __init__(self, settings: Settings, topics: list[str], expected: int, *, ready=None, on_first=None,
                 on_start=None, on_done=None, timeout: float = 600.0, stall: float = 60.0) -> None:
        super().__init__(daemon=True, name="bench-arrivals")
        self.consumer = _reader(settings, "bench-reader-unused")
        self.consumer.assign(_partitions(self.consumer, topics))
        self.expected = expected
        self.ready = ready or (lambda: 0.0)
        self.on_first, self.on_start, self.on_done = on_first, on_start, on_done
        self.timeout, self.stall = timeout, stall
        self.count = 0
        self.t_first: float | None = None  # first visible output
        self.first_count = 0
        self.t_start: float | None = None  # the window opens (outputs up to then are not counted in the rate)
        self.start_count = 0
        self.t_last: float | None = None
        self.error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        c = self.consumer
        start = last_progress = time.monotonic()
        try:
            while not self.stop_event.is_set() and self.count < self.expected:
                now = time.monotonic()
                if now - start > self.timeout:
                    self.error = f"timed out after {self.timeout:.0f}s with {self.count}/{self.expected} outputs"
                    return
                if now - last_progress > self.stall:
                    self.error = f"no output for {self.stall:.0f}s, at {self.count}/{self.expected}"
                    return
                m = c.poll(0.2)
                if m is None:
                    continue
                t = time.time()
                batch = c.consume(10000, 0)
                n = (m.error() is None) + sum(1 for x in batch if x.error() is None)
                if not n:
                    continue
                last_progress = time.monotonic()
                self.count += n
                self.t_last = t
                if self.t_first is None:
                    self.t_first, self.first_count = t, self.count
                    if self.on_first:
                        self.on_first()
                if self.t_start is None and self.count < self.expected:
                    ready = self.ready()
                    if ready is not None and t >= ready:
                        self.t_start, self.start_count = t, self.count
                        if self.on_start:
                            self.on_start()
            if self.count >= self.expected and self.on_done:
                self.on_done()
        except Exception as e:  # noqa: BLE001 - surfaced to the run
            self.error = f"{type(e).__name__}: {e}"
        finally:
            c.close()

    def window(self) -> tuple[float, float, int, bool] | None:
        """(start, end, outputs counted, steady): the steady window, else (a run too short for one) the span
        from the first visible output; outputs visible at the start are not counted. None: no span at all."""
        if self.t_last is None:
            return None
        if self.t_start is not None and self.t_last > self.t_start:
            return self.t_start, self.t_last, self.count - self.start_count, True
        if self.t_first is not None and self.t_last > self.t_first:
            return self.t_first, self.t_last, self.count - self.first_count, False
        return None


class LatencyReader(threading.Thread):
    """Visibility time (wall clock, s) of each decision, indexed by the event's sequence number."""

    def __init__(self, settings: Settings, topics: list[str], capacity: int, *, watch_model: str | None = None):
        super().__init__(daemon=True, name="bench-latency")
        self.capacity = capacity
        self.recv = np.full(capacity, np.nan)
        self.decided = np.full(capacity, np.nan)  # decided_at (ms): splits latency into pick-up and publish
        self.watch_model = watch_model  # e.g. "card_fraud@2": note its first decision
        self.first_watch_decided_at: int | None = None
        self.first_watch_recv: float | None = None
        self.duplicates = 0
        self.count = 0
        self.error: str | None = None
        self.consumer = _reader(settings, "bench-reader-unused")
        self.consumer.assign(_partitions(self.consumer, topics))
        self.stop_event = threading.Event()

    def run(self) -> None:
        c = self.consumer
        recv, decided = self.recv, self.decided
        watch = self.watch_model
        try:
            while not self.stop_event.is_set():
                m = c.poll(0.05)
                if m is None:
                    continue
                t = time.time()
                for x in [m, *c.consume(10000, 0)]:
                    if x.error() is not None:
                        continue
                    seq = seq_of_key(x.key())
                    if seq >= self.capacity:
                        continue
                    if recv[seq] == recv[seq]:  # not NaN: seen before
                        self.duplicates += 1
                        continue
                    recv[seq] = t
                    self.count += 1
                    d = orjson.loads(x.value())
                    decided[seq] = d.get("decided_at", np.nan)
                    if watch is not None and d.get("model_version") == watch:
                        if self.first_watch_decided_at is None or d["decided_at"] < self.first_watch_decided_at:
                            self.first_watch_decided_at = d["decided_at"]
                        if self.first_watch_recv is None:
                            self.first_watch_recv = t
        except Exception as e:  # noqa: BLE001 - surfaced to the run
            self.error = f"{type(e).__name__}: {e}"
        finally:
            c.close()


def input_ends(settings: Settings, topic: str) -> dict[int, int]:
    """partition -> high watermark of an input topic."""
    c = _reader(settings, "bench-reader-unused")
    try:
        return {tp.partition: c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in _partitions(c, [topic])}
    finally:
        c.close()


def _source_of(value: bytes, headers) -> tuple[str, int, int] | None:
    """A decision's source (topic, partition, offset), or a dead letter's from its headers."""
    if headers:
        h = dict(headers)
        if "muse.source.topic" in h:
            return h["muse.source.topic"].decode(), int(h["muse.source.partition"]), int(h["muse.source.offset"])
    i = value.rfind(b'"source":')
    if i < 0:
        return None
    src = orjson.loads(value[i + 9:-1])  # the source object closes the decision: parse just that
    return src["topic"], src["partition"], src["offset"]


def verify(settings: Settings, outputs: list[str], input_topic: str, *, by: str = "source",
           deadletter: str | None = None, timeout: float = 300.0, collect=None) -> dict:
    """Read every output to its end and check that each input record produced exactly one output.

    by="source": decisions name their input (topic, partition, offset); by="key": outputs keep the input's
    key e-<seq> (the ceiling), and input offsets are matched through the sequence numbers.
    collect(value) is called for every decision (e.g. to check model versions).
    """
    ends = input_ends(settings, input_topic)
    total_in = sum(ends.values())
    counts = {p: np.zeros(n, dtype=np.int32) for p, n in ends.items()}
    seq_counts = np.zeros(total_in, dtype=np.int32)
    topics = outputs + ([deadletter] if deadletter else [])
    c = _reader(settings, "bench-reader-unused", **{"enable.partition.eof": True})
    parts = _partitions(c, topics)
    c.assign(parts)
    pending = {(tp.topic, tp.partition) for tp in parts}
    n_out = n_dead = foreign = unparsed = 0
    deadline = time.monotonic() + timeout
    try:
        while pending:
            if time.monotonic() > deadline:
                raise KafkaOpError(f"verification timed out after {timeout:.0f}s; {len(pending)} partitions unread")
            for m in c.consume(10000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((m.topic(), m.partition()))
                        continue
                    raise KafkaOpError(f"reading {m.topic()}: {err.str()}")
                n_out += 1
                if m.topic() == deadletter:
                    n_dead += 1
                if by == "key":
                    seq = seq_of_key(m.key())
                    if seq < total_in:
                        seq_counts[seq] += 1
                    else:
                        foreign += 1
                    continue
                if collect is not None and m.topic() != deadletter:
                    collect(m.value())
                src = _source_of(m.value(), m.headers())
                if src is None:
                    unparsed += 1
                elif src[0] != input_topic or src[1] not in counts or src[2] >= ends[src[1]]:
                    foreign += 1
                else:
                    counts[src[1]][src[2]] += 1
    except KafkaException as e:
        raise KafkaOpError(f"verification read failed: {e.args[0].str()}") from None
    finally:
        c.close()
    if by == "key":
        per_input = seq_counts
    else:
        per_input = np.concatenate([counts[p] for p in sorted(counts)]) if counts else np.zeros(0, np.int32)
    missing = int((per_input == 0).sum())
    duplicated = int((per_input > 1).sum())
    return {"inputs": total_in, "outputs": n_out, "dead_letters": n_dead, "missing": missing,
            "duplicated": duplicated, "foreign": foreign + unparsed,
            "exactly_once": missing == 0 and duplicated == 0 and foreign + unparsed == 0 and n_out == total_in}
