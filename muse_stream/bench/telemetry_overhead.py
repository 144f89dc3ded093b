"""What recording telemetry costs per batch, next to what scoring the batch costs: in process, no Kafka.

The real BatchScorer scores real event bytes (4 tenants, 2 intents, 30 features, boosters of `trees` trees)
and the real Telemetry records each batch's output (counters, histograms, alert windows, drift windows,
latencies); both are timed per batch. `python -m muse_stream.bench.telemetry_overhead` prints the figures; the
benchmark report can carry `measure()`'s dict as is.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from types import SimpleNamespace

import numpy as np
import orjson

from muse_stream.bench.inprocess import active_registry
from muse_stream.config import IntentConfig, Settings, TenantConfig

_FEATURES = [f"V{i}" for i in range(1, 29)] + ["amount", "hour"]
_INTENTS = ("card_fraud", "account_takeover")
_TENANTS = (
    TenantConfig(tenant_id="acme_bank", intents=("card_fraud",), bands={"review": 0.95, "decline": 0.995}),
    TenantConfig(
        tenant_id="globex_pay",
        intents=_INTENTS,
        default_intent="card_fraud",
        bands={"review": 0.99, "decline": 0.999},
    ),
    TenantConfig(tenant_id="initech_shop", intents=("card_fraud",), bands={"review": 0.995}),
    TenantConfig(
        tenant_id="umbrella_wallet",
        intents=_INTENTS,
        default_intent="account_takeover",
        bands={"review": 0.9, "decline": 0.99},
    ),
)


def _features(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack(
        [
            rng.normal(size=(n, 28)) * np.linspace(2.0, 0.3, 28),
            np.round(rng.lognormal(3.5, 1.2, size=n), 2),
            rng.integers(0, 24, size=n),
        ]
    )


def _registry(trees: int, depth: int, seed: int):
    import xgboost as xgb

    from muse_stream.models.transform import fit_score_transform

    rng = np.random.default_rng(seed)
    models = []
    for k, intent in enumerate(_INTENTS):
        x = _features(rng, 20_000)
        logit = -5.0 + 1.5 * x[:, k] - 1.0 * x[:, k + 2] + 0.004 * x[:, 28]
        y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        booster = xgb.train(
            {"max_depth": depth, "eta": 0.1, "objective": "binary:logistic", "nthread": 2},
            xgb.DMatrix(x.astype(np.float32), label=y, feature_names=_FEATURES),
            trees,
        )
        st, ref = fit_score_transform(booster.inplace_predict(_features(rng, 10_000).astype(np.float32)))
        models.append((intent, booster, _FEATURES, st, ref))
    return active_registry(models, source="overhead")


def _batches(n_batches: int, size: int, seed: int) -> list[list]:
    from confluent_kafka import Message

    rng = np.random.default_rng(seed)
    pool = [orjson.dumps(dict(zip(_FEATURES, map(float, row)))) for row in _features(rng, 4096)]
    heads = [
        b'"tenant_id":"acme_bank",',
        b'"tenant_id":"globex_pay","intent":"account_takeover",',
        b'"tenant_id":"globex_pay",',
        b'"tenant_id":"initech_shop",',
        b'"tenant_id":"umbrella_wallet",',
    ]
    now = int(time.time() * 1000)
    out, seq = [], 0
    for _ in range(n_batches):
        msgs = []
        for _ in range(size):
            value = b'{"event_id":"e-%d",%s"event_time":%d,"features":%s}' % (
                seq,
                heads[seq % len(heads)],
                now - 200,
                pool[(seq * 7919) % len(pool)],
            )
            msgs.append(
                Message(
                    topic="bench.events",
                    partition=seq % 8,
                    offset=seq // 8,
                    key=b"e-%d" % seq,
                    value=value,
                    timestamp=(1, now - 100),
                )
            )
            seq += 1
        out.append(msgs)
    return out


def setup(*, trees: int = 200, depth: int = 6, seed: int = 0) -> SimpleNamespace:
    """The in-process stack: settings, registries, the real BatchScorer and a worker-shaped object for
    Telemetry (shared with bench/stages.py, so both time the same code on the same events)."""
    from muse_stream.scoring.scorer import BatchScorer
    from muse_stream.tenants import TenantRegistry
    from muse_stream.worker.runtime import WorkerStats

    settings = Settings(intents=tuple(IntentConfig(name=i) for i in _INTENTS), tenants=_TENANTS)
    models = _registry(trees, depth, seed)
    tenants = TenantRegistry(settings, {t.tenant_id: t for t in _TENANTS}, log_changes=False)
    scorer = BatchScorer(
        tenants,
        models,
        max_abs_feature=1e30,
        max_event_bytes=1_000_000,
        output_topic=lambda tid: f"bench.decisions.{tid}",
    )
    worker = SimpleNamespace(
        settings=settings,
        slot=0,
        stats=WorkerStats(),
        models=models,
        tenants=tenants,
        ready=True,
        consumer=None,
    )
    return SimpleNamespace(settings=settings, models=models, tenants=tenants, scorer=scorer, worker=worker)


def batches(n_batches: int, size: int, seed: int = 0) -> list[list]:
    """Batches of real Kafka Message objects holding the bench's event bytes."""
    return _batches(n_batches, size, seed)


def measure(
    *,
    batches: int = 200,
    batch_size: int = 2000,
    trees: int = 200,
    depth: int = 6,
    seed: int = 0,
    warmup: int = 5,
) -> dict:
    """Median microseconds per batch: scoring (BatchScorer.process) and telemetry (Telemetry.on_batch)."""
    from muse_stream.telemetry import Telemetry

    stack = setup(trees=trees, depth=depth, seed=seed)
    scorer = stack.scorer
    tel = Telemetry(stack.worker)
    score_us, tel_us = [], []
    for i, msgs in enumerate(_batches(batches + warmup, batch_size, seed)):
        t0 = time.perf_counter_ns()
        out = scorer.process(msgs, int(time.time() * 1000))
        t1 = time.perf_counter_ns()
        tel.on_batch(out, msgs, t0, t1)
        t2 = time.perf_counter_ns()
        if i >= warmup:
            score_us.append((t1 - t0) / 1e3)
            tel_us.append((t2 - t1) / 1e3)
    update_us = []
    for _ in range(20):
        t = time.perf_counter_ns()
        tel.update()
        update_us.append((time.perf_counter_ns() - t) / 1e3)
    tel.close()
    s, t = statistics.median(score_us), statistics.median(tel_us)
    return {
        "batch_size": batch_size,
        "batches": batches,
        "trees": trees,
        "depth": depth,
        "score_us_per_batch": round(s, 1),
        "telemetry_us_per_batch": round(t, 1),
        "telemetry_ns_per_event": round(t * 1e3 / batch_size, 1),
        "telemetry_share_of_scoring_pct": round(100.0 * t / s, 2),
        # Windows, drift and lag are judged every update_interval_s (default 5 s), not per batch.
        "update_us": round(statistics.median(update_us), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m muse_stream.bench.telemetry_overhead", description=__doc__.split("\n")[0]
    )
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--trees", type=int, default=200)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = measure(batches=args.batches, batch_size=args.batch_size, trees=args.trees)
    print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
