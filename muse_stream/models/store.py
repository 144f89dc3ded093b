"""Writing the models topic: publish a version (with its reference, optionally activating it), activate,
roll back, and mark a version as shadow. Every write that belongs together is one Kafka transaction, made
after reading the topic under a per-intent fence, so concurrent writers of one intent never collide."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from muse_stream.config import Settings
from muse_stream.errors import ModelError
from muse_stream.featurespec import mismatch as state_mismatch
from muse_stream.kafka.table import fenced_write, read_table
from muse_stream.kafka.watermark import MAX_AHEAD_MS, ahead_of_clock, effective_time, input_watermark
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

logger = logging.getLogger(__name__)
T = TypeVar("T")


def now_ms() -> int:
    return int(time.time() * 1000)


def read_models(settings: Settings, *, load: bool = False) -> ModelRegistry:
    """The models topic as it is now (boosters not loaded unless asked)."""
    return _registry(read_table(settings, settings.topics.models), load=load, intents=settings.intents)


def intent_transactional_id(settings: Settings, intent: str) -> str:
    """The transactional id every writer of `intent` on this models topic uses, so that they fence each other."""
    return f"muse-models-{settings.topics.models}-{intent}"


def _registry(rows, *, load: bool = False, intents=()) -> ModelRegistry:
    # The intents' unknown_features policies, as workers apply them; quiet, as every tool reads the whole topic.
    reg = ModelRegistry(load=load, intents=intents, log_changes=False)
    for k, v in rows:
        reg.apply(k, v)
    return reg


def _fenced_write(settings: Settings, intent: str,
                  step: Callable[[ModelRegistry], tuple[list[tuple[bytes, bytes]], T]]) -> T:
    """Read the models topic and write what `step` derives from it, as one atomic step per intent: fenced by
    the intent's transactional id, so concurrent writers of one intent never collide (see
    kafka/table.fenced_write). `step` may raise to write nothing."""
    return fenced_write(settings, settings.topics.models, intent_transactional_id(settings, intent),
                        lambda rows: step(_registry(rows)), what=f"model {intent}")


def write_models(settings: Settings, intent: str,
                 step: Callable[[ModelRegistry], tuple[list[tuple[bytes, bytes]], T]]) -> T:
    """Several models-topic records of one intent written as one fenced step (the deploy's state changes)."""
    return _fenced_write(settings, intent, step)


def build_version(*, intent: str, version: int, booster_bytes: bytes, features: list[str], transform: dict,
                  metadata: dict | None = None, feature_contract: dict | None = None,
                  state_spec: dict | None = None, settings: Settings | None = None) -> VersionRecord:
    """The version record, refused (ModelError) where every worker would refuse it: a booster that does not
    load, or (given the settings) state features the intent's config does not compute as recorded."""
    if state_spec is None and metadata and isinstance(metadata.get("state_spec"), dict):
        state_spec = metadata["state_spec"]  # where it was recorded before VersionRecord had its own field
    conf = next((i for i in settings.intents if i.name == intent), None) if settings is not None else None
    if state_spec is None and conf is not None and conf.state is not None and \
            set(features) & set(conf.state.feature_names()):
        # Published without definitions (the CLI, deploy) but reading state features: it was made for the
        # definitions configured now, so those are recorded, and a later change of them is caught on load.
        state_spec = conf.state.to_record()
    rec = VersionRecord(intent=intent, version=version, features=tuple(features),
                        booster_b64=base64.b64encode(booster_bytes).decode(), booster_sha256=sha256_hex(booster_bytes),
                        transform=transform, metadata=metadata or {}, created_at=now_ms(),
                        feature_contract=feature_contract, state_spec=state_spec)
    load_version(rec)
    if settings is not None:
        why = state_mismatch(rec.features, rec.state_spec, conf.state if conf is not None else None)
        if why is not None:
            raise ModelError(f"{rec.name}: {why}")
    return rec


def activation_record(reg: ModelRegistry, intent: str, version: int, from_time: int) -> ActivationRecord:
    """The activation of intent@version from event time `from_time` (see _from_time), after checking it loads."""
    rec = reg.versions.get((intent, version))
    if rec is None:
        raise ModelError(f"{intent}@{version} is not on the models topic")
    load_version(rec)
    return _activation(reg, intent, version, None, from_time)


def _activation(reg: ModelRegistry, intent: str, version: int, activate_at: int | None,
                from_time: int | None, booster_sha256: str | None = None) -> ActivationRecord:
    prev = reg.activations.get(intent)
    # Re-timing the version already active keeps what it replaced: `previous` naming itself would make a
    # rollback go nowhere and lose the way back. So does a new map on the active version's own booster (a
    # deployment's refresh): `rollback` goes back to the model before (when there is one), not to the same
    # model's older map.
    sha = booster_sha256 or (reg.versions[(intent, version)].booster_sha256 if (intent, version) in reg.versions
                             else None)
    prev_rec = reg.versions.get((intent, prev.version)) if prev is not None else None
    remap = sha is not None and prev_rec is not None and prev_rec.booster_sha256 == sha and prev.previous is not None
    previous = None if prev is None else prev.previous if prev.version == version or remap else prev.version
    return ActivationRecord(intent=intent, version=version, activate_at=activate_at, previous=previous,
                            activated_at=now_ms(), timeline=next_timeline(prev, version, from_time))


def _from_time(settings: Settings, activate_at: int | None) -> int:
    """Where an activation starts in event time: `activate_at` when given, else (immediate) the input topics'
    event-time watermark now plus runtime.change_lead_ms, so events already on the topics, and those that
    arrive before every worker has read the activation, keep the version that scored them, in live scoring
    and in every replay (0, the start of time, when the topics are empty)."""
    if activate_at is None:
        return effective_time(settings)
    if activate_at < 0:
        raise ModelError(f"activate_at {activate_at} is not an event time (epoch ms >= 0)")
    watermark = input_watermark(settings)
    if activate_at < watermark:
        # Earlier events were already scored under the current timeline: rewriting it would make every later
        # replay and backtest disagree with what live decided.
        ahead = ahead_of_clock(watermark)
        why = (f"; an event there is stamped {ahead // 60_000} min ahead of this machine's clock (times more "
               f"than {MAX_AHEAD_MS // 60_000} min ahead count as now + {MAX_AHEAD_MS // 60_000} min)"
               if ahead else "")
        raise ModelError(f"activate_at {activate_at} is before events already on the input topics (event-time "
                         f"watermark {watermark}{why}): it would change which version scored them; choose a time "
                         f">= {watermark}, or activate without a time")
    return activate_at


def _next_version(reg: ModelRegistry, intent: str) -> int:
    """One past every version number the intent has used: its version records, and the versions its activation
    timeline and shadow name (a version record may have been deleted; its number is never given again)."""
    used = [r.version for r in reg.versions_of(intent)]
    act = reg.activations.get(intent)
    if act is not None:
        used += [act.version, *(e.version for e in act.timeline)]
    shadow = reg.shadows.get(intent)
    if shadow is not None and shadow.version is not None:
        used.append(shadow.version)
    return max(used, default=0) + 1


def publish(settings: Settings, *, intent: str, booster_bytes: bytes, features: list[str], transform: dict,
            reference: dict | None = None, reference_source: str = "", metadata: dict | None = None,
            activate: bool = False, activate_at: int | None = None, shadow: bool = False,
            feature_contract: dict | None = None, state_spec: dict | None = None,
            also: Callable[[ModelRegistry, VersionRecord, ActivationRecord | None], list[tuple[bytes, bytes]]]
            | None = None) -> VersionRecord:
    """Publish the next version of `intent`; its reference too when the intent has none yet. `also` adds records
    derived from the new version (and its activation, if any) to the same transaction (a deployment's step).

    Concurrent publishes of one intent never share a version number (see _fenced_write). With `activate`
    and no `activate_at`, the version is active for events with event_time >= the input watermark now."""
    activating = activate or activate_at is not None
    from_time = _from_time(settings, activate_at) if activating else None
    checked: list[VersionRecord] = []  # the booster is verified on the first attempt only

    def step(reg: ModelRegistry) -> tuple[list[tuple[bytes, bytes]], VersionRecord]:
        version = _next_version(reg, intent)
        if checked:
            rec = checked[0].model_copy(update={"version": version, "created_at": now_ms()})
        else:
            rec = build_version(intent=intent, version=version, booster_bytes=booster_bytes, features=features,
                                transform=transform, metadata=metadata, feature_contract=feature_contract,
                                state_spec=state_spec, settings=settings)
            checked.append(rec)
        records = [(version_key(intent, version), dump(rec))]
        if intent not in reg.references:
            if reference is None:
                raise ModelError(f"intent {intent!r} has no reference distribution yet and none was given")
            records.append((reference_key(intent), dump(ReferenceRecord(
                intent=intent, reference=reference, source=reference_source or rec.name, created_at=now_ms()))))
        act = _activation(reg, intent, version, activate_at, from_time, rec.booster_sha256) if activating else None
        if act is not None:
            records.append((active_key(intent), dump(act)))
        if shadow:
            records.append((shadow_key(intent), dump(ShadowRecord(intent=intent, version=version, set_at=now_ms()))))
        if also is not None:
            records += also(reg, rec, act)
        return records, rec

    return _fenced_write(settings, intent, step)


class Activation(NamedTuple):
    record: ActivationRecord  # the intent's activation after the step
    changed: bool  # False: the version was already active as asked, and nothing was written


def _activate_step(intent: str, version: int, activate_at: int | None, from_time: int):
    def step(reg: ModelRegistry) -> tuple[list[tuple[bytes, bytes]], Activation]:
        rec = reg.versions.get((intent, version))
        if rec is None:
            known = [r.version for r in reg.versions_of(intent)]
            raise ModelError(f"{intent}@{version} is not on the models topic (versions: {known or 'none'})")
        cur = reg.activations.get(intent)
        # The version already active: without a time, nothing to do (running the same command twice must not
        # make it its own `previous`); with one, only a timeline that would change is written (an earlier
        # time moves a scheduled switch earlier; a later one changes nothing, the version is in force then).
        if cur is not None and cur.version == version and (
                activate_at is None or next_timeline(cur, version, from_time) == cur.timeline):
            return [], Activation(cur, False)
        load_version(rec)
        act = _activation(reg, intent, version, activate_at, from_time)
        return [(active_key(intent), dump(act))], Activation(act, True)

    return step


def activate_change(settings: Settings, intent: str, version: int, *,
                    activate_at: int | None = None) -> Activation:
    """Make `intent@version` active, after checking it loads: for events with event_time >= activate_at, or,
    immediately, >= the input topics' event-time watermark now. The timeline keeps every earlier entry.
    Activating the active version writes nothing unless `activate_at` changes its timeline (see above)."""
    return _fenced_write(settings, intent, _activate_step(intent, version, activate_at,
                                                          _from_time(settings, activate_at)))


def activate(settings: Settings, intent: str, version: int, *, activate_at: int | None = None) -> ActivationRecord:
    """activate_change's resulting activation record."""
    return activate_change(settings, intent, version, activate_at=activate_at).record


def rollback(settings: Settings, intent: str) -> ActivationRecord:
    """Re-activate the version that the current activation replaced, immediately (as `activate`)."""
    from_time = _from_time(settings, None)

    def step(reg: ModelRegistry) -> tuple[list[tuple[bytes, bytes]], ActivationRecord]:
        cur = reg.activations.get(intent)
        if cur is None:
            raise ModelError(f"intent {intent!r} has no active version")
        target = cur.previous
        if target == cur.version:
            # Written by a re-activation of the active version before that was a no-op: the version in
            # force before it on the timeline is the one it replaced.
            target = next((e.version for e in reversed(cur.timeline) if e.version != cur.version), None)
        if target is None:
            raise ModelError(f"{intent}@{cur.version} replaced no version: there is nothing to roll back to")
        records, done = _activate_step(intent, target, None, from_time)(reg)
        return records, done.record

    return _fenced_write(settings, intent, step)


def set_shadow(settings: Settings, intent: str, version: int | None) -> None:
    def step(reg: ModelRegistry) -> tuple[list[tuple[bytes, bytes]], None]:
        if version is not None and (intent, version) not in reg.versions:
            raise ModelError(f"{intent}@{version} is not on the models topic")
        return [(shadow_key(intent), dump(ShadowRecord(intent=intent, version=version, set_at=now_ms())))], None

    _fenced_write(settings, intent, step)
