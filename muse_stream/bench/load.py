"""The bench's synthetic stack: tenants, two intents' boosters (published with fitted transforms) and events.

Events have the production shape: a few tenants, two intents, 30 numeric features, about 400 bytes.
Feature vectors come from a fixed pool, so generating a million events costs a byte template per event
rather than a dict and a JSON dump; the scoring side still parses and scores every event in full.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import orjson

from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import KafkaOpError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer

logger = logging.getLogger(__name__)

FEATURES = [f"V{i}" for i in range(1, 29)] + ["amount", "hour"]
INTENTS = ("card_fraud", "account_takeover")
SWAP_INTENT = "card_fraud"
POOL_SIZE = 16384

# (tenant, intents, default intent, bands, share of traffic)
TENANTS = [
    TenantConfig(tenant_id="acme_bank", intents=("card_fraud",), default_intent="card_fraud",
                 bands={"review": 0.95, "decline": 0.995}),
    TenantConfig(tenant_id="globex_pay", intents=("card_fraud", "account_takeover"), default_intent="card_fraud",
                 bands={"review": 0.99, "decline": 0.999}),
    TenantConfig(tenant_id="initech_shop", intents=("card_fraud",), default_intent="card_fraud",
                 bands={"review": 0.995}),
    TenantConfig(tenant_id="umbrella_wallet", intents=("account_takeover", "card_fraud"),
                 default_intent="account_takeover", bands={"review": 0.9, "decline": 0.99}),
]
# Per tenant: (share of events, intents named explicitly in the event; None = the tenant's default)
_MIX = {"acme_bank": (0.35, [None]), "globex_pay": (0.30, ["card_fraud", "account_takeover"]),
        "initech_shop": (0.15, [None]), "umbrella_wallet": (0.20, [None, "card_fraud"])}


def _features(rng: np.random.Generator, n: int) -> np.ndarray:
    """n rows of V1..V28 (PCA-like, varied scales), amount (log-normal) and hour."""
    scales = np.linspace(2.0, 0.3, 28)
    v = rng.normal(size=(n, 28)) * scales
    amount = np.round(rng.lognormal(3.5, 1.2, size=n), 2)
    hour = rng.integers(0, 24, size=n).astype(np.float64)
    return np.column_stack([v, amount, hour])


def _labels(rng: np.random.Generator, x: np.ndarray, intent: str, shift: float) -> np.ndarray:
    if intent == "card_fraud":
        logit = -6.0 + 1.6 * x[:, 0] - 1.2 * x[:, 2] + 0.9 * x[:, 9] * x[:, 3] + 0.004 * x[:, 28] + shift
    else:
        logit = -6.5 + 1.4 * x[:, 1] + 1.1 * np.abs(x[:, 5]) - 0.8 * x[:, 13] + 0.3 * (x[:, 29] < 6) + shift
    return (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(np.int8)


@dataclass(frozen=True)
class ModelSpec:
    intent: str
    seed: int
    rounds: int
    depth: int = 6
    shift: float = 0.0


def train_and_publish(settings: Settings, spec: ModelSpec, *, activate: bool, n_train: int = 30000,
                      n_calib: int = 20000) -> dict:
    """Train a booster on synthetic data, fit its transform on fresh calibration rows, publish it."""
    import xgboost as xgb

    from muse_stream.models.quantile import ReferenceDistribution
    from muse_stream.models.store import publish, read_models
    from muse_stream.models.transform import fit_score_transform

    t0 = time.monotonic()
    rng = np.random.default_rng(spec.seed)
    x = _features(rng, n_train)
    y = _labels(rng, x, spec.intent, spec.shift)
    d = xgb.DMatrix(x.astype(np.float32), label=y, feature_names=FEATURES)
    booster = xgb.train({"max_depth": spec.depth, "eta": 0.1, "objective": "binary:logistic", "nthread": 2,
                         "tree_method": "hist", "min_child_weight": 0.5}, d, spec.rounds)
    xc = _features(rng, n_calib).astype(np.float32)
    raw = booster.inplace_predict(xc)
    ref_rec = read_models(settings).references.get(spec.intent)
    ref = ReferenceDistribution.from_dict(ref_rec.reference) if ref_rec else None
    st, ref = fit_score_transform(raw, reference=ref)
    blob = bytes(booster.save_raw("ubj"))
    rec = publish(settings, intent=spec.intent, booster_bytes=blob, features=FEATURES, transform=st.to_dict(),
                  reference=ref.to_dict(), activate=activate,
                  metadata={"source": "muse-stream bench (synthetic)", "rounds": spec.rounds, "depth": spec.depth})
    return {"model": rec.name, "trees": spec.rounds, "depth": spec.depth, "booster_bytes": len(blob),
            "train_rows": n_train, "positives": int(y.sum()), "active": activate,
            "seconds": round(time.monotonic() - t0, 2)}


class EventFactory:
    """Builds event bytes quickly: a pool of serialised feature objects and a byte template per tenant/intent."""

    def __init__(self, seed: int = 11) -> None:
        rng = np.random.default_rng(seed)
        x = _features(rng, POOL_SIZE)
        self._pool = []
        for row in x:
            feats = {name: round(float(v), 2) for name, v in zip(FEATURES[:28], row[:28])}
            feats["amount"] = float(row[28])
            feats["hour"] = int(row[29])
            self._pool.append(orjson.dumps(feats))
        heads = []
        for tenant, (share, intents) in _MIX.items():
            for intent in intents:
                part = b'"intent":"%s",' % intent.encode() if intent else b""
                heads.append((share / len(intents), b'"tenant_id":"%s",%s' % (tenant.encode(), part)))
        weights = np.array([w for w, _ in heads])
        # A fixed, repeating sequence of tenants, so every run sees the same mix.
        self._heads = [h for _, h in heads]
        self._mix = rng.choice(len(heads), size=4096, p=weights / weights.sum()).tolist()

    def event(self, seq: int, event_time_ms: int) -> bytes:
        """The event with sequence number `seq`; its id is e-<seq>, its key the id."""
        return b'{"event_id":"e-%d",%s"event_time":%d,"features":%s}' % (
            seq, self._heads[self._mix[seq & 4095]], event_time_ms, self._pool[(seq * 7919) % POOL_SIZE])

    def mean_size(self, n: int = 4096) -> float:
        t = int(time.time() * 1000)
        return sum(len(self.event(i, t)) for i in range(n)) / n


def seq_of_key(key: bytes) -> int:
    """The sequence number in an event id / key `e-<seq>`."""
    return int(key[2:])


def preproduce(settings: Settings, topic: str, n: int, factory: EventFactory, *, timeout: float = 600.0) -> dict:
    """Produce n events into `topic` (idempotent producer, lz4, large batches); returns load figures."""
    p = OutputProducer(producer_config(settings, **{"linger.ms": 20, "batch.size": 1_000_000,
                                                    "queue.buffering.max.messages": 500_000}), name="pre-produce")
    t0 = time.monotonic()
    deadline = t0 + timeout
    base = int(time.time() * 1000) - n  # event times in the recent past, one ms apart
    total_bytes = 0
    produce, poll = p.client.produce, p.poll
    event = factory.event
    for i in range(n):
        v = event(i, base + i)
        total_bytes += len(v)
        k = b"e-%d" % i
        while True:
            try:
                produce(topic, v, k)
                break
            except BufferError:
                poll(0.05)
                if time.monotonic() > deadline:
                    raise KafkaOpError(f"pre-producing to {topic} timed out after {timeout:.0f}s") from None
        if i & 8191 == 0:
            poll(0)
    p.flush(max(1.0, deadline - time.monotonic()))  # raises what was not delivered
    secs = time.monotonic() - t0
    return {"events": n, "bytes": total_bytes, "mean_event_bytes": round(total_bytes / max(n, 1), 1),
            "seconds": round(secs, 2), "events_per_s": round(n / secs) if secs > 0 else None}
