"""The event contract on its own: parsing, the explaining path, routing and the value limits."""

from __future__ import annotations

import math
import warnings

import numpy as np
import orjson
import pytest

from muse_stream.config import TenantConfig
from muse_stream.scoring.contract import (
    FLOAT32_MAX,
    MAX_EVENT_TIME,
    Event,
    Rejection,
    Router,
    explain,
    model_matrix,
    parse_event,
)
from tests.fixtures.scoring_fakes import registry

MAX_BYTES = 10_000
OK = {"event_id": "e", "tenant_id": "acme", "event_time": 5, "features": {"f0": 1.5, "f1": -2}}


def _raw(**change) -> bytes:
    ev = {**OK, **change}
    return orjson.dumps({k: v for k, v in ev.items() if v is not _DROP})


_DROP = object()

# (value, reason or None when the event keeps the contract)
CASES = [
    (_raw(), None),
    (_raw(intent="card"), None),
    (_raw(features={"f0": None, "f1": 2.0}), None),  # null: a missing value
    (_raw(features={}), None),  # no features at all: every model feature missing
    (_raw(event_time=0), None),
    (_raw(event_time=MAX_EVENT_TIME), None),
    (_raw(tenant_id=""), None),  # well-formed; routing says the tenant is unknown
    (_raw(features={"f0": 1e300}), None),  # the value limit is per model feature, checked per group
    (b"", "malformed_json"),
    (None, "malformed_json"),  # a tombstone
    (b"{oops", "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","event_time":5,"features":{"f0":1e309}}', "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","event_time":5,"features":{"f0":NaN}}', "malformed_json"),
    (b'"a string"', "not_an_object"),
    (b"[1, 2]", "not_an_object"),
    (b"7", "not_an_object"),
    (b"null", "not_an_object"),
    (_raw(features=_DROP), "missing_field"),
    (_raw(event_id=None), "missing_field"),
    (_raw(tenant_id=_DROP, event_time=_DROP), "missing_field"),
    (_raw(event_id=7), "wrong_type"),
    (_raw(event_id=""), "wrong_type"),
    (_raw(tenant_id=["acme"]), "wrong_type"),
    (_raw(event_time=1.5), "wrong_type"),
    (_raw(event_time="5"), "wrong_type"),
    (_raw(event_time=True), "wrong_type"),
    (_raw(event_time=-1), "wrong_type"),
    (_raw(event_time=MAX_EVENT_TIME + 1), "value_too_large"),
    (_raw(event_time=2**64 - 1), "value_too_large"),
    (_raw(features=[1, 2]), "wrong_type"),
    (_raw(features="f0=1"), "wrong_type"),
    (_raw(intent=3), "wrong_type"),
    (_raw(features={"f0": "12.5"}), "wrong_type"),
    (_raw(features={"f0": True}), "wrong_type"),
    (_raw(features={"f0": False, "f1": 1.0}), "wrong_type"),
    (_raw(features={"f0": {"nested": 1}}), "wrong_type"),
    (_raw(features={"f0": [1.0]}), "wrong_type"),
    (b'{"pad": "' + b"x" * MAX_BYTES + b'"}', "event_too_large"),
    # A name given twice: orjson keeps the last value, other parsers the first; refused, never guessed at.
    (b'{"event_id":"e","tenant_id":"acme","tenant_id":"zed","event_time":5,"features":{}}', "malformed_json"),
    (b'{"event_id":"e","tenant_\\u0069d":"acme","tenant_id":"zed","event_time":5,"features":{}}', "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","card_id":"a","card_id":"b","event_time":5,"features":{}}',
     "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","event_time":5,"features":{"f0":1,"f0":"x"}}', "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","event_time":5,"features":{},"meta":{"a":1,"a":2}}', "malformed_json"),
    (b'{"event_id":"e:1","tenant_id":"a:b","event_time":5,"features":{"f0":1},"meta":{"a":[{"b":1}]}}', None),
    # Nested past what the repeated-name check reads (the standard library recurses): refused whatever the
    # caller's stack (1000 levels used to slip through, routed by the last tenant_id).
    (b'{"event_id":"e","tenant_id":"zed","tenant_id":"acme","deep":' + b"[" * 1000 + b"]" * 1000
     + b',"event_time":5,"features":{}}', "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","deep":' + b'{"a":' * 150 + b"1" + b"}" * 150
     + b',"event_time":5,"features":{}}', "malformed_json"),
    (b'{"event_id":"e","tenant_id":"acme","deep":' + b'{"a":' * 99 + b"1" + b"}" * 99
     + b',"event_time":5,"features":{}}', None),
]


@pytest.mark.parametrize("raw, reason", CASES)
def test_parse_event_and_explain_agree_on_every_kind_of_event(raw, reason):
    got = parse_event(raw, MAX_BYTES)
    why = explain(raw, MAX_BYTES)
    if reason is None:
        assert type(got) is Event and why is None
    else:
        assert type(got) is Rejection and got == why and got.reason.value == reason and got.detail


def test_a_parsed_event_carries_its_fields_with_null_as_nan():
    ev = parse_event(_raw(intent="card", features={"f0": None, "f1": 2}), MAX_BYTES)
    assert (ev.event_id, ev.tenant_id, ev.intent, ev.event_time) == ("e", "acme", "card", 5)
    assert math.isnan(ev.features["f0"]) and ev.features["f1"] == 2
    assert parse_event(_raw(), MAX_BYTES).intent is None


def test_rejection_details_say_what_is_wrong():
    assert explain(_raw(features={"amount": "12.5"}), MAX_BYTES).detail == "feature 'amount' is not a number"
    assert explain(_raw(event_id=_DROP, features=_DROP), MAX_BYTES).detail == "missing: event_id, features"
    both = explain(_raw(event_id=1, intent=2), MAX_BYTES).detail
    assert "event_id must be a non-empty string" in both and "intent must be a string" in both
    assert explain(b"x" * (MAX_BYTES + 1), MAX_BYTES).detail == f"{MAX_BYTES + 1} bytes > {MAX_BYTES}"
    twice = b'{"event_id":"e","tenant_id":"acme","tenant_id":"zed","event_time":5,"features":{}}'
    assert explain(twice, MAX_BYTES).detail.startswith("field 'tenant_id' appears more than once")
    deep = b'{"event_id":"e","tenant_id":"acme","d":' + b'{"a":' * 150 + b"1" + b"}" * 150 + b',"event_time":5}'
    assert explain(deep, MAX_BYTES).detail == "nested deeper than 100 levels, too deep to check for repeated names"


# ---- routing ------------------------------------------------------------------------------------------------

TENANTS = {
    "acme": TenantConfig(tenant_id="acme", intents=("card",)),
    "zed": TenantConfig(tenant_id="zed", intents=("card", "other")),
    "off": TenantConfig(tenant_id="off", intents=("card",), suspended=True),
    "pin": TenantConfig(tenant_id="pin", intents=("card",), pinned_versions={"card": 1}),
    "ghost": TenantConfig(tenant_id="ghost", intents=("card",), pinned_versions={"card": 9}),
}


@pytest.fixture(scope="module")
def reg():
    return registry({"card": ((1, None), (2, 100))})


@pytest.mark.parametrize("tenant, intent, t, want", [
    ("acme", None, 99, "card@1"),
    ("acme", "card", 100, "card@2"),
    ("pin", None, 500, "card@1"),  # pinned: the timeline does not apply
    ("who", None, 5, "unknown_tenant"),
    ("off", None, 5, "tenant_suspended"),
    ("zed", None, 5, "missing_field"),  # two intents and no default
    ("acme", "other", 5, "intent_not_allowed"),
    ("zed", "other", 5, "no_active_model"),  # allowed, but nothing active
    ("ghost", None, 5, "no_active_model"),  # pinned to a version that is not on the topic
])
def test_router_admits_to_the_version_live_uses_or_says_why_not(reg, tenant, intent, t, want):
    got = Router(TENANTS, reg).admit(Event("e", tenant, intent, t, {}))
    assert (got.reason.value if type(got) is Rejection else got.name) == want


def test_router_caches_per_pair_and_version(reg):
    router = Router(TENANTS, reg)
    a = router.admit(Event("a", "acme", None, 5, {}))
    assert router.admit(Event("b", "acme", None, 6, {})) is a
    assert router.admit(Event("c", "acme", None, 150, {})) is not a


# ---- value limits -------------------------------------------------------------------------------------------


def test_model_matrix_refuses_rows_beyond_the_limit_and_keeps_the_rest():
    feats = [{"a": 1.0, "b": 2.0}, {"a": 1e300, "b": 0.0}, {"a": -3.0}, {"a": 0.0, "b": -5e30}, {"b": 1e31}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in a cast would be a RuntimeWarning
        x, kept, rejected = model_matrix(feats, ("a", "b"), 1e30)
    assert kept.tolist() == [0, 2]
    assert x.dtype == np.float32 and x[0].tolist() == [1.0, 2.0] and x[1, 0] == -3.0 and np.isnan(x[1, 1])
    assert [(i, r.reason.value) for i, r in rejected] == [(1, "value_too_large"), (3, "value_too_large"),
                                                          (4, "value_too_large")]
    assert rejected[0][1].detail == "feature 'a' magnitude exceeds 1e+30" and "'b'" in rejected[1][1].detail


def test_model_matrix_limit_never_exceeds_what_float32_holds():
    feats = [{"a": 1e39}, {"a": -FLOAT32_MAX}, {"a": 2.0**128}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, kept, rejected = model_matrix(feats, ("a",), 1e300)
    assert kept.tolist() == [1] and np.isfinite(x).all() and [i for i, _ in rejected] == [0, 2]


def test_model_matrix_all_within_limits_reads_only_model_features():
    x, kept, rejected = model_matrix([{"a": 1, "zz": 1e300}, {"a": 2}], ("a",), 1e30)
    assert kept is None and not rejected and x[:, 0].tolist() == [1.0, 2.0]


def test_a_json_value_that_is_not_an_object_is_named_as_json_names_it():
    from muse_stream.scoring.contract import parse_event

    for raw, kind in ((b"null", "null"), (b"[1]", "an array"), (b'"x"', "a string"), (b"7", "a number"),
                      (b"2.5", "a number"), (b"true", "true or false")):
        assert parse_event(raw, 1000).detail == f"event is JSON {kind}, not an object"
