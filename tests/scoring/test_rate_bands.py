"""A rate band alerts about its rate: the scorer, given the intent's reference from the models registry,
sends about that share of traffic like the reference's to the band."""

from __future__ import annotations

import base64
from collections import Counter

import numpy as np
import orjson

from muse_stream.config import Settings, TenantConfig
from muse_stream.models.bands import ReferenceCache
from muse_stream.models.records import (
    ActivationRecord,
    ReferenceRecord,
    TimelineEntry,
    VersionRecord,
    active_key,
    dump,
    reference_key,
    sha256_hex,
    version_key,
)
from muse_stream.models.registry import ModelRegistry
from muse_stream.models.transform import fit_score_transform
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import TenantRegistry
from tests.fixtures.helpers import FEATURES, synthetic, train_booster
from tests.fixtures.scoring_fakes import Msg


def _models() -> ModelRegistry:
    booster = train_booster(0)
    st, ref = fit_score_transform(booster.inplace_predict(synthetic(20_000, 100)[0]), reference=None)
    b = bytes(booster.save_raw("ubj"))
    reg = ModelRegistry()
    reg.apply(reference_key("card"), dump(ReferenceRecord(intent="card", reference=ref.to_dict(), source="test",
                                                          created_at=0)))
    reg.apply(version_key("card", 1), dump(VersionRecord(
        intent="card", version=1, features=tuple(FEATURES), booster_b64=base64.b64encode(b).decode(),
        booster_sha256=sha256_hex(b), transform=st.to_dict(), created_at=0)))
    reg.apply(active_key("card"), dump(ActivationRecord(intent="card", version=1, activated_at=0,
                                                        timeline=(TimelineEntry(version=1, from_time=None),))))
    return reg


def test_a_rate_band_alerts_about_its_rate():
    models = _models()
    cfg = TenantConfig(tenant_id="acme", intents=("card",),
                       bands={"review": {"rate": 0.05}, "decline": {"rate": 0.01}})
    tenants = TenantRegistry(Settings(), {"acme": cfg}, log_changes=False,
                             references=ReferenceCache(lambda: models.references))
    scorer = BatchScorer(tenants, models, max_abs_feature=1e30, max_event_bytes=10_000)
    x, _ = synthetic(20_000, 7)  # fresh traffic, drawn as the calibration set was
    msgs = [Msg(orjson.dumps({"event_id": f"e-{i}", "tenant_id": "acme", "event_time": i,
                              "features": dict(zip(FEATURES, row.tolist()))}), i) for i, row in enumerate(x)]
    out = scorer.process(msgs, 0)
    assert not out.dead and len(out.decisions) == len(msgs)
    bands = Counter(orjson.loads(v)["band"] for _, _, v in out.decisions)
    n = len(msgs)
    assert abs((bands["review"] + bands["decline"]) / n - 0.05) <= 0.2 * 0.05, bands
    assert abs(bands["decline"] / n - 0.01) <= 0.2 * 0.01, bands
    # With no reference, the rate bands have no threshold: every event would be approve (and in a worker the
    # intent would have no model either, so its events are dead letters).
    bare = TenantRegistry(Settings(), {"acme": cfg}, log_changes=False)
    [(b, _)] = bare.band_groups("acme", "card", np.array([0]))
    assert b.names == ["approve"]
