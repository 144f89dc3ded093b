"""Shadow scoring: a version published as shadow scores live events beside the active one.

Between the same batches, per intent, the batch's already-built matrices are re-scored with the shadow
booster in one call; the pairs (incumbent score, shadow raw score) go to <shadow_prefix><intent>, never
to a tenant's topic. A shadow window is what `publish --from-shadow` fits a transform on.
"""

from __future__ import annotations

import logging

import numpy as np
import orjson

from muse_stream.config import Settings
from muse_stream.errors import ModelError
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.forest import raw_scores
from muse_stream.scoring.scorer import BatchOutput

logger = logging.getLogger(__name__)


def _columns(src: tuple[str, ...], dst: tuple[str, ...]) -> np.ndarray | None:
    """Column indices taking a matrix in `src` order to `dst` order (-1 where `src` lacks a feature)."""
    if src == dst:
        return None
    pos = {f: i for i, f in enumerate(src)}
    return np.array([pos.get(f, -1) for f in dst], dtype=np.int64)


class ShadowScorer:
    def __init__(self, settings: Settings, models: ModelRegistry) -> None:
        self.settings = settings
        self.models = models
        self._refused_logged: set[tuple[str, int]] = set()

    def active(self) -> dict[str, int]:
        return {i: r.version for i, r in self.models.shadows.items() if r.version is not None}

    def records(self, out: BatchOutput) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) shadow records for this batch: at most one booster call per intent."""
        shadows = self.active()
        if not shadows:
            return []
        records = []
        for intent, version in shadows.items():
            groups = [m for m in out.matrices if m.intent == intent]
            if not groups:
                continue
            try:
                model = self.models.get(intent, version)
            except ModelError as e:
                if (intent, version) not in self._refused_logged:
                    logger.warning("shadow %s@%d cannot score: %s", intent, version, e)
                    self._refused_logged.add((intent, version))
                continue
            parts = []
            for m in groups:
                cols = _columns(m.features, model.features)
                if cols is None:
                    parts.append(m.x)
                else:
                    x = np.full((len(m.x), len(cols)), np.nan, dtype=np.float32)
                    have = cols >= 0
                    x[:, have] = m.x[:, cols[have]]
                    parts.append(x)
            x = np.concatenate(parts) if len(parts) > 1 else parts[0]
            try:
                shadow_raw = np.asarray(raw_scores(model, x), dtype=np.float64)
                if shadow_raw.shape != (len(x),):
                    raise ModelError(f"predict gave shape {shadow_raw.shape} for {len(x)} rows")
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a shadow that cannot score must not stop live scoring
                # Shadow records are not the input events' outputs (their decisions are), so the batch goes
                # on without them; the shadow window simply has fewer events.
                if (intent, version) not in self._refused_logged:
                    logger.warning("shadow %s@%d cannot score: %s: %s", intent, version, type(e).__name__,
                                   (str(e).strip().splitlines() or [""])[0][:300])
                    self._refused_logged.add((intent, version))
                continue
            shadow_raw = shadow_raw.tolist()
            topic = self.settings.topics.shadow_topic(intent)
            name = model.name
            i = 0
            for m in groups:
                raw, scores = m.raw.tolist(), m.scores.tolist()
                for j, eid in enumerate(m.event_ids):
                    records.append((topic, eid.encode(), orjson.dumps({
                        "event_id": eid, "tenant_id": m.tenants[j], "intent": intent, "event_time": m.times[j],
                        "incumbent_version": m.model_name, "incumbent_score": scores[j], "incumbent_raw": raw[j],
                        "shadow_version": name, "shadow_raw": shadow_raw[i]})))
                    i += 1
        return records
