"""The IEEE-CIS pair through Kafka: both models live, the later window replayed, the decisions read back.

Two intents on one input topic: `ieee_plain` (the model without entity features, stateless) and `ieee_fraud`
(the model with them; the workers compute its entity features in the stream, with debug on so that each
decision carries the features it used). Each transaction is produced twice, once per intent (tenants
`plain_shop` and `state_shop`), keyed by its card_id, from WARMUP_DAYS before the evaluation window so every
card's windows are full when the evaluated events arrive. A read_committed reader keeps, per event id, the
raw score and the state features; AUC and recall at 1% are computed from those, and every evaluated event's
stream features are compared with the offline brute force the model was trained on.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from muse_stream.config import Settings, TenantConfig, load_settings
from muse_stream.demo import ieee_models as im
from muse_stream.demo.ieee_data import COLUMNS, IEEE
from muse_stream.demo.run import Workers, _delete_topics, reader_from_start
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.local import LocalBroker, answers_metadata
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import ensure_all
from muse_stream.models.store import publish
from muse_stream.models.transform import fit_score_transform
from muse_stream.tenants import put_tenants

logger = logging.getLogger(__name__)
PLAIN, STATEFUL = "ieee_plain", "ieee_fraud"
TENANTS = {PLAIN: "plain_shop", STATEFUL: "state_shop"}
CALIBRATION_DAYS = (im.TRAIN_DAYS[1], im.EVAL_DAYS[0])  # after training, before evaluation


@dataclass
class StreamOptions:
    eval_days: int | None = None  # evaluated days from the evaluation window's start (None: all of it)
    workers: int = 2
    bootstrap: str | None = None
    config: str | None = None
    out_dir: Path = Path("out")
    keep_topics: bool = False


@dataclass
class Collected:
    scores: dict[str, float] = field(default_factory=dict)  # event id -> raw score
    state: dict[str, dict] = field(default_factory=dict)  # event id -> state features used (stateful intent)
    dead: Counter = field(default_factory=Counter)
    duplicates: int = 0

    @property
    def count(self) -> int:
        return len(self.scores) + sum(self.dead.values())


class _Reader(threading.Thread):
    """Every committed decision and dead letter (read_committed), kept small: score and state per event id."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        super().__init__(daemon=True)
        self.c = reader_from_start(settings, topics, "ieee-reader")
        self.deadletter = settings.topics.deadletter
        self.data = Collected()
        self.stop = threading.Event()

    def run(self) -> None:
        d = self.data
        while not self.stop.is_set():
            for m in self.c.consume(2000, 0.1):
                if m.error() is not None:
                    continue
                if m.topic() == self.deadletter:
                    d.dead[dict(m.headers() or [])["muse.reason"].decode()] += 1
                    continue
                rec = orjson.loads(m.value())
                eid = rec["event_id"]
                d.duplicates += eid in d.scores
                d.scores[eid] = rec["raw_score"]
                if "state" in rec:
                    d.state[eid] = rec["state"]
        self.c.close()


def _settings(opts: StreamOptions, run_id: str, out_dir: Path) -> Settings:
    base = load_settings(opts.config, bootstrap=opts.bootstrap)
    ns = f"ieee.{run_id}."
    data = base.with_overrides(
        topics={"events": ns + "events", "models": ns + "models", "tenants": ns + "tenants",
                "deadletter": ns + "deadletter", "decisions_prefix": ns + "decisions.", "shadow_prefix": ns + "shadow."},
        runtime={"group_id": f"muse-ieee-{run_id}", "transactional_id_prefix": f"muse-ieee-{run_id}",
                 "workers": opts.workers, "state_dir": str(out_dir / "state")},
    ).model_dump()
    spec = {**im.SPEC.model_dump(), "debug": True}
    data["intents"] = [{"name": PLAIN}, {"name": STATEFUL, "state": spec}]
    data["tenants"] = [t.model_dump() for t in tenants()]
    return Settings.model_validate(data)


def tenants() -> list[TenantConfig]:
    return [TenantConfig(tenant_id=tid, intents=(intent,), bands={"review": {"rate": im.ALERT_RATE}})
            for intent, tid in TENANTS.items()]


def replay_rows(data: IEEE, eval_days: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows produced: warm-up and evaluated, rows evaluated), in file (time) order."""
    start = im.EVAL_DAYS[0]
    end = im.EVAL_DAYS[1] if eval_days is None else min(im.EVAL_DAYS[1], start + eval_days)
    produced = np.flatnonzero(im.day_mask(data, (start - im.WARMUP_DAYS, end)))
    return produced, np.flatnonzero(im.day_mask(data, (start, end)))


def events(data: IEEE, rows: np.ndarray, pair: im.Pair):
    """(key, value) per row and intent: the stateful event also carries card_id, email and device on top."""
    cards = np.array(im.card_ids(data), dtype=object)[rows].tolist()
    dist = {f: [v[r] for r in rows.tolist()] for f, v in im.distinct_values(data).items()}
    X = im.base_matrix(data, rows, pair.base_features)
    times = im.event_times_ms(data)[rows].tolist()
    tids = data.X[rows, COLUMNS.index("TransactionID")].astype(np.int64).tolist()
    names = pair.base_features
    amounts = data.amount[rows].tolist()  # as written in the file: X is float32, the entity sums are not
    for j, row in enumerate(X.tolist()):
        feats = {n: v for n, v in zip(names, row) if not math.isnan(v)}
        feats["TransactionAmt"] = amounts[j]
        key = cards[j].encode()
        yield key, orjson.dumps({"event_id": f"p-{tids[j]}", "tenant_id": TENANTS[PLAIN], "intent": PLAIN,
                                 "event_time": times[j], "features": feats})
        ev = {"event_id": f"s-{tids[j]}", "tenant_id": TENANTS[STATEFUL], "intent": STATEFUL,
              "event_time": times[j], "card_id": cards[j], "features": feats}
        for f, vals in dist.items():
            if vals[j] is not None:
                ev[f] = vals[j]
        yield key, orjson.dumps(ev)


def _publish(settings: Settings, data: IEEE, feats: np.ndarray, pair: im.Pair) -> None:
    cal = np.flatnonzero(im.day_mask(data, CALIBRATION_DAYS))
    Xb = im.base_matrix(data, cal, pair.base_features)
    for intent, booster, X, names, meta in (
            (PLAIN, pair.base, Xb, pair.base_features, {}),
            (STATEFUL, pair.stateful, np.hstack([Xb, feats[cal]]), pair.stateful_features,
             {"state_spec": im.SPEC.to_record()})):
        st, ref = fit_score_transform(im.predict(booster, X))
        publish(settings, intent=intent, booster_bytes=bytes(booster.save_raw("ubj")), features=names,
                transform=st.to_dict(), reference=ref.to_dict(), activate=True,
                reference_source=f"{intent}@1 on IEEE-CIS days {CALIBRATION_DAYS[0]}-{CALIBRATION_DAYS[1]}",
                metadata={"trained_on": f"IEEE-CIS days {im.TRAIN_DAYS[0]}-{im.TRAIN_DAYS[1]}", **meta})


def run_stream(opts: StreamOptions, data: IEEE, feats: np.ndarray, pair: im.Pair, say) -> dict:
    """Replay through Kafka; return what was read back and the comparison with the offline features."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    out_dir = opts.out_dir / f"ieee-{run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(opts, run_id, out_dir)
    broker = workers = reader = None
    if not opts.bootstrap and not os.environ.get("MUSE_BOOTSTRAP") and not answers_metadata(
            settings.kafka.bootstrap_servers):
        port = int(settings.kafka.bootstrap_servers.rpartition(":")[2])
        say(f"starting a local Kafka broker on 127.0.0.1:{port} ...")
        broker = LocalBroker(port, set_aside_newer=True)
        broker.start()
    try:
        ensure_all(settings)
        put_tenants(settings, tenants())
        _publish(settings, data, feats, pair)
        produced, evaluated = replay_rows(data, opts.eval_days)
        expected = 2 * produced.size
        workers = Workers(settings, opts.workers, out_dir)
        reader = _Reader(settings, [settings.output_topic(t) for t in tenants()] + [settings.topics.deadletter])
        reader.start()
        say(f"producing {expected:,} events ({produced.size:,} transactions x 2 intents, keyed by card_id) ...")
        producer = OutputProducer(producer_config(settings, **{"linger.ms": 20}), name="ieee producer")
        t0 = time.monotonic()
        for n, (key, value) in enumerate(events(data, produced, pair), 1):
            producer.produce(settings.topics.events, value, key)
            if n % 5000 == 0:
                producer.poll(0)
                workers.check()
        producer.flush(120)
        deadline = time.monotonic() + 600
        while reader.data.count < expected and time.monotonic() < deadline:
            workers.check()
            time.sleep(0.5)
        seconds = time.monotonic() - t0
        time.sleep(1.0)  # anything more would be a duplicate
        reader.stop.set()
        reader.join(10)
        code = workers.stop()
        workers = None
        return {"collected": reader.data, "expected": expected, "evaluated": evaluated, "produced": produced,
                "workers_exit": code, "seconds": seconds, "out_dir": out_dir}
    finally:
        if workers is not None:
            workers.stop()
        if reader is not None and reader.is_alive():
            reader.stop.set()
            reader.join(10)
        if not opts.keep_topics:
            _delete_topics(settings)
        if broker is not None:
            broker.stop()


def compare_features(data: IEEE, feats: np.ndarray, rows: np.ndarray, got: Collected) -> tuple[int, int, str]:
    """(events compared, events whose stream features differ from the offline ones, the first difference)."""
    names = im.SPEC.feature_names()
    tids = data.X[rows, COLUMNS.index("TransactionID")].astype(np.int64).tolist()
    bad, first = 0, ""
    for j, tid in enumerate(tids):
        s = got.state.get(f"s-{tid}")
        if s is None:
            continue
        stream = np.array([np.nan if s.get(n) is None else s[n] for n in names])
        if not np.allclose(stream, feats[rows[j]], rtol=1e-9, atol=1e-9, equal_nan=True):
            bad += 1
            if not first:
                k = int(np.flatnonzero(~np.isclose(stream, feats[rows[j]], rtol=1e-9, equal_nan=True))[0])
                first = f"s-{tid} {names[k]}: stream {stream[k]}, offline {feats[rows[j], k]}"
    return sum(f"s-{t}" in got.state for t in tids), bad, first


def stream_scores(data: IEEE, rows: np.ndarray, got: Collected, prefix: str) -> np.ndarray:
    """Raw scores of the evaluated rows from the decisions (NaN where an event had none)."""
    tids = data.X[rows, COLUMNS.index("TransactionID")].astype(np.int64).tolist()
    return np.array([got.scores.get(f"{prefix}-{t}", np.nan) for t in tids])

