"""The fast path of reason codes: exact TreeSHAP contributions from leaf tables built once per loaded booster
(treeshap_tables.py) and evaluated per row in C (_treeshap.c), equal to XGBoost's pred_contribs to float32
rounding (tests/scoring/test_treeshap.py) at a small fraction of its cost.

It is used when the extension was built and MUSE_PURE_PYTHON is not set (the same switch as the scorer's
native path, scoring/native.py), and when the booster is within the tables' reach (gbtree, one output,
numerical splits, tables under MAX_TABLE_BYTES). Otherwise the caller runs XGBoost's pred_contribs.
"""

from __future__ import annotations

import time
import weakref
from types import ModuleType

import numpy as np

from muse_stream.scoring.native import choose, load_extension
from muse_stream.scoring.treeshap_tables import (
    MAX_PATH_FEATURES,
    Tables,
    Unsupported,
    build_tables,
    read_trees,
)

# Per version: a leaf of d path features keeps 2^d values, so 300 full depth-6 trees (64 leaves each) need
# about 6 MB and the demo's retrained model about 0.5 MB. Above this cap a version explains the slow way.
MAX_TABLE_BYTES = 96 * 1024 * 1024


EXT, _WHY = load_extension("_treeshap")
ACTIVE = "TreeSHAP tables (C extension)" if EXT is not None else f"pred_contribs ({_WHY})"


def module(native: bool | None = None) -> ModuleType | None:
    """The compiled evaluator to use: the process's choice for None, none for False; True insists on it."""
    return choose(EXT, "_treeshap", native)


def active_path() -> str:
    return ACTIVE


class Explainer:
    """A booster's tables, or why it has none; built once per booster object and kept as long as it lives."""

    def __init__(self, tables: Tables | None, why_not: str, build_seconds: float) -> None:
        self.tables = tables
        self.why_not = why_not
        self.build_seconds = build_seconds

    def describe(self) -> str:
        if self.tables is None:
            return f"pred_contribs ({self.why_not})"
        t = self.tables
        return (f"TreeSHAP tables: {t.n_leaves:,} leaves, {t.nbytes / 1e6:.1f} MB, built in "
                f"{1000 * self.build_seconds:.0f} ms")


_explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def explainer(booster, n_features: int, max_bytes: int = MAX_TABLE_BYTES) -> Explainer:
    """The booster's cached Explainer, built on first use (a version's first flagged batch pays it once)."""
    try:
        return _explainers[booster]
    except (KeyError, TypeError):
        pass
    t0 = time.perf_counter()
    try:
        raw = booster.save_raw("json")
        tables = build_tables(read_trees(bytes(raw), n_features), n_features, max_bytes)
        check(tables)
        ex = Explainer(tables, "", time.perf_counter() - t0)
    except MemoryError:
        raise
    except Unsupported as e:
        ex = Explainer(None, str(e), time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - not a booster we can read: XGBoost's own call decides
        ex = Explainer(None, f"its model does not read as trees: {type(e).__name__}: {str(e)[:200]}",
                       time.perf_counter() - t0)
    try:
        _explainers[booster] = ex
    except TypeError:  # a stand-in that takes no weak reference: rebuilt per call, which only tests do
        pass
    return ex


def check(t: Tables) -> None:
    """Every index the C loop follows is within its array, so a malformed model is refused, never read
    out of bounds."""
    tr, inner, leaves = t.trees, t.inner, t.leaves
    d = leaves["d"].astype(np.int64)
    nodes = np.concatenate([inner["node"], inner["left"], inner["right"], leaves["node"]])
    ok = (
        len(tr) >= 1 and tr["inner_lo"][0] == 0 and tr["leaf_lo"][0] == 0
        and tr["inner_lo"][-1] == len(inner) and tr["leaf_lo"][-1] == len(leaves)
        and bool(np.all(np.diff(tr["inner_lo"]) >= 0)) and bool(np.all(np.diff(tr["leaf_lo"]) >= 0))
        and (not len(nodes) or (nodes.min() >= 0 and nodes.max() < t.max_nodes))
        and (not len(inner) or (inner["feature"].min() >= 0 and inner["feature"].max() < t.n_features))
        and bool(np.all(inner["uidx"] < MAX_PATH_FEATURES))
        and bool(np.all((d >= 1) & (d <= MAX_PATH_FEATURES)))
        and bool(np.all((leaves["fptr"] >= 0) & (leaves["fptr"] + d <= len(t.leaf_features))))
        and len(t.leaf_ratios) == 2 * len(t.leaf_features)
        and (not len(t.leaf_features) or (t.leaf_features.min() >= 0 and t.leaf_features.max() < t.n_features))
        and bool(np.all((leaves["toff"] >= 0) & (leaves["toff"] + (np.int64(1) << d) <= len(t.values))))
    )
    if not ok:
        raise Unsupported("the tables built from its model fail their bounds check")


def contributions(tables: Tables, x: np.ndarray, ext: ModuleType) -> np.ndarray:
    """Exact contributions of float32 rows (n_rows x n_features), bias not included, as float32: from float32
    tables of values computed in float64, summed in float32 as XGBoost's own TreeSHAP sums them (within 2e-6
    of its values on the demo models)."""
    return _sums(tables, x, ext).astype(np.float32)


# The C top-N keeps a row on its stack; the caller ranks wider rows itself (reasons.top_features).
MAX_TOP_COLUMNS = 4096


def top_contributions(tables: Tables, x: np.ndarray, ext: ModuleType, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns and float32 values of the n largest contributions, largest first, ties by column
    order: reasons.top_features of contributions(), in C from the float64 sums (one call, no sort)."""
    if tables.n_features > MAX_TOP_COLUMNS:
        raise ValueError(f"top_contributions: {tables.n_features} features, above {MAX_TOP_COLUMNS}")
    sums = _sums(tables, x, ext)
    k = min(n, tables.n_features)
    order = np.empty((len(x), k), dtype=np.int32)
    values = np.empty((len(x), k), dtype=np.float32)
    if len(x):
        ext.top(sums, tables.n_features, k, order, values)
    return order, values


def _sums(tables: Tables, x: np.ndarray, ext: ModuleType) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != tables.n_features:
        raise ValueError(f"rows of shape {x.shape} for tables of {tables.n_features} features")
    out = np.zeros(x.shape, dtype=np.float64)
    if len(x):
        t = tables
        ext.contribs(x, t.n_features, out, t.max_nodes, t.trees, t.inner, t.leaves, t.leaf_features,
                     t.leaf_ratios, t.values)
    return out
