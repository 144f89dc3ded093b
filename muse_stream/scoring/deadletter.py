"""Dead letters: bad input is never dropped; it goes, with its original bytes, to the dead-letter topic."""

from __future__ import annotations

from enum import Enum

from muse_stream.errors import RecordTooLarge


class Reason(str, Enum):
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EVENT_TOO_LARGE = "event_too_large"
    VALUE_TOO_LARGE = "value_too_large"
    UNKNOWN_TENANT = "unknown_tenant"
    TENANT_SUSPENDED = "tenant_suspended"
    INTENT_NOT_ALLOWED = "intent_not_allowed"
    NO_ACTIVE_MODEL = "no_active_model"
    # A feature the version that scores the event does not know, under the intent's unknown_features =
    # "reject": a renamed or misspelt upstream field would otherwise be scored as a missing value, silently.
    UNKNOWN_FEATURE = "unknown_feature"
    # The version that scores the event failed on it: its booster raised, or gave a raw score that is not a
    # probability (NaN, or outside [0, 1]). Dead-lettered so that a misbehaving model never stops the worker.
    MODEL_ERROR = "model_error"
    # Entity state (state/engine.py): the event's Kafka key is not its entity value, so its entity's state may be
    # on another partition; an event id seen before (headers muse.first.partition / muse.first.offset).
    WRONG_PARTITION_KEY = "wrong_partition_key"
    DUPLICATE_EVENT = "duplicate_event"
    # The tenant's decision topic refuses the decision whatever is retried (larger than its max.message.bytes,
    # not writable by the workers, invalid to the broker): worker/refusals.py, for a minute at a time.
    OUTPUT_REFUSED = "output_refused"


def headers(reason: Reason, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The dead-letter headers: why, and where the original record was."""
    return [
        ("muse.reason", reason.value.encode()),
        ("muse.detail", detail.encode()[:1000]),
        ("muse.source.topic", topic.encode()),
        ("muse.source.partition", str(partition).encode()),
        ("muse.source.offset", str(offset).encode()),
    ]


def write_dead_letters(producer, topic: str, dead: list) -> None:
    """Produce each dead letter (scorer.DeadLetter) with its original key, bytes and headers, through an
    OutputProducer: the producer's own headers first (a trace id, say; but none named muse.*, in any case,
    which only muse-stream writes), then the muse.* ones saying why. A value too large for the producer is
    dropped from the dead letter, which keeps the reason and where the record is, so the record still has its
    one output."""
    for d in dead:
        m = d.msg
        own = [(k, v) for k, v in (m.headers() or []) if not k.lower().startswith("muse.")]
        try:
            producer.produce(topic, m.value(), m.key(),
                             headers=own + headers(d.reason, d.detail, m.topic(), m.partition(), m.offset())
                             + (getattr(d, "headers", None) or []))
        except RecordTooLarge:
            size = len(m.value() or b"")
            detail = f"{d.detail}; value ({size} bytes) too large to copy, dropped"
            producer.produce(topic, None, m.key(), headers=headers(d.reason, detail, m.topic(), m.partition(),
                                                                   m.offset()))
