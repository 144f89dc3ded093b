"""librdkafka client configurations, built from validated settings in one place."""

from __future__ import annotations

import logging

from muse_stream.config import Settings

_rdlog = logging.getLogger("muse_stream.librdkafka")
MAX_RECORD_BYTES = 64 * 1024 * 1024


def base_config(settings: Settings) -> dict:
    conf = {"bootstrap.servers": settings.kafka.bootstrap_servers, "logger": _rdlog}
    conf.update(settings.kafka.client)
    return conf


def admin_config(settings: Settings) -> dict:
    return base_config(settings)


def producer_config(settings: Settings, *, transactional_id: str | None = None, **extra) -> dict:
    conf = base_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "message.max.bytes": MAX_RECORD_BYTES,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = settings.runtime.transaction_timeout_ms
    conf.update(extra)
    return conf


def consumer_config(settings: Settings, *, group_id: str, read_committed: bool = True, **extra) -> dict:
    conf = base_config(settings) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "fetch.max.bytes": MAX_RECORD_BYTES,
        "max.partition.fetch.bytes": MAX_RECORD_BYTES,
        "receive.message.max.bytes": MAX_RECORD_BYTES + 1024 * 1024,
        "enable.partition.eof": False,
    }
    conf.update(extra)
    return conf


def reader_config(settings: Settings, **extra) -> dict:
    """A consumer that is assigned partitions by hand: no group commits ever (its group id is never used)."""
    return consumer_config(settings, group_id="muse-stream-reader-unused", **extra)


def produce_waiting(producer, topic: str, value: bytes, key: bytes | None = None, headers=None) -> None:
    """producer.produce, waiting for room while the client's queue is full (delivery reports are served
    meanwhile); the queue drains, or its messages time out and fail, so this does not wait forever."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def input_consumer_config(settings: Settings, **extra) -> dict:
    """The workers' consumer of the input topics (in the group). Prefetch enough for the next batch, but cap
    the queue: the 64 MiB fetch sizes are for model records, and on the input topic they cost ~250 MB of RSS
    for nothing. The short queue backoff keeps a capped queue from starving the loop (librdkafka waits 1 s)."""
    return consumer_config(settings, group_id=settings.runtime.group_id, **{
        "queued.min.messages": max(10000, 2 * settings.batch.max_events), "fetch.wait.max.ms": 50,
        "queued.max.messages.kbytes": 16384, "fetch.max.bytes": 4 * 1024 * 1024,
        "max.partition.fetch.bytes": max(4 * 1024 * 1024, settings.runtime.max_event_bytes + 1024),
        "fetch.queue.backoff.ms": 10, **extra})


def worker_producer_config(settings: Settings, **extra) -> dict:
    """The workers' producer: linger 1 ms, since every decision's latency includes it."""
    return producer_config(settings, **{"linger.ms": 1, **extra})


def next_batch(consumer, max_events: int, wait: float) -> list:
    """Wait (up to `wait`) for the first message only, then take whatever else is already queued.

    Under load the queue holds a whole batch, so batches stay full; at a low rate an event is handled as
    soon as it arrives instead of waiting out batch.max_wait_ms for a batch that will not fill.
    """
    first = consumer.poll(wait)
    if first is None:
        return []
    if max_events == 1:
        return [first]
    return [first, *consumer.consume(max_events - 1, 0)]
