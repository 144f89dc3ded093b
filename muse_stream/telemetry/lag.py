"""Consumer lag of the assigned partitions, read from the consumer's own fetch state."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition

logger = logging.getLogger(__name__)


def read_lag(consumer, assignment: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
    """Messages behind the partition end, per assigned partition consumed from; None when it cannot be read.

    Called from the worker thread only: the high watermark comes from the last fetch, so it costs no broker
    call. A partition with nothing consumed yet has no position and is left out.
    """
    lag = {}
    try:
        for tp in consumer.position([TopicPartition(t, p) for t, p in sorted(assignment)]):
            if tp.offset < 0:
                continue  # nothing consumed there yet
            hi = consumer.get_watermark_offsets(tp, cached=True)[1]
            if hi >= 0:
                lag[(tp.topic, tp.partition)] = max(hi - tp.offset, 0)
    except (KafkaException, RuntimeError) as e:  # closing, or a partition just revoked
        logger.debug("lag not read: %s", e)
        return None
    return lag
