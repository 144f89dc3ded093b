"""A model registry built in process, with no Kafka: the in-process benchmarks score through the real
BatchScorer with each intent's version 1 active, as a worker would after reading the models topic."""

from __future__ import annotations

from collections.abc import Iterable


def active_registry(models: Iterable[tuple], source: str):
    """A ModelRegistry holding, per (intent, booster, features, transform, reference), version 1 with its
    reference, active from the start of time."""
    from muse_stream.models.records import (
        ActivationRecord,
        ReferenceRecord,
        TimelineEntry,
        active_key,
        dump,
        reference_key,
        version_key,
    )
    from muse_stream.models.registry import ModelRegistry
    from muse_stream.models.store import build_version

    reg = ModelRegistry()
    for intent, booster, features, transform, reference in models:
        rec = build_version(intent=intent, version=1, booster_bytes=bytes(booster.save_raw("ubj")),
                            features=list(features), transform=transform.to_dict())
        reg.apply(version_key(intent, 1), dump(rec))
        reg.apply(reference_key(intent), dump(ReferenceRecord(intent=intent, reference=reference.to_dict(),
                                                              source=source, created_at=0)))
        reg.apply(active_key(intent), dump(ActivationRecord(intent=intent, version=1, activated_at=0,
                                                            timeline=(TimelineEntry(version=1),))))
    return reg
