"""A version's features are its booster's feature_names, in order, or it is refused at publish and by the
workers; versions no timeline, pin or shadow needs any more are unloaded (and reload on demand)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import xgboost as xgb

from muse_stream.errors import ModelError
from muse_stream.kafka.table import read_table
from muse_stream.models.records import (
    ActivationRecord,
    ShadowRecord,
    VersionRecord,
    active_key,
    dump,
    next_timeline,
    sha256_hex,
    shadow_key,
    version_key,
)
from muse_stream.models.registry import ModelRegistry, load_version
from muse_stream.models.store import build_version, publish
from muse_stream.models.transform import fit_score_transform
from tests.fixtures.helpers import FEATURES, synthetic, train_booster

REVERSED = FEATURES[::-1]
RENAMED = ["amount", *FEATURES[1:]]


def _parts(booster: xgb.Booster) -> tuple[bytes, dict]:
    st, _ = fit_score_transform(booster.inplace_predict(synthetic(2000, 99)[0]))
    return bytes(booster.save_raw("ubj")), st.to_dict()


def _record(intent: str, version: int, booster: xgb.Booster, features: list[str]) -> VersionRecord:
    """A version record as a producer other than `publish` could write it: no check on the way."""
    raw, transform = _parts(booster)
    return VersionRecord(intent=intent, version=version, features=tuple(features),
                         booster_b64=base64.b64encode(raw).decode(), booster_sha256=sha256_hex(raw),
                         transform=transform, created_at=0)


def _activate(reg: ModelRegistry, intent: str, version: int, from_time: int | None) -> None:
    prev = reg.activations.get(intent)
    act = ActivationRecord(intent=intent, version=version, activated_at=0,
                           timeline=next_timeline(prev, version, from_time))
    reg.apply(active_key(intent), dump(act))


# ---- feature names ------------------------------------------------------------------------------------------

def test_reordered_or_renamed_features_are_refused_at_build_with_the_first_difference():
    """The reported bug: a booster re-published with its features reversed was accepted, and scored 0.056
    where the original scored 0.778."""
    booster = train_booster(1)
    raw, transform = _parts(booster)
    assert build_version(intent="i", version=1, booster_bytes=raw, features=FEATURES, transform=transform)
    x = synthetic(200, 5)[0]
    assert not np.allclose(booster.inplace_predict(x), booster.inplace_predict(x[:, ::-1]))  # it matters
    cases = {
        tuple(REVERSED): "feature 0 is 'f4' in the version's features but 'f0' in the booster's feature_names",
        tuple(RENAMED): "feature 0 is 'amount' in the version's features but 'f0'",
        tuple(FEATURES[:4]): "the version names 4 features, the booster's feature_names 5 (the first 4 agree; "
                             "the booster's next is 'f4')",
        (*FEATURES, "f5"): "the version names 6 features, the booster's feature_names 5",
    }
    for features, message in cases.items():
        with pytest.raises(ModelError) as info:
            build_version(intent="i", version=1, booster_bytes=raw, features=list(features), transform=transform)
        assert message in str(info.value) and str(info.value).startswith("i@1: ")


def test_a_booster_without_feature_names_is_refused_with_how_to_fix_it():
    x, y = synthetic(2000, 3)
    nameless = xgb.train({"max_depth": 2, "objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, label=y), 5)
    assert nameless.feature_names is None
    raw, transform = _parts(nameless)
    with pytest.raises(ModelError, match="saved without feature names.*set feature_names when training"):
        build_version(intent="i", version=1, booster_bytes=raw, features=FEATURES, transform=transform)
    nameless.feature_names = list(FEATURES)  # the fix the message gives
    assert load_version(_record("i", 1, nameless, FEATURES)).features == tuple(FEATURES)


def test_the_registry_refuses_an_activation_whose_features_are_not_the_boosters():
    booster = train_booster(1)
    reg = ModelRegistry()
    reg.apply(version_key("card", 1), dump(_record("card", 1, booster, FEATURES)))
    _activate(reg, "card", 1, None)
    for version, features in ((2, REVERSED), (3, RENAMED)):
        reg.apply(version_key("card", version), dump(_record("card", version, booster, features)))
        _activate(reg, "card", version, 1000 * version)
        assert reg.active_version("card") == 1  # refused: version 1 stays active
        assert "feature 0 is" in reg.refused[("card", version)]
        with pytest.raises(ModelError, match="was refused"):
            reg.get("card", version)


@pytest.mark.kafka
def test_publish_refuses_reordered_features_and_writes_nothing(stack):
    s = stack
    raw, transform = _parts(train_booster(1))
    _, ref = fit_score_transform(np.linspace(0, 1, 500))
    with pytest.raises(ModelError, match="feature 0 is 'f4'"):
        publish(s, intent="card_fraud", booster_bytes=raw, features=REVERSED, transform=transform,
                reference=ref.to_dict(), activate=True)
    assert read_table(s, s.topics.models) == []


# ---- unloading ------------------------------------------------------------------------------------------

def test_versions_out_of_the_last_two_timeline_entries_are_unloaded_and_reload_on_demand():
    pins: set[tuple[str, int]] = set()
    reg = ModelRegistry(pins=lambda: pins)
    for v in range(1, 6):
        reg.apply(version_key("card", v), dump(_record("card", v, train_booster(v, rounds=3), FEATURES)))
    for v in range(1, 5):
        _activate(reg, "card", v, None if v == 1 else 100 * v)
    assert set(reg.loaded) == {("card", 3), ("card", 4)}
    # An old event needs version 1: it loads again, and stays until the registry next changes.
    assert reg.get("card", 1).version == 1 and ("card", 1) in reg.loaded
    # A shadow and a pin keep their versions loaded across activations.
    pins.add(("card", 1))
    reg.apply(shadow_key("card"), dump(ShadowRecord(intent="card", version=2, set_at=0)))
    _activate(reg, "card", 5, 500)
    assert set(reg.loaded) == {("card", 1), ("card", 2), ("card", 4), ("card", 5)}
    reg.apply(shadow_key("card"), dump(ShadowRecord(intent="card", version=None, set_at=0)))  # shadow off
    assert set(reg.loaded) == {("card", 1), ("card", 4), ("card", 5)}
    pins.clear()
    assert reg.unload_unused() == [("card", 1)]
    assert set(reg.loaded) == {("card", 4), ("card", 5)}
    assert reg.get("card", 2).version == 2  # still on the topic: it loads again when an event needs it
