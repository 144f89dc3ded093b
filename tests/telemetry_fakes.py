"""Stand-ins for a worker and its batch output, for telemetry tests that need no broker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from muse_stream.config import IntentConfig, Settings, TenantConfig
from muse_stream.records import ReferenceRecord
from muse_stream.registry import ModelRegistry
from muse_stream.runtime import WorkerStats
from muse_stream.telemetry import Telemetry
from muse_stream.tenants import TenantRegistry
from muse_stream.transform import ReferenceDistribution

INTENT = "card_fraud"
TENANT = "acme"
BANDS = {"review": 0.5, "decline": 0.8}


def reference(seed: int = 0) -> ReferenceDistribution:
    """A reference whose tail reaches the bands: P(s >= 0.5) ~ 11%, P(s >= 0.8) ~ 0.16%."""
    return ReferenceDistribution.from_scores(np.random.default_rng(seed).beta(2.0, 5.0, 50_000))


def settings(**telemetry) -> Settings:
    tenants = (
        TenantConfig(tenant_id=TENANT, intents=(INTENT,), bands=BANDS),
        TenantConfig(tenant_id="globex", intents=(INTENT, "account_takeover"), default_intent=INTENT),
    )
    return Settings(
        intents=(IntentConfig(name=INTENT), IntentConfig(name="account_takeover")),
        tenants=tenants,
        telemetry={"update_interval_s": 300, **telemetry},
    )


def worker(s: Settings, ref: ReferenceDistribution | None = None) -> SimpleNamespace:
    models = ModelRegistry(load=False)
    if ref is not None:
        models.references[INTENT] = ReferenceRecord(
            intent=INTENT, reference=ref.to_dict(), source="test", created_at=0
        )
    return SimpleNamespace(
        settings=s,
        slot=0,
        stats=WorkerStats(),
        models=models,
        tenants=TenantRegistry(s, {t.tenant_id: t for t in s.tenants}, log_changes=False),
        ready=True,
        consumer=None,
    )


@dataclass
class Group:
    tenant_id: str
    intent: str
    model_name: str
    scores: np.ndarray
    bands: np.ndarray
    band_names: list[str]
    event_times: np.ndarray


@dataclass
class Output:
    """The fields of scoring.BatchOutput that telemetry reads, with the per-group arrays."""

    decisions: list = field(default_factory=list)
    dead: list = field(default_factory=list)
    scored: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)


class Msg:
    def __init__(self, value: bytes = b"{}", ts: int = -1) -> None:
        self._v, self._ts = value, ts

    def value(self) -> bytes:
        return self._v

    def timestamp(self) -> tuple[int, int]:
        return (1 if self._ts >= 0 else 0, self._ts)


def batch(w, scores: np.ndarray, *, tenant: str = TENANT, version: str = f"{INTENT}@1") -> tuple[Output, list]:
    """One batch of one tenant's reference-scale scores, as the scorer would report it."""
    bands = w.tenants.bands[tenant]
    now_ms = int(time.time() * 1000)
    g = Group(tenant, INTENT, version, scores, bands.assign(scores), list(bands.names),
              np.full(scores.size, now_ms - 1000, dtype=np.int64))
    out = Output(decisions=[None] * scores.size, scored={(tenant, INTENT, version): scores.size}, groups=[g])
    return out, [Msg(ts=now_ms - 500) for _ in range(scores.size)]


def feed(tel: Telemetry, w, scores: np.ndarray, *, batches: int = 10, **kw) -> None:
    for part in np.array_split(scores, batches):
        out, msgs = batch(w, part, **kw)
        t = time.perf_counter_ns()
        tel.on_batch(out, msgs, t, t)
