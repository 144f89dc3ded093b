"""Helpers for integration tests: tiny real models, producing events, reading topics back."""

from __future__ import annotations

import time

import numpy as np
import orjson
import xgboost as xgb
from confluent_kafka import Consumer, Producer, TopicPartition

from muse_stream.config import Settings, dump_toml
from muse_stream.kafka.clients import consumer_config, produce_waiting, producer_config
from muse_stream.modelstore import publish, read_models
from muse_stream.transform import fit_score_transform

FEATURES = [f"f{i}" for i in range(5)]


def synthetic(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + 0.5 * x[:, 2] - 4.0 + shift
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return x, y


def train_booster(seed: int = 0, depth: int = 3, rounds: int = 20, shift: float = 0.0) -> xgb.Booster:
    x, y = synthetic(5000, seed, shift)
    d = xgb.DMatrix(x, label=y, feature_names=FEATURES)
    return xgb.train({"max_depth": depth, "eta": 0.3, "objective": "binary:logistic", "nthread": 1}, d, rounds)


def publish_model(settings: Settings, intent: str, *, seed: int = 0, shift: float = 0.0, activate: bool = True,
                  activate_at: int | None = None, rounds: int = 20):
    """Train a small booster, fit its transform on fresh calibration data, publish (and activate) it."""
    booster = train_booster(seed, rounds=rounds, shift=shift)
    x, _ = synthetic(4000, seed + 1000)
    raw = booster.inplace_predict(x)
    reg = read_models(settings)
    ref_rec = reg.references.get(intent)
    from muse_stream.transform import ReferenceDistribution

    ref = ReferenceDistribution.from_dict(ref_rec.reference) if ref_rec else None
    st, ref = fit_score_transform(raw, reference=ref)
    return publish(settings, intent=intent, booster_bytes=bytes(booster.save_raw("ubj")), features=FEATURES,
                   transform=st.to_dict(), reference=ref.to_dict(), activate=activate, activate_at=activate_at)


def event(i: int, tenant: str, *, intent: str | None = None, t0: int = 1_700_000_000_000, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed * 1_000_003 + i)
    ev = {"event_id": f"e-{i}", "tenant_id": tenant, "event_time": t0 + i,
          "features": {f: float(v) for f, v in zip(FEATURES, rng.normal(size=len(FEATURES)))}}
    if intent is not None:
        ev["intent"] = intent
    return ev


def produce(settings: Settings, values: list, *, topic: str | None = None, keys: list | None = None) -> None:
    p = Producer(producer_config(settings, **{"linger.ms": 20}))
    topic = topic or settings.topics.events
    for i, v in enumerate(values):
        raw = v if isinstance(v, bytes) else orjson.dumps(v)
        key = keys[i] if keys else str(i).encode()
        produce_waiting(p, topic, raw, key)
    assert p.flush(30) == 0


class TopicReader:
    """A read_committed reader of whole topics (assigned, no group commits)."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.c = Consumer(consumer_config(settings, group_id="test-reader"))
        parts = []
        for t in topics:
            md = self.c.list_topics(t, timeout=10).topics[t]
            parts += [TopicPartition(t, p, 0) for p in md.partitions]
        self.c.assign(parts)
        self.records = []

    def poll_for(self, seconds: float) -> list:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for m in self.c.consume(1000, 0.2):
                if m.error() is None:
                    self.records.append(m)
        return self.records

    def until(self, predicate, timeout: float = 60.0) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.poll_for(0.3)
            if predicate(self.records):
                return self.records
        raise AssertionError(f"timed out after {timeout}s with {len(self.records)} records")

    def close(self) -> None:
        self.c.close()


def decision_topics(settings: Settings) -> list[str]:
    return [settings.output_topic(t) for t in settings.tenants]


def source_of(m) -> tuple[str, int, int]:
    """The input record a decision or dead letter came from: (topic, partition, offset)."""
    if m.headers():
        h = dict(m.headers())
        if "muse.source.topic" in h:
            return h["muse.source.topic"].decode(), int(h["muse.source.partition"]), int(h["muse.source.offset"])
    src = orjson.loads(m.value())["source"]
    return src["topic"], src["partition"], src["offset"]


def input_count(settings: Settings) -> int:
    c = Consumer(consumer_config(settings, group_id="test-count"))
    t = settings.topics.events
    n = 0
    for p in c.list_topics(t, timeout=10).topics[t].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
        n += hi - lo
    c.close()
    return n



def write_config(settings: Settings, path) -> str:
    """Write settings as a TOML file, for tests that run the command line."""
    path.write_text(dump_toml(settings))
    return str(path)
