"""Dead letters: bad input is never dropped; it goes, with its original bytes, to the dead-letter topic."""

from __future__ import annotations

from enum import Enum


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


def headers(reason: Reason, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The dead-letter headers: why, and where the original record was."""
    return [
        ("muse.reason", reason.value.encode()),
        ("muse.detail", detail.encode()[:1000]),
        ("muse.source.topic", topic.encode()),
        ("muse.source.partition", str(partition).encode()),
        ("muse.source.offset", str(offset).encode()),
    ]
