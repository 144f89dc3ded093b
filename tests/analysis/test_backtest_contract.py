"""Without a broker: the backtest reads a range exactly as live scoring would, event by event.

Every kind of event goes through BatchScorer.process (live and replay) and through the backtest's reading
path (range_events); both must score the same events with the same versions, and dead-letter the rest for
the same reasons.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import orjson
import pytest

from muse_stream.analysis.backtest import candidate_matrix, range_events
from muse_stream.config import Settings, TenantConfig
from muse_stream.scoring.contract import model_matrix
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import TenantRegistry
from tests.fixtures.helpers import FEATURES
from tests.fixtures.scoring_fakes import Msg, registry

MAX_ABS, MAX_BYTES = 1e30, 4_000
TENANTS = {
    "acme": TenantConfig(tenant_id="acme", intents=("card",), bands={"review": 0.5}),
    "globex": TenantConfig(tenant_id="globex", intents=("card", "ato"), default_intent="card"),
    "zed": TenantConfig(tenant_id="zed", intents=("card", "other")),  # two intents, no default
    "off": TenantConfig(tenant_id="off", intents=("card",), suspended=True),
    "pin": TenantConfig(tenant_id="pin", intents=("card",), pinned_versions={"card": 1}),
    "ghost": TenantConfig(tenant_id="ghost", intents=("card",), pinned_versions={"card": 9}),
}


def _feats(i: int, **change) -> dict:
    rng = np.random.default_rng(i)
    return {**{f: float(v) for f, v in zip(FEATURES, rng.normal(size=len(FEATURES)))}, **change}


def _ev(i: int, tenant: str = "acme", t: int | None = None, **extra) -> bytes:
    ev = {"event_id": f"e{i}", "tenant_id": tenant, "event_time": 40 + 7 * i if t is None else t,
          "features": _feats(i), **extra}
    return orjson.dumps(ev)


def _every_kind() -> list[bytes]:
    """Valid events around an activate_at, and one or more of every kind the contract refuses."""
    valid = [_ev(i, ["acme", "globex", "pin"][i % 3]) for i in range(30)]  # times 40..243: across t=100
    f = _feats(99)
    kinds = [
        orjson.dumps({"event_id": "null", "tenant_id": "acme", "event_time": 7, "features": {**f, "f0": None}}),
        orjson.dumps({"event_id": "gap", "tenant_id": "acme", "event_time": 8, "features": {"f1": 1.0}}),
        orjson.dumps({"event_id": "extra", "tenant_id": "acme", "event_time": 9, "features": {**f, "zz": 1e300}}),
        orjson.dumps({"event_id": "str", "tenant_id": "acme", "event_time": 9, "features": {**f, "f0": "12.5"}}),
        orjson.dumps({"event_id": "bool", "tenant_id": "acme", "event_time": 9, "features": {**f, "f2": True}}),
        orjson.dumps({"event_id": "big", "tenant_id": "acme", "event_time": 9, "features": {**f, "f3": 1e300}}),
        orjson.dumps({"event_id": "big2", "tenant_id": "pin", "event_time": 9, "features": {**f, "f1": -2e30}}),
        b'{"event_id":"inf","tenant_id":"acme","event_time":9,"features":{"f0":1e309}}',
        orjson.dumps({"event_id": "nest", "tenant_id": "acme", "event_time": 9, "features": {**f, "f0": {"a": 1}}}),
        orjson.dumps({"event_id": "nofeat", "tenant_id": "acme", "event_time": 9}),
        orjson.dumps({"tenant_id": "acme", "event_time": 9, "features": f}),
        orjson.dumps({"event_id": 12, "tenant_id": "acme", "event_time": 9, "features": f}),
        orjson.dumps({"event_id": "t", "tenant_id": "acme", "event_time": "9", "features": f}),
        orjson.dumps({"event_id": "neg", "tenant_id": "acme", "event_time": -9, "features": f}),
        orjson.dumps({"event_id": "late", "tenant_id": "acme", "event_time": 2**63, "features": f}),
        orjson.dumps({"event_id": "fl", "tenant_id": "acme", "event_time": 9, "features": [1.0, 2.0]}),
        orjson.dumps({"event_id": "it", "tenant_id": "acme", "intent": 4, "event_time": 9, "features": f}),
        b"", None, b"{not json", b'"text"', b"[1]",
        orjson.dumps({"event_id": "huge", "tenant_id": "acme", "event_time": 9, "features": f, "pad": "x" * MAX_BYTES}),
        _ev(200, "who"), _ev(201, "off"), _ev(202, "zed"), _ev(203, "acme", intent="ato"),
        _ev(204, "zed", intent="other"), _ev(205, "ghost"),
        _ev(206, "pin", t=500),  # pinned: card@1 although the timeline says card@2 by then
        _ev(207, "globex", intent="ato"), _ev(208, "globex", intent="ato", t=300),  # another intent's model
        orjson.dumps({"event_id": "atobig", "tenant_id": "globex", "intent": "ato", "event_time": 9,
                      "features": {**f, "f4": 1e31}}),
    ]
    return valid + kinds


@pytest.fixture(scope="module")
def reg():
    return registry({"card": ((1, None), (2, 100)), "ato": ((1, None),)})


@pytest.mark.parametrize("batch_size", [1000, 7])
def test_backtest_scores_exactly_what_live_scores_and_counts_what_it_dead_letters(reg, batch_size):
    raws = _every_kind()
    msgs = [Msg(r, i, partition=i % 2) for i, r in enumerate(raws)]
    batches = [msgs[k:k + batch_size] for k in range(0, len(msgs), batch_size)]
    scorer = BatchScorer(TenantRegistry(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=MAX_ABS,
                         max_event_bytes=MAX_BYTES)
    live_versions: dict[str, str] = {}
    live_x: dict[str, list] = {}
    live_dead: Counter = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in a cast on either path
        for b in batches:
            out = scorer.process(b, 0)
            live_versions |= {orjson.loads(v)["event_id"]: orjson.loads(v)["model_version"] for _, _, v in out.decisions}
            live_dead += Counter(d.reason.value for d in out.dead)
            for m in out.matrices:
                live_x |= {e: m.x[j].tolist() for j, e in enumerate(m.event_ids)}
        got = range_events(iter(batches), "card", TENANTS, reg, max_event_bytes=MAX_BYTES, max_abs_feature=MAX_ABS)
    assert len(live_versions) + sum(live_dead.values()) == len(raws)  # every event: one decision or dead letter
    card = {e: v for e, v in live_versions.items() if v.startswith("card@")}
    assert dict(zip(got.event_ids, (f"card@{v}" for v in got.versions))) == card
    assert got.other_intents == len(live_versions) - len(card) == 2
    assert got.dead_letters == dict(live_dead)
    assert got.skipped == len(raws) - len(card)
    # The events the old reader scored although live dead-lettered them, and the pin, are where they belong.
    # "extra" carries a feature no version knows: intents reject those by default (unknown_features).
    assert {"str", "bool", "big", "big2", "inf", "atobig", "extra"}.isdisjoint(got.event_ids)
    assert {"null", "gap"} <= set(got.event_ids) and card["e206"] == "card@1"
    assert live_dead["unknown_feature"] == 1 and live_dead["value_too_large"] == 4 and live_dead["wrong_type"] >= 8 and live_dead["no_active_model"] == 2
    # The backtest's incumbent matrix is the one live scored, and the range is in (event_time, partition,
    # offset) order.
    x, kept, _ = model_matrix(got.features, tuple(FEATURES), MAX_ABS)
    assert kept is None
    for j, e in enumerate(got.event_ids):
        assert np.array_equal(np.asarray(live_x[e], dtype=np.float32), x[j], equal_nan=True), e
    assert got.times == sorted(got.times)


def test_candidate_matrix_counts_what_the_candidate_would_refuse_without_a_cast_warning():
    feats = [{"a": 1.0, "new": 2.0}, {"a": 1.0, "new": 1e300}, {"a": 3.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, refused = candidate_matrix(feats, ("a", "new"), MAX_ABS)
    assert refused == 1 and x.dtype == np.float32 and x.shape == (3, 2)
    assert x[0].tolist() == [1.0, 2.0] and np.isnan(x[1, 1]) and np.isnan(x[2, 1])
