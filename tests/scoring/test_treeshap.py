"""Reason codes' fast path (scoring/treeshap*.py, _treeshap.c) against XGBoost's own pred_contribs: the same
contributions to float32 rounding for every row and feature, the same top features in the same order, and
pred_contribs itself for what the tables do not cover."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
import xgboost as xgb

from muse_stream.scoring import native as native_path
from muse_stream.scoring import treeshap
from muse_stream.scoring.reasons import ReasonCodes, top_features
from muse_stream.scoring.reasons import contributions as xgb_contributions
from muse_stream.scoring.treeshap_tables import leaf_values

EXT = treeshap.module(True)  # this machine builds the extension: an ImportError here is a broken build


def _tol(want: np.ndarray) -> np.ndarray:
    return 1e-5 * (1.0 + np.abs(want))


def _data(n: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    x[:, -1] = np.round(x[:, -1])  # a few distinct values: thresholds that rows sit exactly on
    x[rng.random(x.shape) < 0.15] = np.nan
    z = np.nan_to_num(x)
    y = (z[:, 0] + z[:, 1] * z[:, -1] + 0.5 * z[:, 1] ** 2 + rng.normal(size=n) > 0.8).astype(np.float32)
    return x, y


def _booster(depth: int, trees: int, n_features: int, seed: int, **params) -> xgb.Booster:
    x, y = _data(1500, n_features, seed)
    p = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.2, "nthread": 1, "seed": seed,
         "tree_method": "hist", **params}
    return xgb.train(p, xgb.DMatrix(x, label=y, missing=np.nan), trees)


def _rows(tables, n_features: int, seed: int) -> np.ndarray:
    """Held-out rows with NaNs, and rows whose values sit exactly on the trees' float32 thresholds."""
    x, _ = _data(300, n_features, seed + 100)
    rng = np.random.default_rng(seed)
    inner = tables.inner
    for r in range(100):
        for k in rng.choice(len(inner), size=3):
            x[r, inner["feature"][k]] = inner["threshold"][k]
    return x


# depth, trees, features: duplicates of a feature along a path are certain where depth > features.
CASES = [(2, 120, 6), (3, 80, 3), (4, 60, 8), (5, 40, 3), (6, 60, 4)]


@pytest.mark.parametrize("depth,trees,n_features", CASES)
def test_fast_contributions_equal_pred_contribs_for_every_row_and_feature(depth, trees, n_features):
    booster = _booster(depth, trees, n_features, seed=depth)
    ex = treeshap.explainer(booster, n_features)
    assert ex.tables is not None, ex.why_not
    assert int(ex.tables.leaves["d"].max()) == min(depth, n_features)
    x = _rows(ex.tables, n_features, seed=depth)
    want = xgb_contributions(booster, x)
    got = treeshap.contributions(ex.tables, x, EXT)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.all(np.abs(got.astype(np.float64) - want) <= _tol(want))
    # The same top features in the same order, except where two contributions tie within the tolerance.
    order_got, _ = top_features(got, n_features)
    order_want, _ = top_features(want, n_features)
    for r in range(len(x)):
        for a, b in zip(order_got[r], order_want[r]):
            assert a == b or abs(float(want[r, a]) - float(want[r, b])) <= _tol(want[r, b])
    # Rows are evaluated in blocks of 32, a short block rounded up to 8 lanes: any count gives the same rows.
    for n in (1, 7, 33):
        assert np.array_equal(treeshap.contributions(ex.tables, x[:n], EXT), got[:n])
    # The live path ranks in C: exactly numpy's ranking of the same float32 values.
    for k in (3, n_features):
        order_c, values_c = treeshap.top_contributions(ex.tables, x, EXT, k)
        order_np, values_np = top_features(got, k)
        assert np.array_equal(order_c, order_np) and np.array_equal(values_c, values_np)


def test_a_model_pruned_by_the_exact_method_keeps_its_tables():
    """Pruning leaves deleted nodes in the JSON (unreachable leaves with split index 2^31 - 1): not a reason to
    fall back to pred_contribs."""
    booster = _booster(5, 30, 6, seed=3, tree_method="exact", gamma=1.0)
    ex = treeshap.explainer(booster, 6)
    assert ex.tables is not None, ex.why_not
    x = _rows(ex.tables, 6, seed=3)
    want = xgb_contributions(booster, x)
    assert np.all(np.abs(treeshap.contributions(ex.tables, x, EXT).astype(np.float64) - want) <= _tol(want))


def test_the_c_ranking_breaks_ties_by_column_and_puts_nan_last_as_numpy_does():
    rng = np.random.default_rng(8)
    sums = rng.choice([-1.0, 0.0, -0.0, 0.5, 2.0, 1e-9, np.nan], size=(400, 7))
    sums[:5] = np.nan
    sums[5:10] = 0.25
    for k in (1, 3, 7):
        order = np.empty((400, k), dtype=np.int32)
        values = np.empty((400, k), dtype=np.float32)
        EXT.top(sums, 7, k, order, values)
        order_np, values_np = top_features(sums.astype(np.float32), k)
        assert np.array_equal(order, order_np) and np.array_equal(values, values_np, equal_nan=True)
    with pytest.raises(ValueError, match="sizes"):
        EXT.top(sums, 7, 8, np.empty((400, 8), np.int32), np.empty((400, 8), np.float32))


def test_the_tables_are_the_brute_force_shapley_values_of_one_leafs_game():
    """T built by the polynomial equals the Shapley values of val(S) = v prod_{S} o prod_{not S} z, every
    subset enumerated, for each pattern of hot features."""
    rng = np.random.default_rng(3)
    for d in range(1, 6):
        z, v = rng.uniform(0.05, 0.95, size=(1, d)), rng.normal(size=1)
        t = leaf_values(z, v)[0]
        for h in range(1 << d):
            o = [(h >> j) & 1 for j in range(d)]

            def val(s, o=o, z=z, v=v, d=d):
                return v[0] * np.prod([o[j] if j in s else z[0, j] for j in range(d)])

            for i in range(d):
                rest = [j for j in range(d) if j != i]
                phi = sum(factorial(len(s)) * factorial(d - 1 - len(s)) / factorial(d) * (val({*s, i}) - val(set(s)))
                          for k in range(d) for s in itertools.combinations(rest, k))
                fast = (1 - z[0, i]) / z[0, i] * t[h ^ (1 << i)] if o[i] else -t[h]
                assert np.isclose(fast, phi, rtol=1e-12, atol=1e-15)


class _Model:
    def __init__(self, booster, n_features: int):
        self.booster, self.name, self.intent = booster, "m@1", "card"
        self.features = tuple(f"f{i}" for i in range(n_features))


@pytest.mark.parametrize("params,why", [
    ({"booster": "dart", "rate_drop": 0.1}, "dart"),
    ({"objective": "multi:softprob", "num_class": 3}, "more than one output"),
])
def test_an_unsupported_booster_falls_back_to_pred_contribs(params, why):
    x, y = _data(600, 4, 9)
    if params.get("num_class"):
        y = (np.nan_to_num(x[:, 0]) > 0).astype(np.float32) + (np.nan_to_num(x[:, 1]) > 0.5)
    booster = xgb.train({"max_depth": 3, "nthread": 1, "objective": "binary:logistic", **params},
                        xgb.DMatrix(x, label=y), 10)
    ex = treeshap.explainer(booster, 4)
    assert ex.tables is None and why in ex.why_not
    if not params.get("num_class"):  # dart: the reason codes are XGBoost's own values
        rc = ReasonCodes({}, 3)
        assert np.array_equal(rc.contributions(_Model(booster, 4), x[:50]), xgb_contributions(booster, x[:50]))


def test_tables_over_the_memory_cap_fall_back_and_the_switch_turns_the_fast_path_off(monkeypatch):
    booster = _booster(4, 20, 5, seed=1)
    tables = treeshap.explainer(booster, 5).tables
    assert tables is not None
    small = treeshap.explainer(xgb.Booster(model_file=bytearray(booster.save_raw("ubj"))), 5, max_bytes=1000)
    assert small.tables is None and "cap" in small.why_not
    x, _ = _data(40, 5, 2)
    want = xgb_contributions(booster, x)
    off = ReasonCodes({}, 3, native=False).contributions(_Model(booster, 5), x)
    assert np.array_equal(off, want)  # pred_contribs itself, bit for bit
    fast = ReasonCodes({}, 3).contributions(_Model(booster, 5), x)
    assert np.array_equal(fast, treeshap.contributions(tables, x, EXT)) and np.all(np.abs(fast - want) <= _tol(want))
    monkeypatch.setenv("MUSE_PURE_PYTHON", "1")
    assert native_path.load_extension("_treeshap") == (None, "MUSE_PURE_PYTHON=1")


def test_mismatched_buffers_are_refused_not_read():
    ex = treeshap.explainer(_booster(3, 10, 4, seed=4), 4)
    t = ex.tables
    x = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="sizes"):
        EXT.contribs(x, 4, np.zeros((2, 4)), t.max_nodes, t.trees, t.inner, t.leaves, t.leaf_features,
                     t.leaf_ratios, t.values)
    with pytest.raises(ValueError, match="sizes"):
        EXT.contribs(x, 4, np.zeros((3, 4)), t.max_nodes, t.trees, t.inner, t.leaves, t.leaf_features,
                     t.leaf_ratios[:-2], t.values)
