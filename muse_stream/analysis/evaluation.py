"""Comparing score distributions and rates: AUC, Wilson intervals, KS distance, PSI."""

from __future__ import annotations

import math

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC from mid-ranks (tied scores count one half)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(0.5 * (starts + ends - 1) + 1.0, ends - starts)
    pos = labels == 1
    n_pos = int(pos.sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (labels.size - n_pos)))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a rate k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # At k = 0 or k = n the interval's end is exactly the rate; rounding must not move it past.
    return (0.0 if k == 0 else max(0.0, c - h), 1.0 if k == n else min(1.0, c + h))


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 20) -> float:
    """Population stability index over quantile bins of `expected` (the incumbent)."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if edges.size < 3:
        return 0.0
    e = np.histogram(np.clip(expected, edges[0], edges[-1]), edges)[0] / expected.size
    a = np.histogram(np.clip(actual, edges[0], edges[-1]), edges)[0] / actual.size
    e, a = np.maximum(e, 1e-6), np.maximum(a, 1e-6)
    return float(np.sum((a - e) * np.log(a / e)))
