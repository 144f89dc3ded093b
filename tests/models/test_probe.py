"""The publish check that a booster's outputs are probabilities, without a broker."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from muse_stream.errors import ModelError
from muse_stream.models.probe import check_probabilities, feature_ranges, probe_matrix, split_thresholds
from tests.fixtures.boosters import linear_booster, regression_booster
from tests.fixtures.helpers import FEATURES, synthetic, train_booster

K = len(FEATURES)


def _check(booster, x, *, with_x=True):
    check_probabilities(booster, what="m.ubj", n_features=x.shape[1], calibration_raw=booster.inplace_predict(x),
                        calibration_x=x if with_x else None, max_abs_feature=1e30)


def _central(n: int = 2000, seed: int = 5) -> np.ndarray:
    """Calibration rows from the middle of the feature space only."""
    return np.random.default_rng(seed).uniform(-0.3, 0.3, size=(n, K)).astype(np.float32)


def test_a_binary_logistic_booster_passes():
    _check(train_booster(1), synthetic(4000, 1001)[0])
    _check(train_booster(2, shift=1.5, depth=4), _central())


def test_a_regression_booster_is_refused_by_the_probe_though_its_calibration_outputs_are_in_0_1():
    booster, x = regression_booster(), _central()
    raw = booster.inplace_predict(x)
    assert raw.min() >= 0 and raw.max() <= 1  # the case that publish --activate used to accept
    with pytest.raises(ModelError) as e:
        _check(booster, x)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("m.ubj: the booster's outputs are not probabilities: ")
    assert "calibration outputs" not in msg  # only the probe found it
    count = int(msg.split("probabilities: ")[1].split(" of ")[0])
    example = float(msg.split("(e.g. ")[1].split(";")[0])
    assert count > 0 and not 0 <= example <= 1
    assert "objective reg:squarederror" in msg and msg.endswith("nothing was published")


def test_calibration_outputs_outside_0_1_are_counted_too():
    booster, x = regression_booster(), synthetic(4000, 1001)[0]
    raw = booster.inplace_predict(x)
    n_out = int(((raw < 0) | (raw > 1)).sum())
    with pytest.raises(ModelError, match=f"{n_out} of 4000 calibration outputs and [0-9]+ of [0-9]+ probe outputs"):
        _check(booster, x)


def test_split_thresholds_reach_a_region_neither_the_calibration_range_nor_the_extremes_do():
    # Outputs leave [0, 1] only for 3 < f0 < 3.5: far outside calibration's [-1, 1], and +-1e30 misses it.
    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 5, size=(20000, 2)).astype(np.float32)
    y = np.where((x[:, 0] > 3) & (x[:, 0] < 3.5), 3.0, 0.5)
    booster = xgb.train({"max_depth": 2, "eta": 0.3, "objective": "reg:squarederror", "nthread": 1},
                        xgb.DMatrix(x, label=y), 20)
    cal = rng.uniform(-1, 1, size=(2000, 2)).astype(np.float32)
    thresholds = split_thresholds(booster, 2)
    assert ((thresholds[0] > 2.5) & (thresholds[0] < 4)).any()
    no_splits = [np.empty(0), np.empty(0)]
    blind = booster.inplace_predict(probe_matrix(*feature_ranges(2, no_splits, cal), no_splits, limit=1e30))
    assert ((blind >= 0) & (blind <= 1)).all()  # without the thresholds the probe would miss it
    with pytest.raises(ModelError, match="probe outputs are outside"):
        _check(booster, cal)
    with pytest.raises(ModelError, match="probe outputs are outside"):
        _check(booster, cal, with_x=False)  # publish --from-shadow: no feature matrix, thresholds only


def test_the_probe_holds_missing_values_extremes_and_the_widened_range():
    x = synthetic(3000, 9)[0]
    thresholds = split_thresholds(train_booster(1), K)
    lo, hi = feature_ranges(K, thresholds, x)
    assert (lo < x.min(axis=0)).all() and (hi > x.max(axis=0)).all()
    p = probe_matrix(lo, hi, thresholds, limit=1e30)
    assert p.dtype == np.float32 and 4000 <= len(p) <= 5000
    assert np.isnan(p).all(axis=1).any()
    assert (p == np.float32(1e30)).all(axis=1).any() and (p == np.float32(-1e30)).all(axis=1).any()
    assert np.isnan(p).any(axis=0).all() and (np.abs(p) == np.float32(1e30)).any(axis=0).all()
    # The limit is capped where float32 ends, so the extremes are finite.
    assert np.isfinite(probe_matrix(lo, hi, thresholds, limit=1e300)[~np.isnan(p)]).all()
    assert np.array_equal(p, probe_matrix(lo, hi, thresholds, limit=1e30), equal_nan=True)  # reproducible


def test_a_booster_that_cannot_predict_or_gives_several_outputs_per_row_is_refused():
    x = synthetic(2000, 3)[0]
    with pytest.raises(ModelError, match="cannot score the probe: XGBoostError: .*Inplace predict is not supported"):
        check_probabilities(linear_booster(), what="lin", n_features=K, calibration_raw=np.full(len(x), 0.5),
                            calibration_x=x, max_abs_feature=1e30)
    y = np.random.default_rng(0).integers(0, 3, size=len(x))
    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "nthread": 1}, xgb.DMatrix(x, label=y), 3)
    with pytest.raises(ModelError, match=r"outputs of shape \(2000, 3\), not one probability per row"):
        _check(multi, x)
