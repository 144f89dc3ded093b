"""Reading a shadow window back: the (incumbent score, shadow raw score) pairs that scoring wrote for a
version, which `publish --from-shadow` fits the version's transform on."""

from __future__ import annotations

import time

import numpy as np
import orjson

from muse_stream.config import Settings
from muse_stream.errors import DataError
from muse_stream.kafka.ranges import Bound, RangeReader


def read_shadow_window(settings: Settings, intent: str, version: int, window_ms: int) -> dict[str, np.ndarray]:
    """The shadow pairs of intent@version written in the last `window_ms`."""
    start = Bound("time", int(time.time() * 1000) - window_ms)
    reader = RangeReader(settings, settings.topics.shadow_topic(intent), start, Bound("end"))
    want = f"{intent}@{version}"
    inc, raw, tids = [], [], []
    try:
        for batch in reader.batches(5000):
            for m in batch:
                r = orjson.loads(m.value())
                if r.get("shadow_version") == want:
                    inc.append(r["incumbent_score"])
                    raw.append(r["shadow_raw"])
                    tids.append(r["tenant_id"])
    finally:
        reader.close()
    if not raw:
        raise DataError(f"no shadow records of {want} on {settings.topics.shadow_topic(intent)} in the window")
    return {"incumbent": np.asarray(inc), "shadow_raw": np.asarray(raw), "tenants": np.asarray(tids, dtype=object)}
