"""What shadow scoring costs the scorer, per event, measured in one process on the bench's events.

Publishes the bench's two intents plus a third card_fraud version set as shadow, reads N events back from
Kafka, and times BatchScorer.process alone against process + ShadowScorer.records (best of 9, interleaved).

Run: .venv/bin/python scripts/shadow_cost.py [--bootstrap 127.0.0.1:9092] [--events 40000]
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from muse_stream.bench.load import TENANTS, EventFactory, ModelSpec, preproduce, train_and_publish
from muse_stream.config import Settings, load_settings
from muse_stream.kafka.clients import consumer_config
from muse_stream.kafka.topics import ensure_all
from muse_stream.models.store import read_models, set_shadow
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.scoring.shadow import ShadowScorer
from muse_stream.tenants import TenantRegistry, put_tenants


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--events", type=int, default=40_000)
    args = ap.parse_args()
    ns = f"shadowcost.{uuid.uuid4().hex[:6]}."
    s = load_settings(None, bootstrap=args.bootstrap).with_overrides(topics={
        "events": ns + "events", "models": ns + "models", "tenants": ns + "tenants", "deadletter": ns + "dl",
        "decisions_prefix": ns + "dec.", "shadow_prefix": ns + "shadow.", "events_partitions": 1})
    s = Settings.model_validate({**s.model_dump(), "tenants": [t.model_dump() for t in TENANTS], "intents": []})
    ensure_all(s)
    put_tenants(s, list(TENANTS))
    for i, intent in enumerate(("card_fraud", "account_takeover")):
        train_and_publish(s, ModelSpec(intent, seed=i, rounds=200), activate=True)
    train_and_publish(s, ModelSpec("card_fraud", seed=7, rounds=200, shift=0.5), activate=False)
    set_shadow(s, "card_fraud", 2)
    preproduce(s, s.topics.events, args.events, EventFactory())
    c = Consumer(consumer_config(s, group_id=ns + "reader"))
    c.assign([TopicPartition(s.topics.events, 0, 0)])
    msgs = []
    while len(msgs) < args.events:
        msgs += [m for m in c.consume(5000, 1.0) if m.error() is None]
    c.close()
    models = read_models(s, load=True)
    scorer = BatchScorer(TenantRegistry(s, {t.tenant_id: t for t in TENANTS}, log_changes=False), models,
                         max_abs_feature=1e30, max_event_bytes=10**6)
    shadow = ShadowScorer(s, models)
    batches = [msgs[i:i + 2000] for i in range(0, len(msgs), 2000)]
    best = {"scorer": float("inf"), "scorer + shadow": float("inf")}
    shadowed = 0
    for _ in range(9):
        t0 = time.perf_counter()
        for b in batches:
            scorer.process(b, 0)
        best["scorer"] = min(best["scorer"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        shadowed = 0
        for b in batches:
            shadowed += len(shadow.records(scorer.process(b, 0)))
        best["scorer + shadow"] = min(best["scorer + shadow"], time.perf_counter() - t0)
    per = {k: v / len(msgs) * 1e6 for k, v in best.items()}
    print(f"{len(msgs):,} events, {shadowed:,} of them in the shadowed intent; per event (best of 9): "
          f"scorer {per['scorer']:.2f} us, with shadow {per['scorer + shadow']:.2f} us "
          f"(+{per['scorer + shadow'] - per['scorer']:.2f} us, +{per['scorer + shadow'] / per['scorer'] - 1:.0%})")


if __name__ == "__main__":
    main()
