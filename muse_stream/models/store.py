"""Writing the models topic: publish a version (with its reference, optionally activating it), activate,
roll back, and mark a version as shadow. Every write that belongs together is one Kafka transaction."""

from __future__ import annotations

import base64
import time
import uuid

from confluent_kafka import KafkaException, Producer

from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError, ModelError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.table import TopicTable
from muse_stream.models.records import (
    ActivationRecord,
    ReferenceRecord,
    ShadowRecord,
    VersionRecord,
    active_key,
    dump,
    next_timeline,
    reference_key,
    sha256_hex,
    shadow_key,
    version_key,
)
from muse_stream.models.registry import ModelRegistry, load_version


def now_ms() -> int:
    return int(time.time() * 1000)


def read_models(settings: Settings, *, load: bool = False) -> ModelRegistry:
    """The models topic as it is now (boosters not loaded unless asked)."""
    table = TopicTable(settings, settings.topics.models)
    try:
        reg = ModelRegistry(load=load)
        for k, v in table.catch_up():
            reg.apply(k, v)
        return reg
    finally:
        table.close()


def _write(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    """Write records to the models topic in one transaction: all of them become visible, or none."""
    producer = Producer(producer_config(settings, transactional_id=f"muse-models-{uuid.uuid4().hex[:12]}"))
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        for key, value in records:
            producer.produce(settings.topics.models, value, key)
        producer.commit_transaction(60)
    except KafkaException as e:
        raise KafkaOpError(f"writing to {settings.topics.models}: {e.args[0].str()}") from None
    except BufferError as e:
        raise KafkaOpError(f"writing to {settings.topics.models}: {e}") from None


def build_version(*, intent: str, version: int, booster_bytes: bytes, features: list[str], transform: dict,
                  metadata: dict | None = None) -> VersionRecord:
    rec = VersionRecord(intent=intent, version=version, features=tuple(features),
                        booster_b64=base64.b64encode(booster_bytes).decode(), booster_sha256=sha256_hex(booster_bytes),
                        transform=transform, metadata=metadata or {}, created_at=now_ms())
    load_version(rec)  # refuse here what every worker would refuse
    return rec


def _activation(reg: ModelRegistry, intent: str, version: int, activate_at: int | None) -> ActivationRecord:
    prev = reg.activations.get(intent)
    return ActivationRecord(intent=intent, version=version, activate_at=activate_at,
                            previous=prev.version if prev else None, activated_at=now_ms(),
                            timeline=next_timeline(prev, version, activate_at))


def publish(settings: Settings, *, intent: str, booster_bytes: bytes, features: list[str], transform: dict,
            reference: dict | None = None, reference_source: str = "", metadata: dict | None = None,
            activate: bool = False, activate_at: int | None = None, shadow: bool = False) -> VersionRecord:
    """Publish the next version of `intent`; its reference too when the intent has none yet."""
    reg = read_models(settings)
    version = max((r.version for r in reg.versions_of(intent)), default=0) + 1
    rec = build_version(intent=intent, version=version, booster_bytes=booster_bytes, features=features,
                        transform=transform, metadata=metadata)
    records = [(version_key(intent, version), dump(rec))]
    if intent not in reg.references:
        if reference is None:
            raise ModelError(f"intent {intent!r} has no reference distribution yet and none was given")
        records.append((reference_key(intent), dump(ReferenceRecord(
            intent=intent, reference=reference, source=reference_source or rec.name, created_at=now_ms()))))
    if activate or activate_at is not None:
        records.append((active_key(intent), dump(_activation(reg, intent, version, activate_at))))
    if shadow:
        records.append((shadow_key(intent), dump(ShadowRecord(intent=intent, version=version, set_at=now_ms()))))
    _write(settings, records)
    return rec


def activate(settings: Settings, intent: str, version: int, *, activate_at: int | None = None) -> ActivationRecord:
    """Make `intent@version` active (from event time `activate_at`, when given), after checking it loads."""
    reg = read_models(settings)
    rec = reg.versions.get((intent, version))
    if rec is None:
        known = [r.version for r in reg.versions_of(intent)]
        raise ModelError(f"{intent}@{version} is not on the models topic (versions: {known or 'none'})")
    load_version(rec)
    act = _activation(reg, intent, version, activate_at)
    _write(settings, [(active_key(intent), dump(act))])
    return act


def rollback(settings: Settings, intent: str) -> ActivationRecord:
    """Re-activate the version that the current activation replaced."""
    reg = read_models(settings)
    cur = reg.activations.get(intent)
    if cur is None:
        raise ModelError(f"intent {intent!r} has no active version")
    if cur.previous is None:
        raise ModelError(f"{intent}@{cur.version} replaced no version: there is nothing to roll back to")
    return activate(settings, intent, cur.previous)


def set_shadow(settings: Settings, intent: str, version: int | None) -> None:
    if version is not None:
        reg = read_models(settings)
        if (intent, version) not in reg.versions:
            raise ModelError(f"{intent}@{version} is not on the models topic")
    _write(settings, [(shadow_key(intent), dump(ShadowRecord(intent=intent, version=version, set_at=now_ms())))])
