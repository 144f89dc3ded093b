"""Score transform: posterior correction, reference knots, quantile maps, tenant maps, persistence."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from muse_stream.analysis.evaluation import auc
from muse_stream.errors import NotFittedError, TransformError
from muse_stream.models.correction import PosteriorCorrection
from muse_stream.models.knots import default_levels
from muse_stream.models.quantile import QuantileMap, ReferenceDistribution
from muse_stream.models.transform import ScoreTransform, fit_score_transform

THRESHOLD_LEVELS = np.array([0.95, 0.99, 0.995])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def model_scores(
    n: int, seed: int, *, shift: float = 0.0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Fraud-like scores: a rare positive class, float32-rounded like a booster's output (so with ties)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.02).astype(np.int8)
    z = rng.normal(-5.0, 1.5, n) + 3.0 * y
    raw = sigmoid(scale * z + shift).astype(np.float32).astype(np.float64)
    return raw, y


def alert_rates(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.array([np.mean(scores >= t) for t in thresholds])


# ---- knots and the reference ------------------------------------------------------------------------------


def test_default_levels_are_dense_in_the_top_tail():
    lv = default_levels()
    assert lv.size >= 1000
    assert lv[0] == 0.0 and lv[-1] == 1.0 and (np.diff(lv) > 0).all()
    top = lv[lv >= 0.999]
    assert np.diff(top).max() < 1e-5
    assert 1.0 - lv[-2] <= 1e-7 * 1.0001


def test_reference_from_scores_has_dense_knots_and_inverts():
    raw, _ = model_scores(20_000, 1)
    ref = ReferenceDistribution.from_scores(raw)
    assert ref.levels.size >= 1000
    assert np.diff(ref.levels[ref.levels >= 0.999]).max() < 1e-5
    assert (np.diff(ref.values) >= 0).all()
    assert ref.quantile([0.0, 1.0]).tolist() == [raw.min(), raw.max()]
    np.testing.assert_allclose(ref.quantile([0.5, 0.99]), np.quantile(raw, [0.5, 0.99]), rtol=1e-12)
    q = np.array([0.1, 0.5, 0.9, 0.999, 0.99999])
    np.testing.assert_allclose(ref.cdf(ref.quantile(q)), q, atol=2e-4)
    assert ref.cdf([-1.0, 2.0]).tolist() == [0.0, 1.0]


def test_explicit_reference_is_validated():
    ref = ReferenceDistribution(levels=[0.0, 0.5, 1.0], values=[0.0, 0.2, 1.0])
    assert ref.quantile([0.25]).tolist() == pytest.approx([0.1])
    with pytest.raises(TransformError):
        ReferenceDistribution(levels=[0.0, 0.5, 1.0], values=[0.0, 0.3, 0.2])
    with pytest.raises(TransformError):
        ReferenceDistribution(levels=[0.0, 0.5, 0.9], values=[0.0, 0.2, 0.3])
    with pytest.raises(TransformError):
        ReferenceDistribution(levels=[0.0, 0.5, 1.0], values=[0.0, 0.2])
    with pytest.raises(TransformError):
        ReferenceDistribution(levels=[0.0, 0.5, 1.0], values=[0.0, 0.2, 1.0], low=0.1)


# ---- level 1 ----------------------------------------------------------------------------------------------


def test_posterior_correction_undersampling_matches_closed_form():
    beta = 0.1
    s = np.r_[0.0, 1.0, np.linspace(0.0, 1.0, 1001), 1e-12, 1 - 1e-12]
    p = PosteriorCorrection(negative_sampling_rate=beta).fit().transform(s)
    expected = beta * s / (beta * s - s + 1.0)
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=0)
    assert p[0] == 0.0 and p[1] == 1.0
    assert (p[2:1003] <= s[2:1003]).all()  # undersampled negatives inflate scores: correction lowers them


def test_posterior_correction_prevalence_scales_the_odds():
    pi_t, pi_p = 0.3, 0.002
    k = (pi_p / (1 - pi_p)) / (pi_t / (1 - pi_t))
    s = np.linspace(0.001, 0.999, 999)
    p = PosteriorCorrection(train_prevalence=pi_t, prod_prevalence=pi_p).fit().transform(s)
    np.testing.assert_allclose((p / (1 - p)) / (s / (1 - s)), k, rtol=1e-10)
    np.testing.assert_allclose(p, k * s / (k * s + 1 - s), rtol=1e-12)
    edge = PosteriorCorrection(train_prevalence=pi_t, prod_prevalence=pi_p).fit().transform([0.0, 1.0])
    assert edge.tolist() == [0.0, 1.0]


def test_posterior_correction_identity_and_invalid_parameters():
    s = np.array([0.0, 0.3, 1.0])
    assert PosteriorCorrection().fit().transform(s).tolist() == s.tolist()
    bad = [
        {"negative_sampling_rate": 0.0},
        {"negative_sampling_rate": 1.5},
        {"train_prevalence": 0.1},
        {"train_prevalence": 0.0, "prod_prevalence": 0.1},
        {"negative_sampling_rate": 0.1, "train_prevalence": 0.1, "prod_prevalence": 0.2},
    ]
    for params in bad:
        with pytest.raises(TransformError):
            PosteriorCorrection(**params).fit()


# ---- fitting ----------------------------------------------------------------------------------------------


def test_first_model_builds_reference_and_maps_onto_itself():
    raw, _ = model_scores(20_000, 2)
    st, ref = fit_score_transform(raw)
    np.testing.assert_allclose(st.apply(raw), raw, atol=1e-12)
    # On its knots the reference is the empirical quantile function; between them, interpolated.
    np.testing.assert_allclose(ref.values, np.quantile(raw, ref.levels), rtol=1e-12)
    np.testing.assert_allclose(ref.quantile(THRESHOLD_LEVELS), np.quantile(raw, THRESHOLD_LEVELS), rtol=1e-3)


def test_fixed_reference_fit_puts_new_scores_on_the_reference_distribution():
    inc_raw, _ = model_scores(20_000, 3)
    _, ref = fit_score_transform(inc_raw)
    before = ref.to_dict()
    new_raw, _ = model_scores(20_000, 4, shift=1.5, scale=1.3)  # a different shape and prior
    st, same_ref = fit_score_transform(new_raw, reference=ref, negative_sampling_rate=0.2)
    assert same_ref is ref and ref.to_dict() == before
    rates = alert_rates(st.apply(new_raw), ref.quantile(THRESHOLD_LEVELS))
    np.testing.assert_allclose(rates, 1 - THRESHOLD_LEVELS, rtol=0.02)
    # Without the map the same thresholds would flag far more traffic.
    assert (alert_rates(new_raw, ref.quantile(THRESHOLD_LEVELS)) > 2 * (1 - THRESHOLD_LEVELS)).all()


def test_aligned_fit_reproduces_incumbent_alert_rates_on_the_calibration_window():
    rng = np.random.default_rng(5)
    n = 30_000
    z = rng.normal(-5.0, 1.5, n)
    inc_raw = sigmoid(z + rng.normal(0, 0.5, n))
    st_inc, ref = fit_score_transform(sigmoid(rng.normal(-5.0, 1.5, n)))  # reference from an earlier window
    inc_served = st_inc.apply(inc_raw)
    new_raw = sigmoid(1.4 * (z + rng.normal(0, 0.5, n)) + 2.0)  # correlated, shifted, stretched
    st_new, _ = fit_score_transform(
        new_raw, reference=ref, incumbent_ref_scores=inc_served, negative_sampling_rate=0.1
    )
    thresholds = ref.quantile(THRESHOLD_LEVELS)
    inc_rates = alert_rates(inc_served, thresholds)
    new_rates = alert_rates(st_new.apply(new_raw), thresholds)
    np.testing.assert_allclose(new_rates, inc_rates, rtol=0.01, atol=2 / n)
    assert np.abs(alert_rates(new_raw, thresholds) / inc_rates - 1).min() > 0.5


def test_fit_rejects_bad_calibration_input():
    raw, _ = model_scores(5_000, 6)
    _, ref = fit_score_transform(raw)
    with pytest.raises(TransformError):
        fit_score_transform(np.r_[raw, np.nan])
    with pytest.raises(TransformError):
        fit_score_transform(raw[:50])
    with pytest.raises(TransformError):
        fit_score_transform(np.r_[raw, 1.5])
    with pytest.raises(TransformError):
        fit_score_transform(raw, reference=ref, incumbent_ref_scores=raw[:-1])
    with pytest.raises(TransformError):
        fit_score_transform(raw, incumbent_ref_scores=raw)  # aligning needs the intent's reference
    with pytest.raises(TransformError):
        fit_score_transform(raw, tenant_ids=["a"] * (raw.size - 1))


# ---- monotonicity, ranking, ties, extremes ----------------------------------------------------------------


def _fitted_transforms() -> list[ScoreTransform]:
    inc_raw, _ = model_scores(20_000, 7)
    # Heavy ties: a third of the calibration mass sits on a few rounded values.
    tied = inc_raw.copy()
    tied[::3] = np.round(tied[::3], 3)
    st_inc, ref = fit_score_transform(tied)
    new_raw, _ = model_scores(20_000, 8, shift=1.0, scale=1.2)
    st_fixed, _ = fit_score_transform(new_raw, reference=ref, negative_sampling_rate=0.1)
    st_aligned, _ = fit_score_transform(
        new_raw, reference=ref, incumbent_ref_scores=st_inc.apply(tied), negative_sampling_rate=0.1
    )
    st_clip, _ = fit_score_transform(new_raw, reference=ref, negative_sampling_rate=0.1, tails="clip")
    return [st_inc, st_fixed, st_aligned, st_clip]


def test_transform_is_monotone_on_random_inputs_with_ties_and_extremes():
    rng = np.random.default_rng(9)
    for st in _fitted_transforms():
        knots = st.intent_map._x
        x = np.concatenate(
            [
                rng.random(5_000),
                sigmoid(rng.normal(-5, 3, 5_000)),
                np.repeat(rng.random(50), 20),  # ties in the input
                [0.0, 1.0, 5e-324, 1e-300, np.nextafter(1.0, 0.0)],
                knots[(knots >= 0) & (knots <= 1)],
                np.clip(np.nextafter(knots, -np.inf), 0, 1),
                np.clip(np.nextafter(knots, np.inf), 0, 1),
            ]
        )
        x.sort()
        y = st.apply(x)
        assert np.isfinite(y).all()
        assert (np.diff(y) >= 0).all()
        assert (y[:-1][np.diff(x) == 0] == y[1:][np.diff(x) == 0]).all()


def test_interpolation_never_overshoots_the_next_knot():
    # Regression: for these knots plain np.interp returns a value one ulp above y1 just below x1.
    x0, x1 = 0.0201027388814463, 0.2139499312242737
    y0, y1 = 0.013332823894022761, 0.20977035207542236
    below = np.nextafter(x1, 0.0)
    assert np.interp(below, [x0, x1], [y0, y1]) > y1
    qm = QuantileMap.from_dict(
        {
            "format": 1,
            "levels": [0.0, 0.5, 1.0],
            "model_knots": [x0, x1, 0.5],
            "target_knots": [y0, y1, 0.5],
            "low": 0.0,
            "high": 1.0,
            "n_fit": 100,
            "tails": "extend",
            "nan_policy": "propagate",
        }
    )
    out = qm.transform([below, x1])
    assert out[0] <= out[1] == y1


def test_auc_is_unchanged():
    raw, y = model_scores(40_000, 10, shift=0.5)
    raw[::7] = np.round(raw[::7], 4)  # ties across classes
    raw[:20] = [0.0, 1.0] * 10  # extremes beyond any calibration range
    y[:20] = [0, 1] * 10
    before = auc(raw, y)
    for st in _fitted_transforms()[:3]:  # the "extend" tails keep ranking beyond the calibration range
        assert abs(auc(st.apply(raw), y) - before) < 1e-9


def test_tied_calibration_scores_map_to_their_middle_level():
    rng = np.random.default_rng(11)
    cal = np.r_[rng.uniform(0.0, 0.2, 3_000), np.full(4_000, 0.2), rng.uniform(0.2, 1.0, 3_000)]
    ref = ReferenceDistribution(levels=[0.0, 1.0], values=[0.0, 1.0])  # uniform: level == value
    qm = QuantileMap().fit(cal, reference=ref)
    below = np.mean(cal < 0.2)
    mid = below + 0.5 * np.mean(cal == 0.2)
    assert qm.transform([0.2])[0] == pytest.approx(mid, abs=2e-3)
    lo, hi = qm.transform([np.nextafter(0.2, 0), np.nextafter(0.2, 1)])
    assert lo < qm.transform([0.2])[0] < hi


def test_scores_beyond_the_calibration_range():
    rng = np.random.default_rng(12)
    cal = rng.uniform(0.2, 0.6, 5_000)
    ref = ReferenceDistribution.from_scores(rng.uniform(0.1, 0.9, 5_000))
    ext = QuantileMap().fit(cal, reference=ref)
    clip = QuantileMap(tails="clip").fit(cal, reference=ref)
    x = np.array([0.0, 0.1, cal.min(), cal.max(), 0.8, 1.0])
    y_ext, y_clip = ext.transform(x), clip.transform(x)
    assert y_ext[0] == ref.low and y_ext[-1] == ref.high  # domain ends go to the reference scale's ends
    assert ref.low < y_ext[1] < y_ext[2] and y_ext[3] < y_ext[4] < ref.high  # still ranked out there
    assert y_clip[0] == y_clip[1] == y_clip[2] == pytest.approx(ref.values[0], abs=1e-3)
    assert y_clip[3] == y_clip[4] == y_clip[5] == pytest.approx(ref.values[-1], abs=1e-3)


def test_nan_policy_and_out_of_range_input():
    raw, _ = model_scores(5_000, 13)
    st, ref = fit_score_transform(raw)
    x = np.array([0.01, np.nan, 0.5, np.nan])
    y = st.apply(x)
    assert np.isnan(y[[1, 3]]).all()
    assert y[[0, 2]].tolist() == st.apply(x[[0, 2]]).tolist()
    strict, _ = fit_score_transform(raw, reference=ref, nan_policy="raise")
    with pytest.raises(TransformError):
        strict.apply(x)
    for bad in ([1.5], [-0.1], [np.inf], [[0.1, 0.2]]):
        with pytest.raises(TransformError):
            st.apply(np.array(bad))
    with pytest.raises(TransformError):
        QuantileMap(nan_policy="drop").fit(raw, reference=ref)


def test_not_fitted_errors():
    ref = ReferenceDistribution(levels=[0.0, 1.0], values=[0.0, 1.0])
    with pytest.raises(NotFittedError):
        PosteriorCorrection().transform([0.1])
    with pytest.raises(NotFittedError):
        QuantileMap().transform([0.1])
    with pytest.raises(NotFittedError):
        QuantileMap().to_dict()
    with pytest.raises(NotFittedError):
        fitted_map = QuantileMap().fit(np.linspace(0, 1, 200), reference=ref)
        ScoreTransform(correction=PosteriorCorrection(), intent_map=fitted_map)
    with pytest.raises(NotFittedError):
        ScoreTransform(correction=PosteriorCorrection().fit(), intent_map=QuantileMap())


# ---- tenants ----------------------------------------------------------------------------------------------


def test_tenant_with_enough_events_gets_its_own_stabilised_map():
    rng = np.random.default_rng(14)
    n_a, n_b, n_c = 6_000, 6_000, 500
    tenants = np.array(["a"] * n_a + ["b"] * n_b + ["c"] * n_c, dtype=object)
    # Tenant b's traffic is riskier on the incumbent; the new model shifts a and b in different directions.
    z = np.r_[rng.normal(-5, 1.5, n_a), rng.normal(-4, 1.5, n_b), rng.normal(-5, 1.5, n_c)]
    inc_raw = sigmoid(z)
    tenant_shift = np.where(tenants == "a", 1.5, np.where(tenants == "b", -1.0, 0.0))
    new_raw = sigmoid(z + tenant_shift + rng.normal(0, 0.3, z.size))
    st_inc, ref = fit_score_transform(inc_raw)
    inc_served = st_inc.apply(inc_raw)
    st, _ = fit_score_transform(
        new_raw, reference=ref, incumbent_ref_scores=inc_served, tenant_ids=tenants, min_tenant_events=2000
    )
    assert st.tenant_ids == ("a", "b")
    assert st.has_tenant_map("a") and st.has_tenant_map("b")
    assert not st.has_tenant_map("c") and not st.has_tenant_map("unknown") and not st.has_tenant_map(None)
    thresholds = ref.quantile([0.95, 0.99])
    for tid in ("a", "b"):
        rows = tenants == tid
        own = alert_rates(st.apply(new_raw[rows], tid), thresholds)
        intent_only = alert_rates(st.apply(new_raw[rows]), thresholds)
        incumbent = alert_rates(inc_served[rows], thresholds)
        np.testing.assert_allclose(own, incumbent, rtol=0.03, atol=1e-3)
        assert (np.abs(intent_only / incumbent - 1) > 0.2).all()  # the intent map alone would drift
    small = new_raw[tenants == "c"]
    assert st.apply(small, "c").tolist() == st.apply(small).tolist()
    assert st.apply(small, "unknown").tolist() == st.apply(small).tolist()


def test_tenant_maps_on_the_fixed_reference():
    raw, _ = model_scores(12_000, 15)
    tenants = np.array(["x"] * 4_000 + [None] * 8_000, dtype=object)
    raw[:4_000] = np.minimum(raw[:4_000] * 3, 1.0)  # tenant x scores higher
    _, ref = fit_score_transform(model_scores(12_000, 16)[0])
    st, _ = fit_score_transform(raw, reference=ref, tenant_ids=tenants, min_tenant_events=2000)
    assert st.tenant_ids == ("x",)
    rates = alert_rates(st.apply(raw[:4_000], "x"), ref.quantile([0.95, 0.99]))
    np.testing.assert_allclose(rates, [0.05, 0.01], rtol=0.05)



# ---- one call for a batch of mixed tenants ----------------------------------------------------------------


def _per_tenant_apply(st: ScoreTransform, raw: np.ndarray, tenants: np.ndarray) -> np.ndarray:
    """The reference: the intent map for every row, then each tenant with a map over its own rows."""
    out = st.apply(raw)
    for tid in st.tenant_ids:
        rows = tenants == tid
        if rows.any():
            out[rows] = st.apply(raw[rows], tid)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_apply_equals_per_tenant_apply_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    names = ["t0", "t1", "t2", "t3", "small", "unseen"]
    cal_tenants = rng.choice(names[:5], size=20_000, p=[0.3, 0.25, 0.2, 0.2, 0.05]).astype(object)
    cal_raw = sigmoid(rng.normal(-5, 1.5, cal_tenants.size) + (cal_tenants == "t1") * 1.0)
    _, ref = fit_score_transform(model_scores(10_000, 40 + seed)[0])
    st, _ = fit_score_transform(cal_raw, reference=ref, tenant_ids=cal_tenants, min_tenant_events=2000,
                                negative_sampling_rate=0.5)
    assert st.tenant_ids == ("t0", "t1", "t2", "t3")  # several maps; "small" and "unseen" use the intent map
    raw = np.r_[sigmoid(rng.normal(-5, 2, 5_000)), 0.0, 1.0, np.nan]
    tenants = rng.choice(names, size=raw.size).astype(object)
    tenants[rng.random(raw.size) < 0.05] = None
    want = _per_tenant_apply(st, raw, tenants)
    for ids in (tenants, tenants.tolist(), list(tenants), tuple(tenants)):
        got = st.apply(raw, ids)
        assert got.dtype == np.float64 and np.array_equal(got.view(np.int64), want.view(np.int64))
    assert not np.array_equal(want, st.apply(raw), equal_nan=True)  # the tenant maps did something


def test_vectorised_apply_single_tenant_none_and_no_maps():
    st, _, raw, tenants = _tenant_transform()
    assert np.array_equal(st.apply(raw, "t1"), st.apply(raw, np.full(raw.size, "t1", dtype=object)))
    assert np.array_equal(st.apply(raw, None), st.apply(raw, [None] * raw.size))
    assert np.array_equal(st.apply(raw, "other"), st.apply(raw))
    no_maps, _ = fit_score_transform(raw)
    assert np.array_equal(no_maps.apply(raw, tenants), no_maps.apply(raw))
    assert st.apply(raw[:0], tenants[:0]).shape == (0,)


@pytest.mark.parametrize("ids", [["t1"], np.array([["t1", "t2"]], dtype=object), [["t1"], ["t2"]]])
def test_vectorised_apply_rejects_ids_that_do_not_fit_the_scores(ids):
    st, *_ = _tenant_transform()
    with pytest.raises(TransformError):
        st.apply(np.array([0.1, 0.2]), ids)

# ---- persistence ------------------------------------------------------------------------------------------


def _tenant_transform() -> tuple[ScoreTransform, ReferenceDistribution, np.ndarray, np.ndarray]:
    raw, _ = model_scores(10_000, 17)
    tenants = np.array(["t1"] * 3_000 + ["t2"] * 7_000, dtype=object)
    _, ref = fit_score_transform(model_scores(10_000, 18)[0])
    st, _ = fit_score_transform(
        raw, reference=ref, tenant_ids=tenants, min_tenant_events=2500, negative_sampling_rate=0.25
    )
    return st, ref, raw, tenants


def test_round_trip_through_json_gives_identical_outputs():
    st, ref, raw, _ = _tenant_transform()
    loaded = ScoreTransform.from_dict(orjson.loads(orjson.dumps(st.to_dict())))
    x = np.r_[raw, 0.0, 1.0, np.nan]
    for tid in (None, "t1", "t2", "other"):
        assert np.array_equal(loaded.apply(x, tid), st.apply(x, tid), equal_nan=True)
    assert loaded.tenant_ids == st.tenant_ids == ("t1", "t2")
    assert loaded.min_tenant_events == 2500
    ref2 = ReferenceDistribution.from_dict(orjson.loads(orjson.dumps(ref.to_dict())))
    assert np.array_equal(ref2.quantile([0.5, 0.999]), ref.quantile([0.5, 0.999]))
    assert ref2.low == ref.low and ref2.high == ref.high


def _corrupt(d: dict, path: tuple[str, ...], value) -> dict:
    d = orjson.loads(orjson.dumps(d))
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return d


def _swap_two(v: list) -> list:
    v = list(v)
    i = len(v) // 2
    v[i], v[i + 1] = v[i + 1] + 0.1, v[i]
    return v


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("intent_map", "model_knots"), _swap_two),  # non-monotone
        (("intent_map", "target_knots"), _swap_two),
        (("intent_map", "levels"), _swap_two),
        (("intent_map", "model_knots"), lambda v: [math.nan, *v[1:]]),  # NaN knot
        (("intent_map", "target_knots"), lambda v: [*v[:-1], math.inf]),
        (("intent_map", "model_knots"), lambda v: v[:-1]),  # wrong length
        (("intent_map", "levels"), lambda v: v[1:]),
        (("intent_map", "model_knots"), lambda v: [*v[:-1], 1.5]),  # outside the probability domain
        (("intent_map", "tails"), "wrap"),
        (("intent_map", "nan_policy"), "ignore"),
        (("intent_map", "n_fit"), 3),
        (("intent_map", "levels"), KeyError),
        (("intent_map", "format"), 99),
        (("tenant_maps", "t1", "target_knots"), _swap_two),
        (("tenant_maps",), ["t1"]),
        (("correction", "negative_sampling_rate"), 2.0),
        (("correction", "negative_sampling_rate"), "0.1"),
        (("correction",), KeyError),
        (("min_tenant_events",), 0),
        (("format",), 2),
    ],
)
def test_invalid_transform_dicts_are_rejected(path, value):
    st, _, _, _ = _tenant_transform()
    with pytest.raises(TransformError):
        ScoreTransform.from_dict(_corrupt(st.to_dict(), path, value))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("values", _swap_two),
        ("values", lambda v: [*v[:-1], math.nan]),
        ("levels", lambda v: v[:-1]),
        ("low", lambda v: 0.5),
        ("format", KeyError),
    ],
)
def test_invalid_reference_dicts_are_rejected(key, value):
    _, ref, _, _ = _tenant_transform()
    with pytest.raises(TransformError):
        ReferenceDistribution.from_dict(_corrupt(ref.to_dict(), (key,), value))


def test_transform_dict_is_not_a_dict():
    with pytest.raises(TransformError):
        ScoreTransform.from_dict(["not", "a", "dict"])
