"""Level 2 of the score transform: quantile maps onto an intent's fixed reference distribution.

``ReferenceDistribution`` is an intent's reference scale, fixed once, as monotone quantile knots.
``QuantileMap`` sends corrected scores through s_ref = F_ref^-1(F_model(p)), both distributions kept as
knots on one shared level grid, so the map is one piecewise-linear interpolation, strictly increasing on
its knots (ranking, and so AUC, is unchanged). Fitted state is plain arrays, persisted as JSON lists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from muse_stream.errors import NotFittedError, TransformError
from muse_stream.models.knots import (
    FORMAT,
    MIN_FIT_SCORES,
    as_1d,
    as_probabilities,
    calibration_scores,
    check_knots,
    check_levels,
    default_levels,
    optional_float,
    record_field,
    strict_knots,
    with_tie_levels,
)

logger = logging.getLogger(__name__)

NanPolicy = Literal["propagate", "raise"]
Tails = Literal["extend", "clip"]
_NAN_POLICIES = ("propagate", "raise")
_TAILS = ("extend", "clip")


class ReferenceDistribution:
    """An intent's fixed reference distribution, as monotone quantile knots.

    levels: strictly increasing probability levels from 0 to 1; values: F_ref^-1 at those levels.
    low, high: the ends of the reference scale (default: the first and last value); a map extends
    scores beyond its calibration range toward them.
    """

    def __init__(self, *, levels: Any, values: Any, low: float | None = None, high: float | None = None):
        lv = as_1d(levels, "reference levels")
        vals = as_1d(values, "reference values")
        check_levels(lv, "reference levels")
        check_knots(vals, lv.size, "reference values")
        lo = float(vals[0]) if low is None else optional_float(low, "low")
        hi = float(vals[-1]) if high is None else optional_float(high, "high")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= vals[0] and hi >= vals[-1] and lo < hi):
            raise TransformError("reference: need finite low <= first value, high >= last value, low < high")
        self._levels, self._values, self._low, self._high = lv, vals, lo, hi
        self._cdf_x, self._cdf_q = strict_knots(lv, vals, lv)

    @classmethod
    def from_scores(
        cls, scores: Any, *, levels: Any = None, low: float = 0.0, high: float = 1.0
    ) -> ReferenceDistribution:
        """The empirical distribution of `scores` (e.g. the first model's corrected calibration scores)."""
        lv = default_levels() if levels is None else as_1d(levels, "levels")
        check_levels(lv)
        s = np.sort(calibration_scores(scores, "reference scores", low, high))
        lv = with_tie_levels(lv, s)
        values = np.maximum.accumulate(np.quantile(s, lv))
        logger.info("reference built from %d scores on %d knots", s.size, lv.size)
        return cls(levels=lv, values=values, low=low, high=high)

    @property
    def levels(self) -> np.ndarray:
        return self._levels.copy()

    @property
    def values(self) -> np.ndarray:
        return self._values.copy()

    @property
    def low(self) -> float:
        return self._low

    @property
    def high(self) -> float:
        return self._high

    def quantile(self, levels: Any) -> np.ndarray:
        """F_ref^-1: the reference value at each probability level in [0, 1]."""
        q = as_probabilities(levels, "levels")
        return np.interp(q, self._levels, self._values)

    def cdf(self, values: Any) -> np.ndarray:
        """F_ref: the level of each value (0 below the first knot, 1 above the last, mid-level at ties)."""
        v = as_1d(values, "values")
        return np.interp(v, self._cdf_x, self._cdf_q, left=0.0, right=1.0)

    def tie_levels(self) -> np.ndarray:
        """The level at which each run of equal reference values begins (a mass point of the reference)."""
        v = self._values
        begins = np.flatnonzero((v[1:] == v[:-1]) & np.append(True, v[1:-1] > v[:-2]))
        return self._levels[begins]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "levels": self._levels.tolist(),
            "values": self._values.tolist(),
            "low": self._low,
            "high": self._high,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceDistribution:
        what = "reference"
        if record_field(d, "format", what) != FORMAT:
            raise TransformError(f"{what}: unsupported format {d['format']!r}")
        return cls(
            levels=record_field(d, "levels", what),
            values=record_field(d, "values", what),
            low=record_field(d, "low", what),
            high=record_field(d, "high", what),
        )


class QuantileMap:
    """Level 2: s_ref = F_target^-1(F_model(p)), with both distributions as knots on one level grid.

    The target is the intent's fixed reference, or, aligned to the incumbent, the distribution of the
    incumbent's reference-scale scores on the same calibration window.

    levels: the level grid (default ``default_levels()``).
    tails: scores outside the calibration range. "extend" (default) interpolates linearly from the
      last knot to the domain end (p = 0 -> reference low, p = 1 -> reference high), so the map stays
      strictly increasing; "clip" holds the first/last mapped knot value (ranking is lost out there).
    nan_policy: "propagate" (NaN in, NaN out; default) or "raise" (TransformError).
    """

    def __init__(self, *, levels: Any = None, tails: Tails = "extend", nan_policy: NanPolicy = "propagate"):
        self.levels = levels
        self.tails = tails
        self.nan_policy = nan_policy

    def fit(self, scores: Any, *, reference: ReferenceDistribution, target_scores: Any = None) -> QuantileMap:
        """Fit on corrected calibration `scores` the model did not train on.

        target_scores: the incumbent's reference-scale scores for the same events (aligned fit); when
        None, the map goes onto `reference`'s quantiles.
        """
        self._check_params()
        if not isinstance(reference, ReferenceDistribution):
            raise TransformError("reference must be a ReferenceDistribution")
        lv = default_levels() if self.levels is None else as_1d(self.levels, "levels")
        check_levels(lv)
        p = calibration_scores(scores, "calibration scores")
        # The grid gains the levels where the target's mass points begin, so a threshold on one keeps its rate.
        if target_scores is None:
            lv = np.union1d(lv, reference.tie_levels())
            target_knots = reference.quantile(lv)
        else:
            t = np.sort(calibration_scores(target_scores, "target scores", reference.low, reference.high))
            if t.size != p.size:
                raise TransformError(
                    f"aligned fit needs both models' scores on the same events ({p.size} vs {t.size})"
                )
            lv = with_tie_levels(lv, t)
            target_knots = np.quantile(t, lv)
        model_knots = np.maximum.accumulate(np.quantile(p, lv))
        self.levels_ = lv
        self.model_knots_ = model_knots
        self.target_knots_ = np.maximum.accumulate(target_knots)
        self.low_, self.high_ = reference.low, reference.high
        self.n_fit_ = int(p.size)
        self._build()
        return self

    def _check_params(self) -> None:
        if self.tails not in _TAILS:
            raise TransformError(f"tails must be one of {_TAILS}, got {self.tails!r}")
        if self.nan_policy not in _NAN_POLICIES:
            raise TransformError(f"nan_policy must be one of {_NAN_POLICIES}, got {self.nan_policy!r}")

    def _build(self) -> None:
        """Derive the interpolation knots from the fitted arrays (also run on load)."""
        x, y = strict_knots(self.levels_, self.model_knots_, self.target_knots_)
        if self.tails == "extend":
            # Anchor the domain ends only where that keeps both coordinates strictly increasing.
            if x[0] > 0.0 and y[0] > self.low_:
                x, y = np.append(0.0, x), np.append(self.low_, y)
            if x[-1] < 1.0 and y[-1] < self.high_:
                x, y = np.append(x, 1.0), np.append(y, self.high_)
        self._x, self._y = x, y
        # np.interp can land one ulp above the next knot just below it; capping by that knot keeps the
        # map exactly monotone.
        self._y_cap = np.append(y, y[-1])

    def _check_fitted(self) -> None:
        if not hasattr(self, "_x"):
            raise NotFittedError("QuantileMap is not fitted; call fit() first")

    @property
    def n_knots(self) -> int:
        self._check_fitted()
        return int(self._x.size)

    def transform(self, scores: Any) -> np.ndarray:
        """Map corrected scores in [0, 1] onto the reference scale (float64)."""
        self._check_fitted()
        return self._apply(as_probabilities(scores, "scores"))

    def _apply(self, p: np.ndarray) -> np.ndarray:
        if self.nan_policy == "raise" and np.isnan(p).any():
            raise TransformError("NaN score(s) and nan_policy='raise'")
        out = np.interp(p, self._x, self._y)
        # NaN indexes past the end (searchsorted sorts NaN last) and np.minimum keeps it NaN.
        np.minimum(out, self._y_cap[np.searchsorted(self._x, p, side="right")], out=out)
        return out

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": FORMAT,
            "levels": self.levels_.tolist(),
            "model_knots": self.model_knots_.tolist(),
            "target_knots": self.target_knots_.tolist(),
            "low": self.low_,
            "high": self.high_,
            "n_fit": self.n_fit_,
            "tails": self.tails,
            "nan_policy": self.nan_policy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantileMap:
        what = "quantile map"
        if record_field(d, "format", what) != FORMAT:
            raise TransformError(f"{what}: unsupported format {d['format']!r}")
        qm = cls(tails=record_field(d, "tails", what), nan_policy=record_field(d, "nan_policy", what))
        qm._check_params()
        lv = as_1d(record_field(d, "levels", what), "levels")
        check_levels(lv)
        mk = as_1d(record_field(d, "model_knots", what), "model_knots")
        tk = as_1d(record_field(d, "target_knots", what), "target_knots")
        check_knots(mk, lv.size, "model_knots")
        check_knots(tk, lv.size, "target_knots")
        low, high = optional_float(record_field(d, "low", what), "low"), optional_float(record_field(d, "high", what), "high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise TransformError(f"{what}: low and high must be finite numbers")
        if mk[0] < 0.0 or mk[-1] > 1.0 or not (low <= tk[0] and tk[-1] <= high and low < high):
            raise TransformError(f"{what}: knots outside their domain")
        n_fit = record_field(d, "n_fit", what)
        if isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < MIN_FIT_SCORES:
            raise TransformError(f"{what}: invalid n_fit {n_fit!r}")
        qm.levels_, qm.model_knots_, qm.target_knots_ = lv, mk, tk
        qm.low_, qm.high_, qm.n_fit_ = low, high, n_fit
        qm._build()
        return qm
