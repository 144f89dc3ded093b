"""Quantile knots: the shared level grid, and the checks every transform applies to scores and knot arrays.

Both transform levels (correction.py, quantile.py) and the per-version transform (transform.py) build on
these, so a record that one of them writes, another can validate the same way on load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from muse_stream.errors import TransformError

FORMAT = 1  # of every persisted transform record
# Fewer calibration scores than this cannot say anything useful about a distribution.
MIN_FIT_SCORES = 100
# Scores of which this share or more sit on one value cannot rank events: a map fitted on them would send
# that one value to a single reference point (the median, for a constant model) and alert nothing or all.
NEAR_CONSTANT_SHARE = 0.99
# A value held by this share of the scores or more is a mass point whose first level joins the level grid.
TIE_SHARE = 5e-4


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


def with_tie_levels(levels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`levels` plus, for each value that at least TIE_SHARE of `scores` share, the level at which it begins.

    np.quantile gives exactly that value from its first index / (n - 1) on, so a band on a tied value keeps
    its alert rate to within one score instead of one step of the level grid (up to 2% of a 5% rate).
    """
    n = scores.size
    _, first, counts = np.unique(scores, return_index=True, return_counts=True)
    mass = counts >= max(2, TIE_SHARE * n)
    if not mass.any():
        return levels
    return np.union1d(levels, first[mass] / (n - 1))


def as_1d(a: Any, name: str) -> np.ndarray:
    """`a` as a 1-D float64 array, or TransformError naming `name`."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TransformError(f"{name}: not numeric: {e}") from None
    if arr.ndim != 1:
        raise TransformError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def as_probabilities(a: Any, name: str) -> np.ndarray:
    """A 1-D float64 array with every non-NaN value in [0, 1]."""
    arr = as_1d(a, name)
    bad = (arr < 0.0) | (arr > 1.0)  # NaN compares False: it is left to the NaN policy
    if bad.any():
        raise TransformError(f"{name}: {int(bad.sum())} value(s) outside [0, 1] (or infinite)")
    return arr


def calibration_scores(a: Any, name: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Scores to fit on: finite, within [low, high], and enough of them."""
    arr = as_1d(a, name)
    if not np.isfinite(arr).all():
        raise TransformError(f"{name}: calibration scores must be finite (no NaN)")
    if arr.size < MIN_FIT_SCORES:
        raise TransformError(f"{name}: {arr.size} scores, need at least {MIN_FIT_SCORES}")
    if arr.min() < low or arr.max() > high:
        raise TransformError(f"{name}: scores outside [{low}, {high}]")
    values, counts = np.unique(arr, return_counts=True)
    top = int(counts.argmax())
    if counts[top] >= NEAR_CONSTANT_SHARE * arr.size:
        raise TransformError(
            f"{name}: {counts[top] / arr.size:.1%} of the {arr.size} scores equal {values[top]:.6g}; "
            "constant or near-constant scores cannot rank events"
        )
    return arr


def check_levels(levels: np.ndarray, name: str = "levels") -> None:
    """A level grid: finite, strictly increasing, from 0 to 1."""
    if levels.size < 2 or not np.isfinite(levels).all():
        raise TransformError(f"{name}: need at least 2 finite levels")
    if levels[0] != 0.0 or levels[-1] != 1.0:
        raise TransformError(f"{name}: must start at 0 and end at 1")
    if not (np.diff(levels) > 0).all():
        raise TransformError(f"{name}: must be strictly increasing")


def check_knots(values: np.ndarray, n: int, name: str) -> None:
    """Knot values for a grid of `n` levels: finite and non-decreasing."""
    if values.size != n:
        raise TransformError(f"{name}: {values.size} knots for {n} levels")
    if not np.isfinite(values).all():
        raise TransformError(f"{name}: knots must be finite")
    if (np.diff(values) < 0).any():
        raise TransformError(f"{name}: knots must be non-decreasing")


def record_field(d: Mapping[str, Any], key: str, what: str) -> Any:
    """d[key] of a persisted record, or TransformError saying what is missing."""
    if not isinstance(d, Mapping):
        raise TransformError(f"{what}: expected a dict, got {type(d).__name__}")
    if key not in d:
        raise TransformError(f"{what}: missing {key!r}")
    return d[key]


def optional_float(v: Any, name: str) -> float | None:
    """None, or a number (not a bool) as float."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TransformError(f"{name}: expected a number, got {v!r}")
    return float(v)


def strict_knots(levels: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse tied knots so both coordinates strictly increase, in two passes.

    First, a run of equal x (a mass point in the model's own scores) becomes one knot at its middle level,
    y read there: every event at that score maps to one value, so it alerts as a whole. Then a run of
    equal y (a mass point in the target: the incumbent's or the reference's scores share one value) keeps
    only its first knot, the lowest level. Every target score at that value sits at or above that level,
    so a threshold placed on the tied value alerts 1 - lowest level of the target, and the mapped new
    scores reach it from that same level on; the run's middle would halve such an alert rate. The passes
    are separate so that a model tie at the start of a target tie cannot chain the two runs (and every run
    touching them) into one knot. The resulting map is strictly increasing, so it never creates ties.
    """
    # Pass 1: one knot per distinct x, at the run's middle level, y clipped into the run's own range so a
    # rounding overshoot cannot pass a neighbour.
    starts = _run_starts(x)
    ends = np.append(starts[1:], x.size) - 1
    at = 0.5 * (levels[starts] + levels[ends])
    xs = x[starts]
    ys = np.clip(np.interp(at, levels, y), y[starts], y[ends])
    # Pass 2: y is non-decreasing across the runs; each run of equal y keeps its first x and its tied value.
    starts = _run_starts(ys)
    ends = np.append(starts[1:], ys.size) - 1
    return xs[starts], ys[ends]


def _run_starts(v: np.ndarray) -> np.ndarray:
    """Where each run of equal values of non-decreasing `v` begins. Values a few ulps apart count as equal:
    np.quantile at a tie level (first / (n - 1)) reads an index a rounding off the tie's first score, and so
    lands a few ulps beside the tied value instead of on it."""
    gap = v[1:] - v[:-1]
    return np.flatnonzero(np.append(True, gap > 4.0 * np.spacing(np.abs(v[:-1]))))
