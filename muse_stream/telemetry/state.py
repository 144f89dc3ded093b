"""Entity state's figures (state/engine.StateEngine.stats, totals the worker keeps): as metrics read at
collection time, and as the "state" section of /status."""

from __future__ import annotations

# (metric, stats key, unit, description); all totals since the worker started.
STATE_METRICS = (
    ("muse_state_late_events", "late", "{event}",
     "Events older than their entity's newest by more than the lateness: scored with the state as it was"),
    ("muse_state_duplicate_events", "duplicates", "{event}",
     "Events whose id was seen within the dedup window: dead-lettered as duplicate_event"),
    ("muse_state_wrong_key_events", "wrong_partition_key", "{event}",
     "Events whose Kafka key is not their entity value (dead-lettered or counted, per wrong_key)"),
    ("muse_state_restored_records", "restored_records", "{record}", "Changelog records replayed into stores"),
    ("muse_state_restore_seconds", "restore_seconds", "s", "Seconds spent restoring stores from changelogs"),
    ("muse_state_swept_entities", "swept", "{entity}", "Idle entities deleted by the sweep (tombstoned)"),
    ("muse_state_capped_records", "capped", "{record}",
     "Entity records cut to their newest entries at the record size limit"),
    ("muse_state_adapted_records", "adapted", "{record}",
     "Entity records written under another state spec's fields, read by field name under the current one"),
    ("muse_state_unreadable_records", "unreadable", "{record}",
     "Entity records of an unknown format or field layout: their entities started afresh"),
)


def register_state_metrics(hub, stats: dict) -> None:
    for name, key, unit, description in STATE_METRICS:
        hub.observed_counter(name, unit=unit, description=description,
                             values=lambda key=key: [(stats[key], {})])
    hub.observed_counter("muse_state_step_seconds", unit="s", description="Seconds spent in the state step",
                         values=lambda: [(stats["state_ns"] / 1e9, {})])


def state_status(engine) -> dict:
    """{"state": {...}} for /status, or {} for a worker without entity state."""
    if engine is None or not engine.enabled:
        return {}
    s = dict(engine.stats)
    return {"state": {"stores": len(engine.stores), "late": s["late"], "duplicates": s["duplicates"],
                      "wrong_partition_key": s["wrong_partition_key"], "restored_records": s["restored_records"],
                      "restore_seconds": round(s["restore_seconds"], 3), "swept": s["swept"], "capped": s["capped"],
                      "adapted": s["adapted"], "unreadable": s["unreadable"],
                      "step_seconds": round(s["state_ns"] / 1e9, 3)}}
