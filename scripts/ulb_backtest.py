"""Backtest and shadow flow on the ULB card data, end to end through Kafka (the README's tables and plot).

1. card_fraud@1 (the incumbent) goes live; three tenants set thresholds on its reference scale.
2. The calibration window's transactions flow through a worker while the retrained model runs in shadow.
3. `publish --from-shadow` refits the shadow version aligned to the incumbent on that window (version 3).
4. The held-out window's transactions are produced; two backtests run on the topic:
   A. the retrained booster file as candidate, fitted on the calibration window, judged on the held-out one;
   B. card_fraud@3 (fitted from the shadow window) judged on the held-out window.
Exits non-zero unless B keeps every tenant's alert rate within ±10% of the incumbent's.

Run: .venv/bin/python scripts/ulb_backtest.py [--bootstrap HOST:PORT] [--out out/ulb-backtest]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

from muse_stream.analysis.backtest import run_backtest, summary_markdown, write_report
from muse_stream.config import Settings, load_settings
from muse_stream.demo import scenario
from muse_stream.demo.datasets import load_ulb
from muse_stream.demo.ulb_models import (
    DEFAULT_WINDOWS,
    MODEL_FEATURES,
    model_matrix,
    score,
    train_retrained,
    window_mask,
)
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.local import LocalBroker, answers_metadata
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.ranges import Bound
from muse_stream.kafka.topics import ensure_all
from muse_stream.models.lifecycle import publish_from_shadow
from muse_stream.models.store import publish
from muse_stream.models.transform import fit_score_transform
from muse_stream.tenants import put_tenants
from muse_stream.worker.runtime import Worker


def produce_rows(settings: Settings, ulb, rows: np.ndarray, tenants: list[str]) -> int:
    p = OutputProducer(producer_config(settings, **{"linger.ms": 20}))
    feats = ulb.X[rows][:, [ulb.feature_names.index(f) for f in MODEL_FEATURES]].tolist()
    times = (scenario.BASE_MS + ulb.time[rows] * 1000).astype(np.int64).tolist()
    n = 0
    for row, f, t in zip(rows.tolist(), feats, times):
        features = dict(zip(MODEL_FEATURES, f))
        for tid in tenants:
            eid = f"{tid}-{row}"
            p.produce(settings.topics.events, orjson.dumps(
                {"event_id": eid, "tenant_id": tid, "event_time": t, "features": features}), eid.encode())
            n += 1
    p.flush(60)
    return n


def run_worker_until(settings: Settings, expected_decisions: int, timeout: float = 300) -> None:
    stop = threading.Event()
    w = Worker(settings, stop=stop)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while w.stats.decisions < expected_decisions and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    t.join(60)
    if w.stats.decisions < expected_decisions:
        raise SystemExit(f"the worker scored {w.stats.decisions} of {expected_decisions} events in {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("MUSE_BOOTSTRAP"))
    ap.add_argument("--out", default="out/ulb-backtest")
    args = ap.parse_args()
    base = load_settings(None, bootstrap=args.bootstrap)
    broker = None
    if not answers_metadata(base.kafka.bootstrap_servers):
        broker = LocalBroker(int(base.kafka.bootstrap_servers.rpartition(":")[2]))
        broker.start()
    ns = f"ulbbt.{uuid.uuid4().hex[:6]}."
    try:
        ulb = load_ulb()
        card = scenario.train_card_incumbent(ulb)
        tenants = [t.model_copy(update={"intents": ("card_fraud",), "default_intent": None})
                   for t in scenario.tenants()]
        s = base.with_overrides(
            topics={"events": ns + "events", "models": ns + "models", "tenants": ns + "tenants",
                    "deadletter": ns + "deadletter", "decisions_prefix": ns + "decisions.",
                    "shadow_prefix": ns + "shadow.", "events_partitions": 4},
            runtime={"group_id": ns + "g", "transactional_id_prefix": ns + "tx"})
        s = Settings.model_validate({**s.model_dump(), "tenants": [t.model_dump() for t in tenants],
                                     "intents": [{"name": "card_fraud"}]})
        ensure_all(s)
        put_tenants(s, tenants)
        publish(s, intent="card_fraud", booster_bytes=bytes(card.booster.save_raw("ubj")), features=card.features,
                transform=card.transform.to_dict(), reference=card.reference.to_dict(), activate=True)
        beta = 0.1
        retrained = train_retrained(ulb, negative_sampling_rate=beta)
        cal_rows = np.flatnonzero(window_mask(ulb.time, DEFAULT_WINDOWS.calibration))
        hold_rows = np.flatnonzero(window_mask(ulb.time, DEFAULT_WINDOWS.holdout))
        # Shadow: published with a transform onto the fixed reference; its window will refit it.
        st_fixed, _ = fit_score_transform(score(retrained, model_matrix(ulb, window_mask(
            ulb.time, DEFAULT_WINDOWS.incumbent_calibration))), reference=card.reference, negative_sampling_rate=beta)
        publish(s, intent="card_fraud", booster_bytes=bytes(retrained.save_raw("ubj")), features=card.features,
                transform=st_fixed.to_dict(), shadow=True)
        tids = [t.tenant_id for t in tenants]
        n_cal = produce_rows(s, ulb, cal_rows, tids)
        print(f"calibration window: {n_cal:,} events through a worker with card_fraud@2 in shadow ...")
        run_worker_until(s, n_cal)
        rep = publish_from_shadow(s, intent="card_fraud", version=2, window_ms=24 * 3_600_000, tenants=tenants)
        print(f"published {rep.record.name} from the shadow window ({rep.record.metadata['calibration_events']:,} events)")
        t_hold = int(time.time() * 1000)
        time.sleep(0.05)
        n_hold = produce_rows(s, ulb, hold_rows, tids)
        out = Path(args.out)
        with tempfile.TemporaryDirectory() as tmp:
            booster_path = Path(tmp) / "retrained.ubj"
            retrained.save_model(str(booster_path))
            labels = Path(tmp) / "labels.csv"
            rows = np.concatenate([cal_rows, hold_rows])
            labels.write_text("event_id,label\n" + "".join(f"{tid}-{r},{int(ulb.y[r])}\n" for r in rows.tolist()
                                                           for tid in tids))
            a = run_backtest(s, intent="card_fraud", candidate=str(booster_path), start=Bound("start"),
                             end=Bound("end"), labels=str(labels), calibration_fraction=n_cal / (n_cal + n_hold),
                             negative_sampling_rate=beta)
            b = run_backtest(s, intent="card_fraud", candidate="card_fraud@3", start=Bound("time", t_hold),
                             end=Bound("end"), labels=str(labels))
        write_report(a, out / "candidate-file")
        write_report(b, out / "from-shadow")
        print("\n## A. retrained booster file, transform fitted on the calibration window\n")
        print(summary_markdown(a))
        print("## B. card_fraud@3, published from the shadow window, on the following (held-out) window\n")
        print(summary_markdown(b))
        ratios = [band["ratio"] for t in b["tenants"] for band in t["bands"] if band["ratio"] is not None]
        ok = all(0.9 <= r <= 1.1 for r in ratios)
        print(f"{'PASS' if ok else 'FAIL'}: from-shadow alert-rate ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"reports in {out}")
        return 0 if ok else 1
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
