"""Refusing at publish a booster whose outputs are not probabilities.

The transform maps probabilities, so a version whose booster can output a value outside [0, 1] (a regression
objective, raw margins) would make every worker dead-letter the events it scores that way. Its calibration
scores are not proof: a `reg:squarederror` booster trained on 0/1 labels may stay inside [0, 1] on the
calibration rows and leave it on live traffic. So publish also probes the feature space: each feature's range
(the calibration data's, and the booster's own split thresholds, which are where a tree's output can change)
widened by a margin, drawn at random, mixed with missing values, the split thresholds themselves, and the
extremes an event may carry (max_abs_feature). The probe is a search, not a proof; the scorer still
dead-letters (model_error) any output outside [0, 1] that gets past it.
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np

from muse_stream.errors import ModelError

logger = logging.getLogger(__name__)

PROBE_ROWS = 4096
MARGIN = 0.25  # each side of a feature's range is widened by this share of its span (at least of 1.0)
SPECIAL_SHARE = 0.3  # share of the mixed rows' cells set to a threshold, NaN, an edge or an extreme
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _tree_lists(booster) -> list[dict]:
    """The booster's trees as its JSON model lists them (gbtree or dart); [] for a linear booster."""
    try:
        gb = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]
    except (ValueError, KeyError, TypeError):
        return []
    model = gb.get("model") or gb.get("gbtree", {}).get("model") or {}
    return model.get("trees") or []


def split_thresholds(booster, n_features: int) -> list[np.ndarray]:
    """Per feature, the sorted numeric thresholds the booster's trees split it at (empty when none)."""
    found: list[list[np.ndarray]] = [[] for _ in range(n_features)]
    for tree in _tree_lists(booster):
        inner = np.asarray(tree.get("left_children", []), dtype=np.int64) != -1  # leaves have no split
        idx = np.asarray(tree.get("split_indices", []), dtype=np.int64)[inner]
        cond = np.asarray(tree.get("split_conditions", []), dtype=np.float64)[inner]
        kind = np.asarray(tree.get("split_type") or np.zeros(inner.size), dtype=np.int64)[inner]
        numeric = (kind == 0) & (idx >= 0) & (idx < n_features)  # a categorical split has no threshold
        for f in np.unique(idx[numeric]).tolist():
            found[f].append(cond[numeric & (idx == f)])
    return [np.unique(np.concatenate(c)) if c else np.empty(0) for c in found]


def feature_ranges(n_features: int, thresholds: list[np.ndarray], x: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per feature: the union of the calibration data's range and the split thresholds'
    (a feature with neither: [-1, 1]), widened by MARGIN."""
    lo, hi = np.full(n_features, np.inf), np.full(n_features, -np.inf)
    if x is not None and x.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: no range, not a problem
            lo = np.fmin(lo, np.nanmin(x, axis=0).astype(np.float64))
            hi = np.fmax(hi, np.nanmax(x, axis=0).astype(np.float64))
    for f, t in enumerate(thresholds):
        if t.size:
            lo[f], hi[f] = min(lo[f], t[0]), max(hi[f], t[-1])
    unknown = ~np.isfinite(lo) | ~np.isfinite(hi)
    lo[unknown], hi[unknown] = -1.0, 1.0
    pad = MARGIN * np.maximum(hi - lo, 1.0)
    return lo - pad, hi + pad


def probe_matrix(low: np.ndarray, high: np.ndarray, thresholds: list[np.ndarray], *, limit: float,
                 rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """A float32 probe of the feature space (fixed seed: a publish is reproducible). Half the rows are drawn
    uniformly per feature in [low, high]; in the other half, SPECIAL_SHARE of the cells are set to a split
    threshold (or just below it), NaN, an edge of the range or ±limit. Then a row each of all-NaN, all
    +limit, all -limit, all low and all high."""
    limit = min(float(limit), FLOAT32_MAX)
    low, high = np.clip(low, -limit, limit), np.clip(high, -limit, limit)
    rng = np.random.default_rng(seed)
    k = low.size
    x = rng.uniform(low, high, size=(rows, k))
    mixed = x[rows // 2:]
    for f in range(k):
        cells = np.flatnonzero(rng.random(len(mixed)) < SPECIAL_SHARE)
        t = thresholds[f][np.abs(thresholds[f]) <= limit]
        # Thresholds (and the float32 just below each: xgboost sends x < t left), then the fixed specials.
        options = np.concatenate([t, np.nextafter(t.astype(np.float32), np.float32(-np.inf)).astype(np.float64),
                                  [np.nan, -limit, limit, low[f], high[f]]])
        mixed[cells, f] = rng.choice(options, size=cells.size)
    fixed = np.array([np.full(k, np.nan), np.full(k, limit), np.full(k, -limit), low, high])
    return np.vstack([x, fixed]).astype(np.float32)


def probe_outputs(booster, n_features: int, *, x: np.ndarray | None, max_abs_feature: float) -> np.ndarray:
    """The booster's outputs on the probe of its feature space (see probe_matrix)."""
    thresholds = split_thresholds(booster, n_features)
    low, high = feature_ranges(n_features, thresholds, x)
    return predict(booster, probe_matrix(low, high, thresholds, limit=max_abs_feature), "the probe")


def predict(booster, x: np.ndarray, what: str) -> np.ndarray:
    """The booster's outputs on `x` (float64), as the workers will ask for them (inplace_predict); ModelError
    when it cannot give them: every worker would dead-letter every event the version scores."""
    try:
        return np.asarray(booster.inplace_predict(x, validate_features=False), dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - xgboost raises XGBoostError, ValueError, TypeError...
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ModelError(f"the booster cannot score {what}: {type(e).__name__}: {first}; nothing was published"
                         ) from None


def check_probabilities(booster, *, what: str, n_features: int, calibration_raw, calibration_x=None,
                        max_abs_feature: float) -> None:
    """Refuse (ModelError) a booster whose outputs leave [0, 1] on its calibration scores or on the probe:
    one error, with how many outputs left [0, 1] where, and an example value."""
    probe = probe_outputs(booster, n_features, x=calibration_x, max_abs_feature=max_abs_feature)
    parts, outside = [], []
    for where, out in (("calibration", calibration_raw), ("probe", probe)):
        raw = np.asarray(out, dtype=np.float64)
        if raw.ndim != 1:
            raise ModelError(f"{what}: the booster gives outputs of shape {raw.shape}, not one probability per "
                             f"row (a multi-class model?); nothing was published")
        bad = raw[~((raw >= 0.0) & (raw <= 1.0))]  # NaN is outside too
        if bad.size:
            parts.append(f"{bad.size} of {raw.size} {where} outputs")
            outside.append(bad)
    if parts:
        bad = np.concatenate(outside)
        # The example is the one furthest from [0, 1] (a NaN before any number): the most telling.
        example = float(bad[np.argmax(np.where(np.isnan(bad), np.inf, np.abs(bad - 0.5)))])
        raise ModelError(f"{what}: the booster's outputs are not probabilities: {' and '.join(parts)} are outside "
                         f"[0, 1] (e.g. {example:.6g}; objective {objective(booster)}); nothing was published")


def objective(booster) -> str:
    """The booster's training objective, as its config names it ("unknown" when it does not say)."""
    try:
        return str(json.loads(booster.save_config())["learner"]["objective"]["name"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
