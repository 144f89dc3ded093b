"""Metric labels of a dead letter: registered tenants and known intents only, so label sets stay bounded."""

from __future__ import annotations

import orjson

from muse_stream.scoring.deadletter import Reason

UNKNOWN = "(unknown)"  # a dead letter whose tenant (or intent) cannot be told; not a valid tenant id
OTHER = "(other)"  # an intent name no configuration knows: kept out of labels, which must stay bounded
_NO_TENANT = frozenset({Reason.MALFORMED_JSON, Reason.NOT_AN_OBJECT, Reason.EVENT_TOO_LARGE})


def dead_letter_labels(d, settings, tenants, models) -> tuple[str, str]:
    """(tenant, intent) labels of dead letter `d`, given the worker's settings, tenant and model registries.

    Any producer can write any tenant id or intent name; labelling them as sent would let one bad producer
    grow the metric series without bound.
    """
    if d.reason in _NO_TENANT:
        return UNKNOWN, UNKNOWN
    try:
        ev = orjson.loads(d.msg.value())
    except (orjson.JSONDecodeError, TypeError):
        return UNKNOWN, UNKNOWN
    if type(ev) is not dict:
        return UNKNOWN, UNKNOWN
    tid = ev.get("tenant_id")
    cfg = tenants.tenants.get(tid) if type(tid) is str else None
    if cfg is None:
        return UNKNOWN, UNKNOWN
    intent = ev.get("intent")
    if intent is None:
        return tid, cfg.resolve_intent(None) or UNKNOWN
    known = {i.name for i in settings.intents} | set(cfg.intents) | set(models.activations)
    return tid, intent if type(intent) is str and intent in known else OTHER
