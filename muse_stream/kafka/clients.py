"""librdkafka client configurations, built from validated settings in one place."""

from __future__ import annotations

import logging

from ..config import Settings

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
