"""The feature contract of a version (from its calibration table), and the event contract's unknown-feature
policy, without a broker."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from muse_stream.errors import ModelError
from muse_stream.models.feature_contract import FeatureContract, UnknownFeatures
from muse_stream.models.records import parse_models_record
from muse_stream.scoring.contract import model_matrix
from muse_stream.scoring.deadletter import Reason


def test_the_contract_from_a_table_has_each_features_range_and_missing_rate():
    table = {"a": np.array([1.0, np.nan, -2.5, 4.0]), "b": np.array([np.nan] * 4),
             "c": np.array([0.1, 0.2, 0.3, np.nan]), "label": np.array([0, 1, 0, 0.0])}
    c = FeatureContract.from_table(table, ["c", "a", "b"])  # in the version's order, label not a feature
    assert c.features == ("c", "a", "b") and c.rows == 4
    assert c.low == (pytest.approx(0.1), -2.5, None) and c.high == (pytest.approx(0.3), 4.0, None)
    assert c.missing == (0.25, 0.25, 1.0)
    # Ranges are float32 values, as live scoring compares float32 rows with them.
    assert c.high[0] == float(np.float32(0.3))
    back = FeatureContract.from_dict(orjson.loads(orjson.dumps(c.to_dict())), ["c", "a", "b"])
    assert back == c
    assert c.lines()[2].startswith("b  no values") and "missing 25.00%" in c.lines()[0]
    with pytest.raises(ModelError, match="not the version's"):
        FeatureContract.from_dict(c.to_dict(), ["a", "c", "b"])


def test_a_version_record_without_a_contract_still_loads():
    rec = {"kind": "version", "intent": "i", "version": 1, "features": ["a"], "booster_b64": "",
           "booster_sha256": "", "transform": {}, "created_at": 0}
    assert parse_models_record(orjson.dumps(rec)).feature_contract is None


NAMES = ("a", "b")


@pytest.mark.parametrize("complete", [True, False])
def test_reject_dead_letters_the_event_naming_its_unknown_fields(complete):
    feats = [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0, "Colour": 3.0, "zz": 1.0}, {"a": 5.0, "b": 1e300}]
    if not complete:  # an event without every model feature: the slower lookup path
        feats.append({"a": 1.0})
    policy = UnknownFeatures("card_fraud", reject=True)
    x, kept, rejected = model_matrix(feats, NAMES, 1e30, policy)
    assert len(x) == len(kept)
    assert [(i, r.reason) for i, r in rejected] == [(1, Reason.UNKNOWN_FEATURE), (2, Reason.VALUE_TOO_LARGE)]
    assert "unknown features 'Colour', 'zz'" in rejected[0][1].detail and "card_fraud" in rejected[0][1].detail
    assert kept.tolist() == [0] + ([3] if not complete else [])
    assert policy.ignored == {}


def test_ignore_scores_the_event_without_the_field_and_counts_it():
    tally: dict = {}
    policy = UnknownFeatures("card_fraud", reject=False, ignored=tally)
    # The second event's null b is NaN, as parse_event gives it.
    feats = [{"a": 1.0, "Colour": 3.0}, {"a": 2.0, "b": math.nan, "Colour": 1.0, "x": 0.0}, {"b": 4.0}]
    x, kept, rejected = model_matrix(feats, NAMES, 1e30, policy)
    assert kept is None and rejected == []
    assert np.array_equal(x, np.array([[1, np.nan], [2, np.nan], [np.nan, 4]], dtype=np.float32), equal_nan=True)
    assert tally == {("card_fraud", "Colour"): 2, ("card_fraud", "x"): 1}
