"""Input partitions that never start: said out loud instead of waited on in silence.

A read_committed group member fetches nothing from a newly assigned partition until it has the group's
committed offset for it, and while a transaction that holds that offset is still open on the broker, Kafka
answers "unstable" and librdkafka asks again, without a word, for as long as it takes. A transaction normally
ends within its timeout. One that does not is hanging: a broker that dropped its markers after an unclean
restart leaves it so (docs/operations.md, "Brokers that leave a transaction open"), and the partition's input
then only piles up.

StartWatch keeps, per assigned partition, when it was assigned, until the partition yields an event or its
committed offset reads back. Once a partition has waited `after_s`, it asks the broker for that offset with a
short timeout, one partition at a time, a few per check: one that still cannot be read, while the broker
answers, is reported, and stays in `held` (the worker's /readyz says not ready) until it starts or is
released.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException, TopicPartition


class StartWatch:
    def __init__(self, *, after_s: float, every_s: float = 60.0, probe_s: float = 1.0, per_check: int = 4,
                 clock=time.monotonic) -> None:
        self.after_s, self.every_s, self.probe_s, self.per_check = after_s, every_s, probe_s, per_check
        self.clock = clock
        self.waiting: dict[tuple[str, int], float] = {}  # (topic, partition) -> when assigned
        self.held: frozenset[tuple[str, int]] = frozenset()  # reported by a check, still waiting
        self._next = 0.0

    def assigned(self, partitions) -> None:
        now = self.clock()
        for p in partitions:
            self.waiting[(p.topic, p.partition)] = now

    def released(self, partitions) -> None:
        for p in partitions:
            self.waiting.pop((p.topic, p.partition), None)
        self._settle()

    def yielded(self, msgs) -> None:
        """A batch's records: their partitions have started (the worker calls this only while some are held)."""
        for tp in {(m.topic(), m.partition()) for m in msgs}:
            self.waiting.pop(tp, None)
        self._settle()

    def _settle(self) -> None:
        if self.held:
            self.held = frozenset(tp for tp in self.held if tp in self.waiting)

    def check(self, consumer) -> list[tuple[str, int, float]]:
        """Partitions that have waited `after_s` or more and whose committed offset still cannot be read, as
        (topic, partition, seconds since assignment); [] until one is due, and between checks of due ones
        (every `every_s`). Blocks at most `(per_check + 1) * probe_s`, and only while one is due."""
        now = self.clock()
        if not self.waiting or now < self._next:
            return []
        due = [tp for tp, since in self.waiting.items() if now - since >= self.after_s]
        if not due:
            self._next = min(self.waiting.values()) + self.after_s  # when the first one will be due
            return []
        self._next = now + self.every_s
        for tp in consumer.position([TopicPartition(t, p) for t, p in due]):
            if tp.offset >= 0:  # it has yielded an event: started
                self.waiting.pop((tp.topic, tp.partition), None)
        stuck = []
        for t, p in [tp for tp in due if tp in self.waiting][: self.per_check]:
            try:
                [got] = consumer.committed([TopicPartition(t, p)], timeout=self.probe_s)
            except KafkaException:  # the broker keeps answering "unstable": still waiting
                stuck.append((t, p, now - self.waiting[(t, p)]))
                continue
            if got.error is None:  # readable (nothing new to read yet): started
                self.waiting.pop((t, p), None)
            else:
                stuck.append((t, p, now - self.waiting[(t, p)]))
        self._settle()
        if stuck:
            try:  # a broker that does not answer at all is not one that holds a transaction open
                consumer.list_topics(stuck[0][0], timeout=self.probe_s)
            except KafkaException:
                return []
            self.held = self.held | {(t, p) for t, p, _ in stuck}
        return stuck
