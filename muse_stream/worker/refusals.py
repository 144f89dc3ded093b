"""Decision topics that refuse decisions, whatever is retried: their decisions go to the dead-letter topic for a
while, so one tenant's broken topic cannot stop every tenant that shares its input partitions.

A transaction with one failed record aborts whole, and the batch is read again; a record the topic will never
take (larger than the topic's max.message.bytes, a topic the worker may not write, a record the broker calls
invalid) fails again on every retry, and the worker ends after its aborts in a row. The producer notes such
topics (OutputProducer.refusing); for `REFUSED_FOR_S` seconds after, the batches read again send the decisions
bound there to the dead-letter topic instead, as `output_refused` with the broker's error, and every other
tenant's decisions flow. Then the topic is tried again (the operator may have fixed it): if it still refuses,
one batch aborts and the window starts over.
"""

from __future__ import annotations

import logging
import time

import orjson

from muse_stream.scoring.deadletter import Reason
from muse_stream.scoring.scorer import BatchOutput, DeadLetter

logger = logging.getLogger(__name__)
REFUSED_FOR_S = 60.0


class RefusedOutputs:
    def __init__(self, *, for_s: float = REFUSED_FOR_S, clock=time.monotonic) -> None:
        self.for_s, self.clock = for_s, clock
        self.topics: dict[str, tuple[str, float]] = {}  # topic -> (the broker's error, refused until)

    def note(self, refusing: dict[str, str], decision_topic) -> None:
        """The producer's refusing topics (cleared here); only decision topics (`decision_topic(t)`) are
        diverted: a dead-letter, shadow or changelog topic that refuses still aborts, as before."""
        now = self.clock()
        for topic, why in refusing.items():
            if not decision_topic(topic):
                continue
            if topic not in self.topics:
                logger.warning("decision topic %s refuses decisions (%s): for %.0fs its decisions go to the "
                               "dead-letter topic as output_refused, then it is tried again", topic, why,
                               self.for_s, extra={"fields": {"event": "output_refused", "topic": topic,
                                                             "error": why}})
            self.topics[topic] = (why, now + self.for_s)
        refusing.clear()

    def active(self) -> dict[str, str]:
        now = self.clock()
        for topic in [t for t, (_, until) in self.topics.items() if until <= now]:
            del self.topics[topic]
        return {t: why for t, (why, _) in self.topics.items()}

    def divert(self, out: BatchOutput, msgs: list) -> None:
        """Move the batch's decisions bound to a refused topic into its dead letters (and out of its counts)."""
        refused = self.active()
        if not refused or not any(t in refused for t, _, _ in out.decisions):
            return
        by_source = {(m.topic(), m.partition(), m.offset()): m for m in msgs}
        kept = []
        for topic, key, value in out.decisions:
            why = refused.get(topic)
            if why is None:
                kept.append((topic, key, value))
                continue
            d = orjson.loads(value)
            src = d["source"]
            msg = by_source[(src["topic"], src["partition"], src["offset"])]
            out.dead.append(DeadLetter(msg, Reason.OUTPUT_REFUSED, f"decision topic {topic} refuses it: {why}"))
            k = (d["tenant_id"], d["intent"], d["model_version"])
            if out.scored.get(k):
                out.scored[k] -= 1
        out.decisions = kept
