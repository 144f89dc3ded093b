"""What the `tenants` command does to a record: parse the options, merge them with the record in force,
validate the whole record before anything is written, and describe a record with its bands on each intent."""

from __future__ import annotations

import argparse
import re

import orjson
from pydantic import ValidationError

from muse_stream.bandspec import RATE_RANGE, BandPeriod, BandRate
from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import ConfigError
from muse_stream.kafka.ranges import parse_event_time
from muse_stream.models.bands import ReferenceCache, band_ties, format_bands
from muse_stream.tenants import (
    TenantRegistry,
    bands_in_force,
    collision_key,
    describe_bands,
    first_error,
    put_tenants,
    read_tenant_registry,
    remove_tenant,
)

_BAND = re.compile(r"^([A-Za-z0-9_-]{1,64})=(.+)$")
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")  # no sign, "_", space or inf


def parse_band(text: str) -> tuple[str, float | BandRate]:
    """`review=1%` -> ("review", BandRate(rate=0.01)); `decline=0.995` -> ("decline", 0.995)."""
    m = _BAND.match(text.strip())
    if m is None:
        raise ConfigError(f"--band {text!r}: expected NAME=P% (an alert rate) or NAME=X (a threshold in [0, 1])")
    name, value = m.group(1), m.group(2).strip()
    if not _NUMBER.fullmatch(value.removesuffix("%")):  # float() would take "1_0", "-0", " 5 ", "inf"
        raise ConfigError(f"--band {text!r}: expected NAME=P% (an alert rate) or NAME=X (a threshold in [0, 1]), "
                          "with P and X plain decimal numbers")
    try:
        if value.endswith("%"):
            return name, BandRate(rate=float(value[:-1]) / 100.0)
        return name, float(value)
    except ValidationError as e:  # a rate out of range: bandspec's own words (the floor and why)
        raise ConfigError(f"--band {text!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    except ValueError:
        raise ConfigError(f"--band {text!r}: a rate is {RATE_RANGE}, a threshold a number in [0, 1]") from None


def parse_set(args: argparse.Namespace) -> dict:
    """The fields `tenants set` changes, from its options; only the options given."""
    change: dict = {}
    if args.band or args.remove_band:
        given = [parse_band(b) for b in args.band]
        # A band named twice has no one meaning (set twice, or set and removed): refused, not "the last wins".
        names = [n for n, _ in given] + list(args.remove_band)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"tenants set: band {', '.join(map(repr, twice))} named more than once "
                              "(--band / --remove-band); name each band once")
        change["bands"] = (given, list(args.remove_band))
    if args.intents is not None:
        change["intents"] = [i.strip() for i in args.intents.split(",") if i.strip()]
    if args.default_intent is not None:
        change["default_intent"] = args.default_intent or None
    if args.output_topic is not None:
        change["output_topic"] = args.output_topic or None
    if getattr(args, "reuse_topic", False):
        if not args.output_topic:
            raise ConfigError("tenants set: --reuse-topic goes with --output-topic T")
        change["reuse_topic"] = True
    if args.from_time is not None:
        change["from_time"] = parse_event_time(args.from_time, "--from")
    if not change or set(change) == {"from_time"}:
        raise ConfigError("tenants set: nothing to change (give --band, --remove-band, --intents, --default-intent "
                          "or --output-topic)")
    return change


def _registry(settings: Settings) -> tuple[TenantRegistry, ReferenceCache]:
    from muse_stream.models.store import read_models

    models = read_models(settings)
    refs = ReferenceCache(lambda: models.references)
    return read_tenant_registry(settings, refs), refs


def current(settings: Settings, tenant_id: str) -> TenantConfig:
    cfg = read_tenant_registry(settings).tenants.get(tenant_id)
    if cfg is None:
        raise ConfigError(f"tenant {tenant_id!r} is not on {settings.topics.tenants}")
    return cfg


def merged(settings: Settings, reg: TenantRegistry, refs, tenant_id: str, *, bands=None, base_bands=None,
           **fields) -> TenantConfig:
    """The record `tenant_id` would have after the change, validated whole; a ConfigError names the field.
    Band options edit `base_bands` (default: the record's latest bands)."""
    prev = reg.tenants.get(tenant_id)
    if prev is None and set(fields) <= {"suspended"} and bands is None:
        raise ConfigError(f"tenant {tenant_id!r} is not on {settings.topics.tenants}")
    if prev is None and "intents" not in fields:
        raise ConfigError(f"tenant {tenant_id!r} is not on {settings.topics.tenants}: a new tenant needs --intents")
    data = prev.model_dump() if prev is not None else {"tenant_id": tenant_id}
    data.pop("band_timeline", None)  # put_tenants extends the timeline
    data.update(fields)
    if bands is not None:
        given, removed = bands
        now = dict(base_bands if base_bands is not None else data.get("bands") or {})
        for name in removed:
            if name not in now:
                raise ConfigError(f"tenant {tenant_id}: bands: no band {name!r} to remove (bands: {list(now)})")
            now.pop(name)
        now.update(given)
        data["bands"] = now
    try:
        cfg = TenantConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"tenant {tenant_id}: {first_error(e)}; nothing was written") from None
    problem = reg.record_problem(cfg)  # the workers' own rule: what they would refuse is never written
    if problem is not None:
        raise ConfigError(f"tenant {tenant_id}: {problem}; nothing was written")
    for intent in cfg.intents:
        for low, high in band_ties(cfg.bands, refs(intent)):
            raise ConfigError(f"tenant {tenant_id}: bands: {low} and {high} are one threshold on intent {intent}'s "
                              f"reference, so {low} would never be given; nothing was written")
    return cfg


def apply_change(settings: Settings, tenant_id: str, *, from_time: int | None = None,
                 **change) -> tuple[TenantConfig, list[BandPeriod]]:
    """Merge, validate and write one tenant's change; returns the record written and the pending band changes
    it replaced.

    A band change applies from `from_time` (default: the input's effective time, watermark + change lead) and
    replaces every band change the record holds from that time on, as an activation replaces a later
    scheduled one; the bands given edit the ones in force just before that time, so nothing of a replaced
    change carries over unseen."""
    reuse = change.pop("reuse_topic", False)
    reg, refs = _registry(settings)
    prev = reg.tenants.get(tenant_id)
    at = None
    if prev is not None and "bands" in change:
        at = _band_change_time(settings, from_time)
        change["base_bands"] = bands_in_force(prev, max(at - 1, 0))[0]
    cfg = merged(settings, reg, refs, tenant_id, **change)
    topic = settings.output_topic(cfg)
    if prev is None or settings.output_topic(prev) != topic:
        claimed = any(settings.output_topic(t) == topic for t in reg.tenants.values())  # the registry says more
        _check_no_collision(settings, tenant_id, topic,
                            reuse=reuse or claimed or topic == settings.topics.decisions_topic(tenant_id))
    [rec] = put_tenants(settings, [cfg], effective_at=at)
    kept = rec.band_periods()
    replaced = [] if prev is None else [p for p in prev.band_periods()[1:] if p not in kept]
    return rec, replaced


def _band_change_time(settings: Settings, from_time: int | None) -> int:
    """When a band change starts: `from_time`, refused when earlier than the default (the input's event-time
    watermark plus the change lead), since events before that are scored already, or may be before every
    worker reads the change, and the docs promise they keep their bands in every replay."""
    from muse_stream.kafka.watermark import effective_time

    earliest = effective_time(settings)
    if from_time is None:
        return earliest
    if from_time < earliest:
        raise ConfigError(f"tenants set: --from {utc(from_time)} is before {utc(earliest)} (epoch ms {earliest}), "
                          "the earliest a band change may start: earlier events are on the input topics already "
                          "and keep their bands in every replay; give --from at or after it, or leave --from "
                          "out; nothing was written")
    return from_time


def _check_no_collision(settings: Settings, tenant_id: str, topic: str, *, reuse: bool) -> None:
    """Refuse an output topic that collides with another topic already on the cluster (Kafka reads '.' and '_'
    alike in topic names): the workers could not create it, and would fail at every start. And, unless `reuse`,
    one that exists and holds records while no tenant claims it (the registry refuses another tenant's): most
    likely a removed tenant's decisions, whose readers would get this tenant's."""
    from muse_stream.kafka.topics import existing_topics

    existing = existing_topics(settings)  # names the address when no cluster answers
    clash = next((t for t in existing if t != topic and collision_key(t) == collision_key(topic)), None)
    if clash is not None:
        raise ConfigError(f"tenant {tenant_id}: output_topic: {topic!r} collides with the existing topic {clash!r} "
                          "(Kafka reads '.' and '_' alike in topic names); nothing was written")
    if topic not in existing:
        return
    _check_batches(settings, tenant_id, topic)
    if not reuse and _records_in(settings, topic):
        raise ConfigError(f"tenant {tenant_id}: output_topic: {topic!r} exists and holds records that no "
                          "tenant's record claims now (a removed tenant's decisions?): its readers would get "
                          f"{tenant_id}'s decisions. Give --reuse-topic to send them there anyway; nothing was "
                          "written")


def _check_batches(settings: Settings, tenant_id: str, topic: str) -> None:
    """A topic that takes smaller record batches than the workers send refuses decisions under load (librdkafka
    does not split a refused batch), so the tenant's decisions would become output_refused dead letters."""
    from muse_stream.kafka.topics import producer_batch_bytes, topic_setting

    limit, batch = topic_setting(settings, topic, "max.message.bytes"), producer_batch_bytes(settings)
    if limit is not None and int(limit) < batch:
        raise ConfigError(f"tenant {tenant_id}: output_topic: {topic!r} takes record batches of at most {limit} "
                          f"bytes (its max.message.bytes), and the workers send batches of up to {batch} bytes: "
                          f"under load its decisions would be refused. Raise its max.message.bytes to {batch} or "
                          "more, or give another topic; nothing was written")


def _records_in(settings: Settings, topic: str) -> int:
    from confluent_kafka import TopicPartition

    from muse_stream.kafka.clients import make_consumer, reader_config

    c = make_consumer(reader_config(settings), f"{topic} size reader")
    try:
        parts = c.list_topics(topic, timeout=15).topics[topic].partitions
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
                                          for p in parts))
    finally:
        c.close()


def remove(settings: Settings, tenant_id: str) -> TenantConfig:
    """Tombstone a suspended tenant: a live one is refused, so that no typo stops a tenant's scoring at once."""
    cfg = current(settings, tenant_id)
    if not cfg.suspended:
        raise ConfigError(f"tenant {tenant_id} is not suspended: `muse-stream tenants suspend {tenant_id}` first "
                          "(its events then go to dead letters), then remove it")
    return remove_tenant(settings, tenant_id)


def _state(cfg: TenantConfig) -> str:
    return "suspended" if cfg.suspended else "active"


def describe(settings: Settings, tenant_id: str) -> dict:
    """The tenant as `show` prints it: the record, its decision topic, and its bands on each intent."""
    reg, refs = _registry(settings)
    cfg = reg.tenants.get(tenant_id)
    if cfg is None:
        if tenant_id in reg.refused:  # only refused records: what `list` shows as "refused", and why
            return {"tenant_id": tenant_id, "record": None, "state": "refused", "decision_topic": None,
                    "bands": {}, "no_reference": {}, "band_timeline": [], "refused": reg.refused[tenant_id],
                    "refused_record": _as_shown(reg.refused_records.get(tenant_id))}
        raise ConfigError(f"tenant {tenant_id!r} is not on {settings.topics.tenants}")
    return {"tenant_id": tenant_id, "record": cfg.model_dump(mode="json"), "state": _state(cfg),
            "decision_topic": settings.output_topic(cfg),
            "bands": {i: describe_bands(cfg, i, refs(i)) for i in cfg.intents},
            "no_reference": {i: refs(i) is None for i in cfg.intents},
            "band_timeline": [{"from_time": p.from_time, "bands_text": format_bands(p.bands)}
                              for p in cfg.band_periods()],
            "refused": reg.refused.get(cfg.tenant_id),
            "refused_record": _as_shown(reg.refused_records.get(cfg.tenant_id))}


def _as_shown(raw: bytes | None) -> object:
    """A refused record as written: parsed when it is JSON, else its text (bytes that are not UTF-8 replaced)."""
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


def _bands_text(cfg: TenantConfig) -> str:
    """The bands in force now, then each change still ahead (`; from <UTC time>: ...`)."""
    now, ahead = bands_in_force(cfg)
    return format_bands(now) + "".join(f"; from {utc(p.from_time)}: {format_bands(p.bands)}" for p in ahead)


def utc(ms: int) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):  # past year 9999: the epoch ms says it
        return f"epoch ms {ms}"


def summaries(settings: Settings) -> list[dict]:
    """One row per tenant on the topic, and one per tenant whose only records were refused."""
    reg = read_tenant_registry(settings)
    rows = [{**cfg.model_dump(mode="json"), "state": _state(cfg), "decision_topic": settings.output_topic(cfg),
             "bands_text": _bands_text(cfg), "refused": reg.refused.get(tid)}
            for tid, cfg in sorted(reg.tenants.items())]
    for tid in sorted(set(reg.refused) - set(reg.tenants)):
        rows.append({"tenant_id": tid, "state": "refused", "intents": [], "bands": {}, "bands_text": None,
                     "decision_topic": None, "refused": reg.refused[tid]})
    return rows
