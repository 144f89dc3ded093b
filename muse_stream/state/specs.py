"""What a store keeps of the state specs its records were written under, so a changed `[intents.state]` is
said and its records read by field name (docs/models.md, "Changing a state spec").

A store's own keys start with a zero byte (no entity key does): per intent, the spec its records were last
written under (SPEC_KEY + intent), and per record layout, the field names its id stands for (LAYOUT_KEY + id).
Both are written with the first batch a store sees under a spec, into the store and, in the same transaction,
its changelog, so a restored store has them too; the sweep never deletes them.
"""

from __future__ import annotations

import logging

import orjson

from muse_stream.state.store import PartitionStore
from muse_stream.state.windows import Plan, adapt

logger = logging.getLogger("muse_stream.state.engine")  # the engine's log lines, one logger for state
SPEC_KEY, LAYOUT_KEY = b"\x00spec\x00", b"\x00layout\x00"


def layout_key_of(lid: int) -> bytes:
    return LAYOUT_KEY + lid.to_bytes(8, "little", signed=True)


def spec_record(plan: Plan) -> bytes:
    """What a store keeps of the spec its records are written under (compared and logged, never read for
    features)."""
    sp = plan.spec  # in the config's own terms, so the warning names what the operator changed
    return orjson.dumps({"entity": list(sp.entity), "windows": list(sp.windows),
                         "aggregates": list(sp.aggregates), "lateness": sp.lateness,
                         "dedup_window": sp.dedup_window, "keep_ms": plan.keep_ms})


class Specs:
    """A worker's spec checks and record adaptation; `stats` is the engine's (adapted, unreadable)."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats
        self._layouts: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # layout id -> field names
        self._said: set = set()  # (intent, spec record) changes logged

    def check(self, store: PartitionStore, intent: str, plan: Plan, changelog: str) -> list:
        """Once per store and intent: stage the spec and layout records the store lacks (in `pending`); return
        them as changelog writes (topic, partition, key, value) for the open transaction. A spec other than the
        store's is logged, once per worker."""
        store.checked.add(intent)
        spec_key, layout_key = SPEC_KEY + intent.encode(), layout_key_of(plan.layout_id)
        before, have = store.get_many([spec_key, layout_key])
        writes = [] if have is not None else [(layout_key, orjson.dumps([plan.nums, plan.dists]))]
        record = spec_record(plan)
        if before != record:
            if before is not None:
                self._changed(intent, plan, before, record, f"{store.topic}[{store.partition}]")
            writes.append((spec_key, record))
        store.pending.update(writes)
        return [(changelog, store.partition, k, v) for k, v in writes]

    def _changed(self, intent: str, plan: Plan, before: bytes, record: bytes, where: str) -> None:
        if (intent, before) in self._said:
            return
        self._said.add((intent, before))
        try:
            old = orjson.loads(before)
        except orjson.JSONDecodeError:
            old = {}
        now = orjson.loads(record)
        changed = sorted(k for k in now if k != "keep_ms" and (not isinstance(old, dict) or old.get(k) != now[k]))
        kept = old.get("keep_ms") if isinstance(old, dict) else None
        retention = kept // 1000 if isinstance(kept, int) else "?"
        logger.warning(
            "state: intent %s's state spec changed (%s) since its state on %s was written. Until the longest "
            "window (%d s) has passed since the change, its features are not exact: entries older than the old "
            "retention (%s s) are gone, fields the old spec did not keep are missing in older entries, and a "
            "changed entity starts every entity afresh (docs/models.md, 'Changing a state spec')", intent,
            ", ".join(changed) or "its record format", where, plan.longest_ms // 1000, retention,
            extra={"fields": {"event": "state_spec_changed", "intent": intent, "changed": changed,
                              "partition": where}})

    def adapt(self, plan: Plan, raw: bytes, stores) -> bytes | None:
        """A record of another layout, in plan's (counted; None: the entity starts afresh). `stores`: where
        to look for a layout's field names not met yet."""
        got = adapt(raw, plan, lambda lid: self._names_of(lid, stores))
        self.stats["adapted" if got is not None else "unreadable"] += 1
        return got

    def _names_of(self, lid: int, stores):
        names = self._layouts.get(lid)
        if names is None:
            key = layout_key_of(lid)
            for store in stores:
                (raw,) = store.get_many([key])
                if raw is not None:
                    nums, dists = orjson.loads(raw)
                    names = self._layouts[lid] = (tuple(nums), tuple(dists))
                    break
        return names
