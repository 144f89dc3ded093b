"""Broker-free stand-ins for scoring tests: input messages, and a model registry built from tiny real models."""

from __future__ import annotations

import base64

from muse_stream.models.records import (
    ActivationRecord,
    TimelineEntry,
    VersionRecord,
    active_key,
    dump,
    sha256_hex,
    version_key,
)
from muse_stream.models.registry import ModelRegistry
from muse_stream.models.transform import fit_score_transform
from tests.fixtures.helpers import FEATURES, synthetic, train_booster


class Msg:
    """Stands in for a confluent_kafka Message: the scorer only reads these."""

    def __init__(self, value: bytes | None, offset: int, partition: int = 0, topic: str = "in") -> None:
        self._v, self._o, self._p, self._t = value, offset, partition, topic

    def value(self):
        return self._v

    def key(self):
        return None

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def timestamp(self):
        return (1, 1_700_000_000_000 + self._o)


def registry(timelines: dict[str, tuple] | None = None, calibration_tenants: list[str] | None = None,
             min_tenant_events: int = 1000) -> ModelRegistry:
    """A loaded registry: per intent, versions trained and published, activated as `timeline` says
    ((version, from_time) pairs; the last is the activation's version). calibration_tenants, repeated over
    the calibration rows, gives the tenants with enough of them their own maps."""
    reg = ModelRegistry()
    for intent, timeline in (timelines or {"card": ((1, None),)}).items():
        ref = None
        for version in sorted({v for v, _ in timeline}):
            booster = train_booster(version)
            raw_cal = booster.inplace_predict(synthetic(3000, 100 + version)[0])
            tids = None if calibration_tenants is None else [
                calibration_tenants[i % len(calibration_tenants)] for i in range(raw_cal.size)]
            st, ref = fit_score_transform(raw_cal, reference=ref, tenant_ids=tids, min_tenant_events=min_tenant_events)
            b = bytes(booster.save_raw("ubj"))
            rec = VersionRecord(intent=intent, version=version, features=tuple(FEATURES),
                                booster_b64=base64.b64encode(b).decode(), booster_sha256=sha256_hex(b),
                                transform=st.to_dict(), created_at=0)
            reg.apply(version_key(intent, version), dump(rec))
        act = ActivationRecord(intent=intent, version=timeline[-1][0], activated_at=0,
                               timeline=tuple(TimelineEntry(version=v, from_time=t) for v, t in timeline))
        reg.apply(active_key(intent), dump(act))
    return reg
