"""Reason codes: the features that pushed a flagged decision's score up the most.

Contributions are XGBoost's exact tree contributions (path-dependent TreeSHAP, the values of
`pred_contribs=True`), in the booster's margin space (log-odds for binary:logistic): per row they sum, with the
bias column XGBoost adds last, to the row's margin. They are computed only for the rows a batch flags (band
other than approve), in one call per (intent, version) group. The call is scoring/treeshap.py's leaf tables
in C where the extension is built and the booster within their reach (the same values to float32 rounding,
about a tenth of the cost), else XGBoost's own pred_contribs, whose exact TreeSHAP costs per row about
trees x leaves x depth^2 steps (docs/results.md has both paths' figures).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import orjson

from muse_stream.scoring import treeshap

logger = logging.getLogger(__name__)


def contributions(booster, x: np.ndarray) -> np.ndarray:
    """Exact per-feature contributions of float32 rows (n_rows x n_features, float32), bias column dropped.

    The DMatrix reads missing values as NaN, as the serving call (inplace_predict) does, so a row's
    contributions explain the score it was served. One thread: a worker is one process per core."""
    import xgboost as xgb

    dm = xgb.DMatrix(x, missing=np.nan, nthread=1)
    c = booster.predict(dm, pred_contribs=True, validate_features=False)
    if c.ndim != 2 or c.shape != (len(x), x.shape[1] + 1):
        raise ValueError(f"pred_contribs gave shape {c.shape} for {x.shape}; one output per row is supported")
    return c[:, :-1]


def top_features(contribs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices and values of the n largest contributions, largest first; ties by column
    order (a stable sort), so live and replay name the same features. n above the column count gives all."""
    order = np.argsort(-contribs, axis=1, kind="stable")[:, : min(n, contribs.shape[1])]
    return order, np.take_along_axis(contribs, order, axis=1)


def reasons_json(features: Sequence[str], order: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each row's `,"reasons":[...]` fragment (an object array of bytes), from a template: each feature's
    head JSON-encoded once per model, the float32 values written by orjson in one call (shortest float32
    text), split at the commas, and the pieces joined column by column (one elementwise bytes + per reason,
    not per row)."""
    n_rows, n = order.shape
    if n == 0:
        return np.full(n_rows, b',"reasons":[]', dtype=object)
    first, after = _heads(tuple(features))
    nums = np.empty(n_rows * n, dtype=object)
    nums[:] = orjson.dumps(values.ravel(), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    nums = nums.reshape(n_rows, n)
    out = first[order[:, 0]] + nums[:, 0]
    for i in range(1, n):
        out = out + after[order[:, i]] + nums[:, i]
    return out + b"}]"


@functools.lru_cache(maxsize=64)
def _heads(features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the JSON before its value as a first reason and as a later one (object arrays)."""
    names = [orjson.dumps(f) for f in features]
    first = np.array([b',"reasons":[{"feature":' + f + b',"contribution":' for f in names], dtype=object)
    after = np.array([b'},{"feature":' + f + b',"contribution":' for f in names], dtype=object)
    return first, after


class ReasonCodes:
    """How many reasons each intent's flagged decisions carry, and the step that adds them to a group."""

    def __init__(self, counts: dict[str, int], default: int, native: bool | None = None) -> None:
        self.counts = counts
        self.default = default
        self.native = native  # the TreeSHAP tables in C: None as the process chose, False never (A/B)
        self._failed: set[str] = set()  # model names already warned about
        self._told: set[str] = set()  # model names whose path was logged

    @classmethod
    def from_intents(cls, intents: Iterable) -> ReasonCodes:
        """From the settings' IntentConfig records; an intent they do not name gets IntentConfig's default."""
        from muse_stream.config import IntentConfig

        return cls({i.name: i.reason_codes for i in intents}, IntentConfig.model_fields["reason_codes"].default)

    def count(self, intent: str) -> int:
        return self.counts.get(intent, self.default)

    def add(self, model, x: np.ndarray, band_json: np.ndarray, flagged: np.ndarray) -> None:
        """Append the reasons to the band JSON of each flagged row (band_json: object array of bytes, the
        group's rows in x's order; flagged: a bool per row, its band other than approve), in place: one
        contributions call for all of them. A booster that cannot give contributions leaves its decisions
        without reasons, and is warned about once."""
        n = self.count(model.intent)
        if n <= 0:
            return
        flagged = np.flatnonzero(flagged)
        if not flagged.size:
            return
        try:
            order, values = self.top(model, x[flagged], n)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the decision stands without its reasons
            if model.name not in self._failed:
                self._failed.add(model.name)
                logger.warning("%s: no reason codes, pred_contribs failed: %s: %s", model.name, type(e).__name__,
                               str(e).strip().splitlines()[0][:300] if str(e).strip() else "")
            return
        band_json[flagged] += reasons_json(model.features, order, values)

    def top(self, model, x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows' n largest contributions (top_features of contributions()), ranked in C with the tables."""
        ext, tables = self._path(model, x.shape[1])
        if tables is not None and tables.n_features <= treeshap.MAX_TOP_COLUMNS:
            return treeshap.top_contributions(tables, x, ext, n)
        return top_features(self.contributions(model, x), n)

    def contributions(self, model, x: np.ndarray) -> np.ndarray:
        """The rows' contributions by the fast tables when this process and the booster allow, else XGBoost's."""
        ext, tables = self._path(model, x.shape[1])
        if tables is not None:
            return treeshap.contributions(tables, x, ext)
        return contributions(model.booster, x)

    def prepare(self, model, n_features: int) -> None:
        """Build the version's tables (or find it has none) before its first flagged batch needs them."""
        try:
            self._path(model, n_features)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the first flagged batch will meet it again, and warn
            logger.debug("%s: reason code tables not prepared: %s", model.name, e)

    def _path(self, model, n_features: int):
        """(the C extension, the booster's tables), or tables None for XGBoost's call; which one a model uses
        is logged once per model, with the tables' size and build time."""
        ext = treeshap.module(self.native)
        ex = treeshap.explainer(model.booster, n_features) if ext is not None else None
        if model.name not in self._told:
            self._told.add(model.name)
            how = ex.describe() if ex is not None else treeshap.active_path() if self.native is None else \
                "pred_contribs (switched off)"
            logger.info("%s: reason codes by %s", model.name, how)
        return ext, (ex.tables if ex is not None else None)
