"""The IEEE-CIS model pair: the same XGBoost trained with and without entity features, early window to later one.

The entity is a card as the data lets us name one: `card_id`, the producer-side join of card1, card2, card3,
card5 and addr1 (42,946 values; the file has no card number, and card4/card6 and P_emaildomain are not in
this wheel's extract). Its features are the worker's own (featurespec.StateSpec, `SPEC`): count, sum, mean and
max of TransactionAmt, distinct e-mail domains (R_emaildomain) and devices (DeviceInfo) over 1 h, 24 h and
7 d, and the seconds since the card's previous transaction; offline they are computed by brute force
(ieee_features.py) with the worker's rule, so the model is trained on exactly what the stream serves.

Windows (days of TransactionDT, which starts at day 1): train on days 1-121, evaluate on day 152 to the end
(day 183), a month later, as fraud models are used. Events replayed through Kafka start 7 days before the
evaluation window, so every card's state is warm (no window is longer) when the evaluated events arrive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from muse_stream.analysis.evaluation import auc
from muse_stream.demo.ieee_data import COLUMNS, IEEE
from muse_stream.demo.ieee_features import brute_force
from muse_stream.featurespec import StateSpec

logger = logging.getLogger(__name__)

INTENT = "ieee_fraud"
DAY = 86_400
TRAIN_DAYS = (1, 121)
EVAL_DAYS = (152, 184)
WARMUP_DAYS = 7
BASE_MS = 1_512_086_400_000  # 2017-12-01T00:00:00Z, the origin commonly assumed for TransactionDT
ENTITY = "card_id"
ENTITY_PARTS = ("card1", "card2", "card3", "card5", "addr1")
DISTINCT_SOURCES = {"email": "R_emaildomain", "device": "DeviceInfo"}  # top-level event field -> column
SPEC = StateSpec(entity=(ENTITY,), windows=("1h", "24h", "7d"),
                 aggregates=("count", "sum:TransactionAmt", "mean:TransactionAmt", "max:TransactionAmt",
                             "distinct:email", "distinct:device", "seconds_since_last"))
# Two base feature sets. "raw": what a payment event itself carries (amount, product, card and address
# fields, e-mail domain, device, identity fields). "all": every column but the row id, the label and the clock
# (a model that learns the clock does not carry over), which adds Vesta's C and V columns: counters and
# aggregates the data's provider computed upstream, velocity features among them.
RAW_FEATURES = ["TransactionAmt", "ProductCD", "card1", "card2", "card3", "card5", "addr1", "addr2",
                "R_emaildomain", "DeviceInfo", *(c for c in COLUMNS if c.startswith("id_"))]
ALL_FEATURES = [c for c in COLUMNS if c not in ("TransactionID", "isFraud", "TransactionDT")]
BASE_FEATURES = {"raw": RAW_FEATURES, "all": ALL_FEATURES}
ROUNDS = {"raw": 150, "all": 300}
PARAMS = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 8, "eta": 0.08, "subsample": 0.8,
          "colsample_bytree": 0.5, "min_child_weight": 2.0, "eval_metric": "auc", "nthread": 2, "seed": 0}
ALERT_RATE = 0.01


def day_mask(data: IEEE, days: tuple[int, int]) -> np.ndarray:
    return (data.time >= days[0] * DAY) & (data.time < days[1] * DAY)


def event_times_ms(data: IEEE) -> np.ndarray:
    return BASE_MS + data.time * 1000


def card_ids(data: IEEE) -> list[str]:
    """The `card_id` of every row: the parts joined with '-', a missing part left empty."""
    parts = [data.column(c) for c in ENTITY_PARTS]
    text = [np.where(np.isnan(p), "", np.nan_to_num(p).astype(np.int64).astype(str)) for p in parts]
    joined = text[0]
    for t in text[1:]:
        joined = np.char.add(np.char.add(joined, "-"), t)
    return joined.tolist()


def distinct_codes(data: IEEE) -> dict[str, np.ndarray]:
    """Per distinct field, the vocabulary code of each row; a missing value is one code of its own (-1)."""
    return {f: np.nan_to_num(data.column(col), nan=-1).astype(np.int64) for f, col in DISTINCT_SOURCES.items()}


def distinct_values(data: IEEE) -> dict[str, list[str | None]]:
    """The top-level event fields behind distinct_codes: the original text, None when missing."""
    out = {}
    for f, col in DISTINCT_SOURCES.items():
        words = data.vocab[col]
        out[f] = [None if c < 0 else words[c] for c in distinct_codes(data)[f].tolist()]
    return out


def entity_features(data: IEEE) -> np.ndarray:
    """SPEC's features of every row, by brute force over the whole file (float64 [n, len(SPEC names)])."""
    _, ent = np.unique(np.array(card_ids(data)), return_inverse=True)
    return brute_force(SPEC, ent.ravel(), event_times_ms(data), {"TransactionAmt": data.amount},
                       distinct_codes(data))


def base_matrix(data: IEEE, rows: np.ndarray, names: list[str]) -> np.ndarray:
    """float32, as the booster reads it (events carry TransactionAmt as written: see ieee_stream.events)."""
    return data.X[rows][:, [COLUMNS.index(c) for c in names]]


@dataclass(frozen=True)
class Pair:
    """The two boosters and their evaluation on the later window (rows `eval_rows`)."""

    base: xgb.Booster
    stateful: xgb.Booster
    base_features: list[str]
    stateful_features: list[str]
    eval_rows: np.ndarray
    base_scores: np.ndarray
    stateful_scores: np.ndarray


def train(X: np.ndarray, y: np.ndarray, names: list[str], rounds: int) -> xgb.Booster:
    d = xgb.DMatrix(X, label=y, feature_names=names, nthread=2)
    return xgb.train(PARAMS, d, num_boost_round=rounds)


def predict(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.inplace_predict(np.ascontiguousarray(X, dtype=np.float32)), dtype=np.float64)


def train_pair(data: IEEE, feats: np.ndarray, columns: str = "raw", *, rounds: int | None = None) -> Pair:
    """Both models on the training window, scored on the evaluation window. columns: "raw" or "all"."""
    tr, ev = np.flatnonzero(day_mask(data, TRAIN_DAYS)), np.flatnonzero(day_mask(data, EVAL_DAYS))
    base_names, names = list(BASE_FEATURES[columns]), list(SPEC.feature_names())
    rounds = rounds or ROUNDS[columns]
    Xb_tr, Xb_ev = base_matrix(data, tr, base_names), base_matrix(data, ev, base_names)
    Xs_tr, Xs_ev = np.hstack([Xb_tr, feats[tr]]), np.hstack([Xb_ev, feats[ev]])
    logger.info("training on %d rows (%d frauds), evaluating on %d", tr.size, int(data.y[tr].sum()), ev.size)
    base = train(Xb_tr, data.y[tr], base_names, rounds)
    stateful = train(Xs_tr, data.y[tr], base_names + names, rounds)
    return Pair(base, stateful, base_names, base_names + names, ev, predict(base, Xb_ev), predict(stateful, Xs_ev))


def recall_at(scores: np.ndarray, labels: np.ndarray, rate: float = ALERT_RATE) -> float:
    """Share of the frauds among the top `rate` of scores (the alerts a 1% review queue would raise)."""
    k = max(1, round(rate * scores.size))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(labels[top].sum() / max(1, labels.sum()))


@dataclass(frozen=True)
class Figures:
    events: int
    frauds: int
    auc: float
    recall: float

    def row(self, name: str) -> str:
        return f"| {name} | {self.events:,} | {self.frauds:,} | {self.auc:.4f} | {self.recall:.3f} |"


def figures(scores: np.ndarray, labels: np.ndarray) -> Figures:
    return Figures(int(labels.size), int(labels.sum()), auc(scores, labels), recall_at(scores, labels))
