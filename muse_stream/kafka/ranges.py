"""A bounded range of a topic, read with a consumer of its own: assigned partitions, no group, no commits.

Bounds are epoch milliseconds, ISO-8601 times, or offsets ("offset:N" for every partition). The end is
exclusive and fixed when reading starts, so a range never grows while it is read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import ConfigError, KafkaOpError
from muse_stream.eventtime import MAX_EVENT_TIME
from muse_stream.kafka.clients import make_consumer, reader_config


@dataclass(frozen=True)
class Bound:
    kind: str  # "time" | "offset" | "start" | "end"
    value: int = 0


def parse_bound(text: str | None, *, default: str) -> Bound:
    if text is None or text == "":
        return Bound(default)
    t = text.strip()
    if t in ("start", "beginning", "earliest"):
        return Bound("start")
    if t in ("end", "now", "latest"):
        return Bound("end")
    if t.startswith("offset:"):
        n = t[len("offset:"):]
        if not n.isdigit():
            raise ConfigError(f"{text!r}: expected offset:N with N >= 0")
        return Bound("offset", int(n))
    if t.isdigit():
        return Bound("time", int(t))
    try:
        dt = datetime.fromisoformat(t)  # "Z" included (Python 3.11)
    except ValueError:
        raise ConfigError(f"{text!r}: expected epoch ms, an ISO-8601 time, offset:N, start or end") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return Bound("time", int(dt.timestamp() * 1000))


def parse_event_time(text: str, flag: str) -> int:
    """An option that takes an event time (epoch ms or ISO-8601, UTC when no zone is given), or a ConfigError
    naming the option: `models activate --at` and `tenants set --from` read times alike."""
    try:
        bound = parse_bound(text, default="end")
    except ConfigError:
        bound = None
    if bound is None or bound.kind != "time":
        raise ConfigError(f"{flag} {text!r}: expected an event time (epoch ms or ISO-8601)")
    if not 0 <= bound.value <= MAX_EVENT_TIME:
        raise ConfigError(f"{flag} {text!r}: an event time is from 0 to {MAX_EVENT_TIME} (epoch ms), as in events")
    return bound.value


class RangeReader:
    """Reads [start, end) of every partition of a topic in batches."""

    def __init__(self, settings: Settings, topic: str, start: Bound, end: Bound) -> None:
        self.topic = topic
        self.c = make_consumer(reader_config(settings), f"{topic} range reader")
        try:
            md = self.c.list_topics(topic, timeout=15).topics.get(topic)
        except KafkaException as e:
            raise KafkaOpError(f"cannot read {topic}: {e.args[0].str()}") from None
        if md is None or md.error is not None or not md.partitions:
            self.c.close()
            raise KafkaOpError(f"topic {topic} does not exist")
        parts = sorted(md.partitions)
        self.starts = self._resolve(parts, start, first=True)
        self.ends = self._resolve(parts, end, first=False)
        self.remaining = {p for p in parts if self.starts[p] < self.ends[p]}
        self.c.assign([TopicPartition(topic, p, self.starts[p]) for p in sorted(self.remaining)])

    def offsets(self, b: Bound) -> dict[int, int]:
        """Where bound `b` falls in each partition (a range's first offset when `b` starts one)."""
        return self._resolve(sorted(self.starts), b, first=True)

    def _resolve(self, parts: list[int], b: Bound, *, first: bool) -> dict[int, int]:
        lo_hi = {p: self.c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in parts}
        if b.kind == "start":
            return {p: lo for p, (lo, _) in lo_hi.items()}
        if b.kind == "end":
            return {p: hi for p, (_, hi) in lo_hi.items()}
        if b.kind == "offset":
            return {p: min(max(b.value, lo), hi) for p, (lo, hi) in lo_hi.items()}
        found = self.c.offsets_for_times([TopicPartition(self.topic, p, b.value) for p in parts], timeout=15)
        out = {}
        for tp in found:
            lo, hi = lo_hi[tp.partition]
            out[tp.partition] = hi if tp.offset in (OFFSET_END, -1) else max(tp.offset, lo)
        return out

    @property
    def total(self) -> int:
        return sum(max(0, self.ends[p] - self.starts[p]) for p in self.starts)

    def batches(self, size: int = 2000, *, timeout: float = 60.0):
        """Yield lists of messages until every partition reached its end (bounded by an idle timeout)."""
        last = time.monotonic()
        while self.remaining:
            msgs = self.c.consume(size, 0.5)
            out = []
            for m in msgs:
                if m.error() is not None:
                    continue
                p = m.partition()
                if p in self.remaining and m.offset() < self.ends[p]:
                    out.append(m)
                if m.offset() >= self.ends[p] - 1:
                    self.remaining.discard(p)
            if out:
                last = time.monotonic()
                yield out
            else:
                # Transaction markers can sit at the end of a range: a partition whose position passed
                # its end is done even if no record came from it.
                for tp in self.c.position([TopicPartition(self.topic, p) for p in list(self.remaining)]):
                    if tp.offset >= self.ends[tp.partition]:
                        self.remaining.discard(tp.partition)
                if time.monotonic() - last > timeout:
                    raise KafkaOpError(f"reading {self.topic}: no progress for {timeout:.0f}s "
                                       f"(partitions left: {sorted(self.remaining)})")

    def close(self) -> None:
        self.c.close()
