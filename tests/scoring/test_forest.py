"""The compiled trees (scoring/forest.py, _forest.c) against XGBoost's own inplace_predict: the same float32
bits on rows that meet the splits exactly, just below them and missing, for several shapes of model; the
AVX2 and plain walks alike; and the models outside the compiled path scoring through XGBoost, saying why."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import xgboost as xgb

from muse_stream.config import Settings, TenantConfig
from muse_stream.scoring import forest
from muse_stream.scoring.native import choose
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import TenantRegistry
from tests.fixtures.helpers import event
from tests.fixtures.scoring_fakes import Msg, registry

EXT = choose(None, "_forest", True)  # this machine builds the extension: an ImportError is a broken build


def _data(n: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cols)).astype(np.float32)
    x[:, 1] = np.round(x[:, 1] * 3)  # a few-valued column: thresholds sit between and on its values
    x[rng.random(x.shape) < 0.08] = np.nan
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + rng.normal(size=n) > 1).astype(int)
    return x, y


def _train(params: dict, rounds: int, seed: int = 0, cols: int = 12, **fit) -> xgb.Booster:
    x, y = _data(3000, cols, seed)
    return xgb.train({"objective": "binary:logistic", "nthread": 1, "seed": seed, **params},
                     xgb.DMatrix(x, label=y), rounds, **fit)


def _rows(booster_forest: forest.Forest, seed: int) -> np.ndarray:
    """Fresh data rows and probe-like rows (thresholds, the float below them, missing) together."""
    x, _ = _data(1500, booster_forest.n_features, seed)
    return np.vstack([x, forest.probe_rows(booster_forest, seed=seed + 1)])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == np.float32 and b.dtype == np.float32 and bool(np.array_equal(a.view(np.uint32),
                                                                                   b.view(np.uint32)))


MODELS = {
    "depth 6, 120 trees": ({"max_depth": 6}, 120),
    "depth 1 stumps": ({"max_depth": 1}, 40),
    "depth 9, uneven trees": ({"max_depth": 9, "min_child_weight": 5, "gamma": 1.0}, 30),
    "base score 0.02": ({"max_depth": 4, "base_score": 0.02}, 25),
    "reg:logistic, eta 1": ({"max_depth": 3, "objective": "reg:logistic", "eta": 1.0}, 15),
    "one-leaf trees (gamma)": ({"max_depth": 3, "gamma": 1e6}, 5),
    # pruning keeps deleted nodes in the JSON as unreachable leaves whose split index is 2^31 - 1
    "exact method pruned by gamma": ({"max_depth": 6, "tree_method": "exact", "gamma": 1.0}, 20),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_trees_give_xgboosts_own_bits(name):
    params, rounds = MODELS[name]
    booster = _train(params, rounds)
    compiled, why = forest.compile_booster(booster, 12)
    assert compiled is not None, why
    x = _rows(compiled, seed=5)
    theirs = booster.inplace_predict(x, validate_features=False)
    for plain in (False, True):
        EXT.plain(plain)
        try:
            ours = compiled.predict(x)
        finally:
            EXT.plain(False)
        assert _same_bits(ours, theirs), (name, plain, float(np.max(np.abs(ours - theirs))))
    # Every size of batch, from one row to a block and a tail (the walk works on blocks of 32 rows).
    for n in (1, 7, 8, 31, 32, 33, 100):
        assert _same_bits(compiled.predict(x[:n]), theirs[:n]), n


def test_an_early_stopped_model_predicts_with_every_tree_as_xgboosts_inplace_predict_does():
    x, y = _data(1000, 12, 4)  # rows the model has not seen: it overfits them soon at this depth and rate
    booster = _train({"max_depth": 8, "eta": 0.8}, 200, seed=3,
                     evals=[(xgb.DMatrix(x, label=y), "v")], early_stopping_rounds=3, verbose_eval=False)
    assert booster.attr("best_iteration") is not None and int(booster.attr("best_iteration")) + 1 < 200
    compiled, why = forest.compile_booster(booster, 12)
    assert compiled is not None, why
    assert compiled.n_trees == booster.num_boosted_rounds()
    rows = _rows(compiled, seed=9)
    assert _same_bits(compiled.predict(rows), booster.inplace_predict(rows, validate_features=False))
    best = booster.inplace_predict(rows, iteration_range=(0, int(booster.attr("best_iteration")) + 1))
    assert not np.array_equal(best, compiled.predict(rows))  # the two differ: the test tells which one served


def test_models_outside_the_compiled_path_score_through_xgboost_and_say_why():
    squared = _train({"max_depth": 3, "objective": "reg:squarederror"}, 5)
    assert forest.compile_booster(squared, 12) == (
        None, "objective 'reg:squarederror': only binary:logistic and reg:logistic")
    dart = _train({"max_depth": 3, "booster": "dart"}, 5)
    compiled, why = forest.compile_booster(dart, 12)
    assert compiled is None and "dart" in why
    deep = _train({"max_depth": 0, "grow_policy": "lossguide", "max_leaves": 4000, "min_child_weight": 0.0,
                   "lambda": 0.0}, 2, cols=12)
    compiled, why = forest.compile_booster(deep, 12)
    assert compiled is None and f"above the compiled path's {forest.MAX_DEPTH}" in why


def test_sparse_or_oversized_layouts_and_a_wrong_width_fall_back_with_a_reason(monkeypatch):
    # lossguide trees of 16 leaves reach depth 11-12: a complete layout would be mostly empty slots, walked
    # more slowly than XGBoost walks the trees themselves
    sparse = _train({"max_depth": 12, "grow_policy": "lossguide", "max_leaves": 16}, 40, cols=30)
    compiled, why = forest.compile_booster(sparse, 30)
    assert compiled is None and "too sparse for the compiled path" in why, why
    booster = _train({"max_depth": 5}, 30)
    # a width that is not the booster's: a reason, never an exception
    compiled, why = forest.compile_booster(booster, 13)
    assert compiled is None and "XGBoostError" in why
    assert forest.compile_booster(booster, 11) == (None, "a split on a feature index beyond the model's 11 features")
    # the byte cap counts every array the walk reads: exactly at the cap is taken, a byte less is not
    fits, _ = forest.compile_booster(booster, 12)
    monkeypatch.setattr(forest, "MAX_BYTES", fits.nbytes)
    assert forest.compile_booster(booster, 12)[0] is not None
    monkeypatch.setattr(forest, "MAX_BYTES", fits.nbytes - 1)
    compiled, why = forest.compile_booster(booster, 12)
    assert compiled is None and "above the compiled path's" in why


@pytest.mark.parametrize("base", [1e-9, 5e-7, 0.9999995, 0.99999999])
def test_a_base_score_outside_xgboosts_clamp_is_clamped_as_xgboost_does(base):
    booster = _train({"max_depth": 3}, 10)
    model = orjson.loads(booster.save_raw("json"))
    model["learner"]["learner_model_param"]["base_score"] = f"[{base!r}]"
    edited = xgb.Booster()
    edited.load_model(bytearray(orjson.dumps(model)))
    compiled, why = forest.compile_booster(edited, 12)
    assert compiled is not None, why
    rows = _rows(compiled, seed=4)
    assert _same_bits(compiled.predict(rows), edited.inplace_predict(rows, validate_features=False))
    with pytest.raises(ValueError, match="rows of shape"):
        compiled.predict(rows.reshape(len(rows), 3, 4))  # XGBoost refuses a 3-D matrix too


def test_a_layout_that_differs_from_xgboost_by_one_bit_is_refused():
    booster = _train({"max_depth": 4}, 20)
    compiled, _ = forest.compile_booster(booster, 12)
    leaves = compiled.leaves.copy()
    leaves.view(np.uint32)[...] += np.uint32(1)  # every leaf one ulp away
    broken = forest.Forest(compiled.n_features, compiled.depth, compiled.nodes, compiled.thresholds, leaves,
                           compiled.base_prob)
    assert "probe outputs differ from XGBoost's" in forest.check(broken, booster)
    assert forest.check(compiled, booster) == ""


def test_a_loaded_version_scores_the_same_decisions_with_and_without_its_compiled_trees(monkeypatch):
    reg = registry({"card": ((1, None), (2, 100))})
    tenants = TenantRegistry(Settings(), {"acme": TenantConfig(tenant_id="acme", intents=("card",),
                                                               bands={"review": 0.5, "decline": 0.9})},
                             log_changes=False)
    msgs = [Msg(orjson.dumps({**event(i, "acme"), "event_time": 50 + i}), i) for i in range(300)]
    compiled = BatchScorer(tenants, reg, max_abs_feature=1e30, max_event_bytes=20_000).process(msgs, 1)
    models = list(reg.loaded.values())
    assert len(models) == 2 and all(forest.compiled(m)[0] is not None for m in models)
    monkeypatch.setattr(forest, "compiled", lambda model: (None, "switched off by the test"))
    plain = BatchScorer(tenants, reg, max_abs_feature=1e30, max_event_bytes=20_000).process(msgs, 1)
    assert len(compiled.decisions) == 300 and not compiled.dead
    assert set(plain.scored) == {("acme", "card", "card@1"), ("acme", "card", "card@2")}
    assert compiled.decisions == plain.decisions


def test_without_the_extension_a_version_scores_through_xgboost(monkeypatch):
    booster = _train({"max_depth": 3}, 5)
    monkeypatch.setattr(forest, "EXT", None)
    monkeypatch.setattr(forest, "_WHY", "MUSE_PURE_PYTHON=1")
    assert forest.compile_booster(booster, 12) == (None, "MUSE_PURE_PYTHON=1")
