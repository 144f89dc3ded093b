"""Score transformation: raw model scores onto an intent's fixed reference scale.

Two monotone levels (see the architecture guide, "Score transformation"):

1. ``PosteriorCorrection`` undoes the prior shift of training (negative undersampling or reweighting).
2. ``QuantileMap`` sends corrected scores through s_ref = F_ref^-1(F_model(p)), both distributions kept
   as quantile knots on one shared level grid, so the map is one piecewise-linear interpolation.

``ScoreTransform`` bundles level 1, the intent-level map and optional per-tenant maps;
``fit_score_transform`` fits one for a model version. Every map is strictly increasing on its knots,
so ranking (AUC) is unchanged. Fitted state is plain arrays, persisted as JSON lists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from muse_stream.errors import NotFittedError, TransformError

logger = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_MIN_TENANT_EVENTS = 2000
# Fewer calibration scores than this cannot say anything useful about a distribution.
MIN_FIT_SCORES = 100

NanPolicy = Literal["propagate", "raise"]
Tails = Literal["extend", "clip"]
_NAN_POLICIES = ("propagate", "raise")
_TAILS = ("extend", "clip")


def default_levels(
    *, body_step: float = 1e-3, tail_start: float = 1e-2, tail_end: float = 1e-7, per_decade: int = 300
) -> np.ndarray:
    """The shared probability-level grid: uniform in the body, log-spaced in 1 - q in the top tail.

    Defaults give 2,492 levels; within the top 0.1% adjacent levels are less than 8e-6 apart, because
    alert thresholds live there.
    """
    if not (0 < tail_end < tail_start < 1 and 0 < body_step < 1 and per_decade >= 1):
        raise TransformError("invalid level grid parameters")
    body = np.linspace(0.0, 1.0 - tail_start, round((1.0 - tail_start) / body_step) + 1)
    n_tail = round(math.log10(tail_start / tail_end) * per_decade)
    # The first log point equals the body's last level: skip it rather than risk a near-duplicate.
    tail = 1.0 - np.logspace(math.log10(tail_start), math.log10(tail_end), n_tail + 1)[1:]
    return np.concatenate([body, tail, [1.0]])


# ---- validation helpers -------------------------------------------------------------------------


def _as_1d(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TransformError(f"{name}: not numeric: {e}") from None
    if arr.ndim != 1:
        raise TransformError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _as_probabilities(a: Any, name: str) -> np.ndarray:
    """A 1-D float64 array with every non-NaN value in [0, 1]."""
    arr = _as_1d(a, name)
    bad = (arr < 0.0) | (arr > 1.0)  # NaN compares False: it is left to the NaN policy
    if bad.any():
        raise TransformError(f"{name}: {int(bad.sum())} value(s) outside [0, 1] (or infinite)")
    return arr


def _calibration_scores(a: Any, name: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    arr = _as_1d(a, name)
    if not np.isfinite(arr).all():
        raise TransformError(f"{name}: calibration scores must be finite (no NaN)")
    if arr.size < MIN_FIT_SCORES:
        raise TransformError(f"{name}: {arr.size} scores, need at least {MIN_FIT_SCORES}")
    if arr.min() < low or arr.max() > high:
        raise TransformError(f"{name}: scores outside [{low}, {high}]")
    return arr


def _check_levels(levels: np.ndarray, name: str = "levels") -> None:
    if levels.size < 2 or not np.isfinite(levels).all():
        raise TransformError(f"{name}: need at least 2 finite levels")
    if levels[0] != 0.0 or levels[-1] != 1.0:
        raise TransformError(f"{name}: must start at 0 and end at 1")
    if not (np.diff(levels) > 0).all():
        raise TransformError(f"{name}: must be strictly increasing")


def _check_knots(values: np.ndarray, n: int, name: str) -> None:
    if values.size != n:
        raise TransformError(f"{name}: {values.size} knots for {n} levels")
    if not np.isfinite(values).all():
        raise TransformError(f"{name}: knots must be finite")
    if (np.diff(values) < 0).any():
        raise TransformError(f"{name}: knots must be non-decreasing")


def _field(d: Mapping[str, Any], key: str, what: str) -> Any:
    if not isinstance(d, Mapping):
        raise TransformError(f"{what}: expected a dict, got {type(d).__name__}")
    if key not in d:
        raise TransformError(f"{what}: missing {key!r}")
    return d[key]


def _opt_float(v: Any, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TransformError(f"{name}: expected a number, got {v!r}")
    return float(v)


def _strict_knots(levels: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse runs of tied knots so both coordinates strictly increase.

    A run of equal x (a mass point in the model's scores) or equal y becomes one knot at the run's
    middle level. The resulting map is strictly increasing, so it never creates ties between scores.
    """
    starts_mask = np.ones(x.size, dtype=bool)
    starts_mask[1:] = (x[1:] > x[:-1]) & (y[1:] > y[:-1])
    starts = np.flatnonzero(starts_mask)
    ends = np.append(starts[1:], x.size) - 1
    mid = 0.5 * (levels[starts] + levels[ends])
    # Clip into the run's own range so a rounding overshoot cannot meet the next run.
    xs = np.clip(np.interp(mid, levels, x), x[starts], x[ends])
    ys = np.clip(np.interp(mid, levels, y), y[starts], y[ends])
    return xs, ys


# ---- level 1 ------------------------------------------------------------------------------------


class PosteriorCorrection:
    """Level 1: move a model's probabilities from its training prior to the production prior.

    negative_sampling_rate: negatives were kept at rate beta in training; p = beta*s / (beta*s - s + 1).
    train_prevalence, prod_prevalence: the general case; odds are scaled by
    (pi_prod / (1 - pi_prod)) / (pi_train / (1 - pi_train)). Give one case or neither (identity).
    NaN passes through as NaN; values outside [0, 1] are an error.
    """

    def __init__(
        self,
        *,
        negative_sampling_rate: float | None = None,
        train_prevalence: float | None = None,
        prod_prevalence: float | None = None,
    ) -> None:
        self.negative_sampling_rate = negative_sampling_rate
        self.train_prevalence = train_prevalence
        self.prod_prevalence = prod_prevalence

    def fit(self, scores: Any = None) -> PosteriorCorrection:
        """Validate the parameters and fix the odds ratio (closed form: scores are not needed)."""
        beta = _opt_float(self.negative_sampling_rate, "negative_sampling_rate")
        pi_t = _opt_float(self.train_prevalence, "train_prevalence")
        pi_p = _opt_float(self.prod_prevalence, "prod_prevalence")
        if (pi_t is None) != (pi_p is None):
            raise TransformError("give both train_prevalence and prod_prevalence, or neither")
        if beta is not None and pi_t is not None:
            raise TransformError("give negative_sampling_rate or the prevalences, not both")
        if beta is not None:
            if not 0.0 < beta <= 1.0:
                raise TransformError(f"negative_sampling_rate must be in (0, 1], got {beta}")
            ratio = beta
        elif pi_t is not None and pi_p is not None:
            if not (0.0 < pi_t < 1.0 and 0.0 < pi_p < 1.0):
                raise TransformError("prevalences must be in (0, 1)")
            ratio = (pi_p / (1.0 - pi_p)) / (pi_t / (1.0 - pi_t))
        else:
            ratio = 1.0
        self.odds_ratio_ = float(ratio)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "odds_ratio_"):
            raise NotFittedError("PosteriorCorrection is not fitted; call fit() first")

    def transform(self, scores: Any) -> np.ndarray:
        """Corrected probabilities, float64, same shape (1-D)."""
        self._check_fitted()
        return self._apply(_as_probabilities(scores, "scores"))

    def _apply(self, s: np.ndarray) -> np.ndarray:
        k = self.odds_ratio_
        if k == 1.0:
            return s.copy()
        # 1 / (1 + (1-s)/(k*s)) equals k*s / (k*s + 1 - s) and is built from operations that are each
        # monotone under IEEE rounding, so the result is monotone exactly, and s=0 -> 0, s=1 -> 1.
        with np.errstate(divide="ignore"):
            return 1.0 / (1.0 + (1.0 - s) / (k * s))

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "negative_sampling_rate": self.negative_sampling_rate,
            "train_prevalence": self.train_prevalence,
            "prod_prevalence": self.prod_prevalence,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PosteriorCorrection:
        what = "posterior correction"
        return cls(
            negative_sampling_rate=_field(d, "negative_sampling_rate", what),
            train_prevalence=_field(d, "train_prevalence", what),
            prod_prevalence=_field(d, "prod_prevalence", what),
        ).fit()


# ---- reference distribution ---------------------------------------------------------------------


class ReferenceDistribution:
    """An intent's fixed reference distribution, as monotone quantile knots.

    levels: strictly increasing probability levels from 0 to 1; values: F_ref^-1 at those levels.
    low, high: the ends of the reference scale (default: the first and last value); a map extends
    scores beyond its calibration range toward them.
    """

    def __init__(self, *, levels: Any, values: Any, low: float | None = None, high: float | None = None):
        lv = _as_1d(levels, "reference levels")
        vals = _as_1d(values, "reference values")
        _check_levels(lv, "reference levels")
        _check_knots(vals, lv.size, "reference values")
        lo = float(vals[0]) if low is None else _opt_float(low, "low")
        hi = float(vals[-1]) if high is None else _opt_float(high, "high")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= vals[0] and hi >= vals[-1] and lo < hi):
            raise TransformError("reference: need finite low <= first value, high >= last value, low < high")
        self._levels, self._values, self._low, self._high = lv, vals, lo, hi
        self._cdf_x, self._cdf_q = _strict_knots(lv, vals, lv)

    @classmethod
    def from_scores(
        cls, scores: Any, *, levels: Any = None, low: float = 0.0, high: float = 1.0
    ) -> ReferenceDistribution:
        """The empirical distribution of `scores` (e.g. the first model's corrected calibration scores)."""
        lv = default_levels() if levels is None else _as_1d(levels, "levels")
        _check_levels(lv)
        s = _calibration_scores(scores, "reference scores", low, high)
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
        q = _as_probabilities(levels, "levels")
        return np.interp(q, self._levels, self._values)

    def cdf(self, values: Any) -> np.ndarray:
        """F_ref: the level of each value (0 below the first knot, 1 above the last, mid-level at ties)."""
        v = _as_1d(values, "values")
        return np.interp(v, self._cdf_x, self._cdf_q, left=0.0, right=1.0)

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
        if _field(d, "format", what) != FORMAT:
            raise TransformError(f"{what}: unsupported format {d['format']!r}")
        return cls(
            levels=_field(d, "levels", what),
            values=_field(d, "values", what),
            low=_field(d, "low", what),
            high=_field(d, "high", what),
        )


# ---- level 2 ------------------------------------------------------------------------------------


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
        lv = default_levels() if self.levels is None else _as_1d(self.levels, "levels")
        _check_levels(lv)
        p = _calibration_scores(scores, "calibration scores")
        model_knots = np.maximum.accumulate(np.quantile(p, lv))
        if target_scores is None:
            target_knots = reference.quantile(lv)
        else:
            t = _calibration_scores(target_scores, "target scores", reference.low, reference.high)
            if t.size != p.size:
                raise TransformError(
                    f"aligned fit needs both models' scores on the same events ({p.size} vs {t.size})"
                )
            target_knots = np.quantile(t, lv)
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
        x, y = _strict_knots(self.levels_, self.model_knots_, self.target_knots_)
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
        return self._apply(_as_probabilities(scores, "scores"))

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
        if _field(d, "format", what) != FORMAT:
            raise TransformError(f"{what}: unsupported format {d['format']!r}")
        qm = cls(tails=_field(d, "tails", what), nan_policy=_field(d, "nan_policy", what))
        qm._check_params()
        lv = _as_1d(_field(d, "levels", what), "levels")
        _check_levels(lv)
        mk = _as_1d(_field(d, "model_knots", what), "model_knots")
        tk = _as_1d(_field(d, "target_knots", what), "target_knots")
        _check_knots(mk, lv.size, "model_knots")
        _check_knots(tk, lv.size, "target_knots")
        low, high = _opt_float(_field(d, "low", what), "low"), _opt_float(_field(d, "high", what), "high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise TransformError(f"{what}: low and high must be finite numbers")
        if mk[0] < 0.0 or mk[-1] > 1.0 or not (low <= tk[0] and tk[-1] <= high and low < high):
            raise TransformError(f"{what}: knots outside their domain")
        n_fit = _field(d, "n_fit", what)
        if isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < MIN_FIT_SCORES:
            raise TransformError(f"{what}: invalid n_fit {n_fit!r}")
        qm.levels_, qm.model_knots_, qm.target_knots_ = lv, mk, tk
        qm.low_, qm.high_, qm.n_fit_ = low, high, n_fit
        qm._build()
        return qm


# ---- the per-version transform ------------------------------------------------------------------


class ScoreTransform:
    """A model version's full transform: posterior correction, intent map, optional tenant maps.

    A tenant without its own map (too few calibration events) is served by the intent map.
    """

    def __init__(
        self,
        *,
        correction: PosteriorCorrection,
        intent_map: QuantileMap,
        tenant_maps: Mapping[str, QuantileMap] | None = None,
        min_tenant_events: int = DEFAULT_MIN_TENANT_EVENTS,
    ) -> None:
        correction._check_fitted()
        intent_map._check_fitted()
        maps = dict(tenant_maps or {})
        for tid, qm in maps.items():
            if not isinstance(tid, str) or not tid:
                raise TransformError(f"tenant id must be a non-empty string, got {tid!r}")
            qm._check_fitted()
        self.correction = correction
        self.intent_map = intent_map
        self._tenant_maps = maps
        self.min_tenant_events = int(min_tenant_events)

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        """Tenants with their own level-2 map, sorted."""
        return tuple(sorted(self._tenant_maps))

    def has_tenant_map(self, tenant_id: str | None) -> bool:
        return tenant_id in self._tenant_maps

    def map_for(self, tenant_id: str | None) -> QuantileMap:
        """The level-2 map that serves `tenant_id`: its own, else the intent's."""
        return self._tenant_maps.get(tenant_id, self.intent_map) if tenant_id is not None else self.intent_map

    def apply(self, raw: Any, tenant_id: str | None = None) -> np.ndarray:
        """Raw model probabilities (one batch, one tenant or None) -> reference-scale scores, float64."""
        p = self.correction._apply(_as_probabilities(raw, "raw scores"))
        return self.map_for(tenant_id)._apply(p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "correction": self.correction.to_dict(),
            "intent_map": self.intent_map.to_dict(),
            "tenant_maps": {tid: self._tenant_maps[tid].to_dict() for tid in self.tenant_ids},
            "min_tenant_events": self.min_tenant_events,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreTransform:
        what = "score transform"
        if _field(d, "format", what) != FORMAT:
            raise TransformError(f"{what}: unsupported format {d['format']!r}")
        tenants = _field(d, "tenant_maps", what)
        if not isinstance(tenants, Mapping):
            raise TransformError(f"{what}: tenant_maps must be a dict")
        mte = _field(d, "min_tenant_events", what)
        if isinstance(mte, bool) or not isinstance(mte, int) or mte < 1:
            raise TransformError(f"{what}: invalid min_tenant_events {mte!r}")
        return cls(
            correction=PosteriorCorrection.from_dict(_field(d, "correction", what)),
            intent_map=QuantileMap.from_dict(_field(d, "intent_map", what)),
            tenant_maps={tid: QuantileMap.from_dict(m) for tid, m in tenants.items()},
            min_tenant_events=mte,
        )


def _tenant_groups(tenant_ids: Sequence[str | None] | np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Row indices per tenant; None rows belong to no tenant."""
    tids = np.asarray(tenant_ids, dtype=object)
    if tids.shape != (n,):
        raise TransformError(f"tenant_ids: expected {n} ids, got shape {tids.shape}")
    present = np.fromiter((t is not None for t in tids), dtype=bool, count=n)
    if not all(isinstance(t, str) and t for t in tids[present]):
        raise TransformError("tenant_ids: every id must be a non-empty string or None")
    idx = np.flatnonzero(present)
    names, inverse = np.unique(tids[present].astype(str), return_inverse=True)
    return {str(name): idx[inverse == i] for i, name in enumerate(names)}


def fit_score_transform(
    raw_scores: Any,
    *,
    reference: ReferenceDistribution | None = None,
    incumbent_ref_scores: Any = None,
    tenant_ids: Sequence[str | None] | np.ndarray | None = None,
    min_tenant_events: int = DEFAULT_MIN_TENANT_EVENTS,
    negative_sampling_rate: float | None = None,
    train_prevalence: float | None = None,
    prod_prevalence: float | None = None,
    levels: Any = None,
    tails: Tails = "extend",
    nan_policy: NanPolicy = "propagate",
) -> tuple[ScoreTransform, ReferenceDistribution]:
    """Fit a model version's transform on its raw calibration scores (events it did not train on).

    reference None: the first model of an intent; the reference is built from these corrected scores
    and returned. Otherwise the given reference is used and returned unchanged.
    incumbent_ref_scores: the incumbent's served (reference-scale, tenant maps included) scores for the
    same events; when given, every level-2 map is aligned to the incumbent (needs the reference).
    tenant_ids: one id (or None) per score; tenants with >= min_tenant_events events get their own map.
    """
    if min_tenant_events < MIN_FIT_SCORES:
        raise TransformError(f"min_tenant_events must be at least {MIN_FIT_SCORES}")
    raw = _calibration_scores(raw_scores, "raw calibration scores")
    correction = PosteriorCorrection(
        negative_sampling_rate=negative_sampling_rate,
        train_prevalence=train_prevalence,
        prod_prevalence=prod_prevalence,
    ).fit()
    p = correction._apply(raw)
    target = None
    if incumbent_ref_scores is not None:
        if reference is None:
            raise TransformError("aligning to an incumbent needs the intent's reference")
        target = _as_1d(incumbent_ref_scores, "incumbent_ref_scores")
        if target.size != p.size:
            raise TransformError(f"incumbent_ref_scores: {target.size} scores for {p.size} events")
    if reference is None:
        reference = ReferenceDistribution.from_scores(p, levels=levels)

    def new_map(rows: np.ndarray | None) -> QuantileMap:
        qm = QuantileMap(levels=levels, tails=tails, nan_policy=nan_policy)
        if rows is None:
            return qm.fit(p, reference=reference, target_scores=target)
        return qm.fit(p[rows], reference=reference, target_scores=None if target is None else target[rows])

    intent_map = new_map(None)
    tenant_maps: dict[str, QuantileMap] = {}
    if tenant_ids is not None:
        groups = _tenant_groups(tenant_ids, p.size)
        for tid, rows in groups.items():
            if rows.size >= min_tenant_events:
                tenant_maps[tid] = new_map(rows)
        logger.info(
            "tenant maps: %d of %d tenants have >= %d calibration events",
            len(tenant_maps),
            len(groups),
            min_tenant_events,
        )
    st = ScoreTransform(
        correction=correction,
        intent_map=intent_map,
        tenant_maps=tenant_maps,
        min_tenant_events=min_tenant_events,
    )
    logger.info(
        "score transform fitted on %d events (%s, odds ratio %.6g)",
        p.size,
        "aligned to incumbent" if target is not None else "onto reference",
        correction.odds_ratio_,
    )
    return st, reference
