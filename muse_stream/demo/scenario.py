"""What the demo replays: two intents' models, three tenants with different risk appetites, and events.

The held-out day of the ULB data is replayed twice, as two consecutive days of traffic: the first by the
incumbent, the second by the retrained model (activated from the second day's first event time). Both
days carry the same transactions, so any change in a tenant's alert rate comes from the model swap alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import xgboost as xgb

from muse_stream.config import TenantConfig
from muse_stream.demo.datasets import ULB
from muse_stream.demo.ulb_models import (
    DEFAULT_NEGATIVE_SAMPLING_RATE,
    DEFAULT_WINDOWS,
    MODEL_FEATURES,
    model_matrix,
    score,
    train_incumbent,
    train_retrained,
    window_mask,
)
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.transform import ScoreTransform, fit_score_transform

CARD = "card_fraud"
CNP = "cnp_fraud"  # card-not-present: the second intent, with a model of its own
CNP_FEATURES = [f"V{i}" for i in range(1, 15)] + ["Amount"]
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: day 0 of the replay
DAY_MS = 86_400_000 * 2  # each replayed "day" spans the data's two days of Time


@dataclass(frozen=True)
class Published:
    booster: xgb.Booster
    features: list[str]
    transform: ScoreTransform
    reference: ReferenceDistribution


# The reference population: every event after the first model's training window and before the held-out day,
# a full daily cycle. Tenants' bands are alert rates on it, so it must look like the traffic they are scored on:
# ULB's fraud comes in bursts, and a reference of one evening only (the calibration window alone) put the
# held-out day's alert rates 1.2 to 2.2 times the configured ones, where this one puts them within ±15%.
REFERENCE_WINDOW = (DEFAULT_WINDOWS.incumbent_calibration[0], DEFAULT_WINDOWS.holdout[0])


def go_live(ulb: ULB, booster: xgb.Booster, features: list[str]) -> Published:
    """An intent's first model: its calibration window (after its training window) defines the reference."""
    rows = window_mask(ulb.time, REFERENCE_WINDOW)
    raw = score(booster, _matrix(ulb, features, rows))
    st, ref = fit_score_transform(raw)
    return Published(booster, features, st, ref)


def train_card_incumbent(ulb: ULB) -> Published:
    return go_live(ulb, train_incumbent(ulb), MODEL_FEATURES)


def train_cnp(ulb: ULB) -> Published:
    rows = window_mask(ulb.time, DEFAULT_WINDOWS.incumbent_train)
    d = xgb.DMatrix(_matrix(ulb, CNP_FEATURES, rows), label=ulb.y[rows], feature_names=CNP_FEATURES, nthread=2)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "eta": 0.1, "seed": 0,
              "nthread": 2}
    return go_live(ulb, xgb.train(params, d, 120), CNP_FEATURES)


def train_card_retrained(ulb: ULB, incumbent: Published) -> tuple[xgb.Booster, ScoreTransform, float]:
    """The retrained model, its transform aligned to the incumbent on a calibration window neither trained on."""
    beta = DEFAULT_NEGATIVE_SAMPLING_RATE
    booster = train_retrained(ulb, negative_sampling_rate=beta)
    rows = window_mask(ulb.time, DEFAULT_WINDOWS.calibration)
    x = model_matrix(ulb, rows)
    served = incumbent.transform.apply(score(incumbent.booster, x))
    st, _ = fit_score_transform(score(booster, x), reference=incumbent.reference, incumbent_ref_scores=served,
                                negative_sampling_rate=beta)
    return booster, st, beta


def _matrix(ulb: ULB, features: list[str], rows: np.ndarray) -> np.ndarray:
    cols = [ulb.feature_names.index(f) for f in features]
    return np.ascontiguousarray(ulb.X[rows][:, cols])


def tenants() -> list[TenantConfig]:
    """Three risk appetites, as alert rates: each band is the threshold at which that share of the intent's
    reference population alerts, resolved by the workers through the intent's reference."""
    r = lambda rate: {"rate": rate}
    return [
        TenantConfig(tenant_id="cautious_bank", intents=(CARD,), bands={"review": r(0.05), "decline": r(0.01)}),
        TenantConfig(tenant_id="balanced_pay", intents=(CARD, CNP), default_intent=CARD,
                     bands={"review": r(0.01), "decline": r(0.002)}),
        TenantConfig(tenant_id="lenient_shop", intents=(CARD,), bands={"review": r(0.005)}),
    ]


def replay_rows(ulb: ULB, limit: int | None) -> np.ndarray:
    rows = np.flatnonzero(window_mask(ulb.time, DEFAULT_WINDOWS.holdout))
    return rows if limit is None else rows[:limit]


# A few events that must go to the dead-letter topic, each for its own reason.
MALFORMED = [
    b'{"event_id": "bad-json", "tenant_id": "cautious_bank",',
    orjson.dumps({"event_id": "bad-tenant", "tenant_id": "nobody", "event_time": BASE_MS, "features": {}}),
    orjson.dumps({"event_id": "bad-missing", "tenant_id": "cautious_bank", "event_time": BASE_MS}),
    orjson.dumps({"event_id": "bad-type", "tenant_id": "lenient_shop", "event_time": BASE_MS,
                  "features": {"V1": "high"}}),
    orjson.dumps({"event_id": "bad-intent", "tenant_id": "lenient_shop", "intent": CNP, "event_time": BASE_MS,
                  "features": {"V1": 0.1}}),
    orjson.dumps({"event_id": "bad-value", "tenant_id": "cautious_bank", "event_time": BASE_MS,
                  "features": {"Amount": 1e300}}),
]


def day_events(ulb: ULB, rows: np.ndarray, day: int, tenant_ids: list[str]):
    """Yield (key, value) of one replayed day: each transaction once per tenant, some also as CNP events.

    Malformed records are spread through the day."""
    cols = [ulb.feature_names.index(f) for f in MODEL_FEATURES]
    feats = ulb.X[rows][:, cols].tolist()
    times = (BASE_MS + day * DAY_MS + ulb.time[rows] * 1000).astype(np.int64).tolist()
    every = max(1, len(rows) // (len(MALFORMED) + 1))
    bad = iter(MALFORMED)
    for j, (row, f, t) in enumerate(zip(rows.tolist(), feats, times)):
        features = dict(zip(MODEL_FEATURES, f))
        for tid in tenant_ids:
            eid = f"{tid}-d{day}-{row}"
            yield eid.encode(), orjson.dumps({"event_id": eid, "tenant_id": tid, "event_time": t, "features": features})
        if j % 4 == 0:  # carrying the fields the card-not-present model knows (the others would be refused)
            eid = f"balanced_pay-cnp-d{day}-{row}"
            yield eid.encode(), orjson.dumps({"event_id": eid, "tenant_id": "balanced_pay", "intent": CNP,
                                              "event_time": t, "features": {k: features[k] for k in CNP_FEATURES}})
        if j and j % every == 0:
            raw = next(bad, None)
            if raw is not None:
                yield f"bad-d{day}-{j}".encode(), raw


def day_size(n_rows: int, n_tenants: int) -> int:
    every = max(1, n_rows // (len(MALFORMED) + 1))
    n_bad = min(len(MALFORMED), sum(1 for j in range(1, n_rows) if j % every == 0))
    return n_rows * n_tenants + (n_rows + 3) // 4 + n_bad
