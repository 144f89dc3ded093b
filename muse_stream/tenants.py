"""The tenant registry: routing and threshold bands, read from the compacted tenants topic, and the writers
of tenant records.

Bands change by event time, as model activations do: a tenant record carries its band timeline (every
period's bands and the event time they apply from), so the live workers and any later replay give each
event the bands that were in force at its event time. Everything else on the record (intents, suspension,
output topic, pinned versions) applies as soon as a worker reads it. A band given as an alert rate becomes a
threshold per intent, through the intent's reference (models/bands.py): the registry is handed a lookup
intent -> ReferenceDistribution, and resolves each (band period, intent) once.

Isolation is a rule of every worker, not of the writer: a record whose output topic is not its tenant's own
(another tenant's decision topic, an input or control topic, a shadow or replay topic), or that names an intent
the configuration does not, is refused when it is read, with a warning naming the field and why, and the
tenant's previous record stays in force. Writers (`put_tenants`, `muse-stream tenants set`) refuse such a record
before writing it with the same rule (TenantRegistry.record_problem), each tenant under its own fence.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson
from pydantic import ValidationError

from muse_stream.bandspec import BandPeriod, BandRate
from muse_stream.config import ID_RE, Settings, TenantConfig, error_text
from muse_stream.errors import ConfigError
from muse_stream.kafka.table import fenced_write, read_table
from muse_stream.kafka.watermark import effective_time
from muse_stream.models.bands import Bands, ReferenceLookup, band_table, format_bands, resolve_bands
from muse_stream.models.quantile import ReferenceDistribution

logger = logging.getLogger(__name__)
# The bytes of a refused record kept for `tenants show`: enough for any real record, bounded for a hostile one.
REFUSED_KEPT = 64 * 1024


class BandTimeline:
    """A tenant's bands over event time: period k applies to event times in [starts[k-1], starts[k]). Rate bands
    resolve per intent, through the intent's reference, once per reference (it never moves)."""

    def __init__(self, cfg: TenantConfig) -> None:
        periods = cfg.band_periods()
        self.starts = np.array([p.from_time for p in periods[1:]], dtype=np.int64)
        self.specs = [p.bands for p in periods]
        self.has_rates = any(isinstance(s, BandRate) for p in periods for s in p.bands.values())
        self._resolved: dict[str, tuple[ReferenceDistribution | None, list[Bands]]] = {}

    def bands(self, intent: str, reference: ReferenceDistribution | None) -> list[Bands]:
        """Each period's Bands on `intent`'s reference scale."""
        hit = self._resolved.get(intent)
        if hit is None or hit[0] is not reference:
            hit = self._resolved[intent] = (reference, [Bands(resolve_bands(s, reference)) for s in self.specs])
        return hit[1]

    def groups(self, bands: list[Bands], event_times: np.ndarray) -> list[tuple[Bands, np.ndarray | None]]:
        if not len(self.starts):
            return [(bands[0], None)]
        t = np.asarray(event_times, dtype=np.int64)
        if not t.size:
            return [(bands[-1], None)]
        first, last = np.searchsorted(self.starts, [t.min(), t.max()], side="right").tolist()
        if first == last:  # the whole batch falls in one period: the usual case
            return [(bands[first], None)]
        period = np.searchsorted(self.starts, t, side="right")
        return [(bands[k], np.flatnonzero(period == k)) for k in np.unique(period).tolist()]


def first_error(e: ValidationError) -> str:
    """`field: why` of a record's first validation error."""
    return error_text(e, top="record")


def collision_key(topic: str) -> str:
    """The form in which Kafka compares topic names for collisions: '.' and '_' are the same character."""
    return topic.replace(".", "_")


class TenantRegistry:
    """tenant_id -> TenantConfig, updated between batches from the tenants topic."""

    def __init__(self, settings: Settings, tenants: dict[str, TenantConfig] | None = None, *,
                 log_changes: bool = True, references: ReferenceLookup | None = None) -> None:
        self._settings = settings
        # intent -> its reference distribution (None while it has none), to resolve rate bands; the worker
        # passes a ReferenceCache over its ModelRegistry's references.
        self._references: ReferenceLookup = references or (lambda intent: None)
        self._log = logger.info if log_changes else logger.debug
        self._warn = logger.warning if log_changes else logger.debug
        self.tenants: dict[str, TenantConfig] = dict(tenants or {})
        self._timelines = {t: BandTimeline(c) for t, c in self.tenants.items()}
        self._unresolved_warned: set[tuple[str, str]] = set()
        # output topic -> the tenant whose it is: the first claim holds, a later one is refused.
        self._claims: dict[str, str] = {settings.output_topic(c): t for t, c in self.tenants.items()}
        self.refused: dict[str, str] = {}  # tenant -> why its latest refused record was refused
        # tenant -> that record's bytes (at most REFUSED_KEPT of them), so `tenants show` can print what was refused
        self.refused_records: dict[str, bytes] = {}
        self.refusals = 0
        self.version = 0  # bumped on every change, so callers can rebuild derived state cheaply

    def apply(self, key: bytes, value: bytes | None) -> TenantConfig | None:
        """Apply one record of the tenants topic; returns the tenant's config in force after it (None when
        removed or refused)."""
        tid = key.decode(errors="replace")
        if value is None:
            cfg = self.tenants.pop(tid, None)
            # The tombstone is the key's latest record now: an earlier refused one is no longer news.
            self.refused.pop(tid, None)
            self.refused_records.pop(tid, None)
            if cfg is not None:
                self._claims.pop(self._settings.output_topic(cfg), None)
                self._timelines.pop(tid, None)
                self.version += 1
                self._log("tenant %s removed", tid)
            return None
        try:
            cfg = TenantConfig.model_validate(orjson.loads(value))
        except orjson.JSONDecodeError as e:
            return self._refuse(tid, value, f"record: not JSON ({e})")
        except ValidationError as e:
            return self._refuse(tid, value, first_error(e))
        if cfg.tenant_id != tid:
            return self._refuse(tid, value, f"tenant_id: {cfg.tenant_id!r} is not the record's key")
        problem = self.record_problem(cfg)
        if problem is not None:
            return self._refuse(tid, value, problem)
        self.refused.pop(tid, None)
        self.refused_records.pop(tid, None)
        prev = self.tenants.get(tid)
        if prev != cfg:
            if prev is not None:
                self._claims.pop(self._settings.output_topic(prev), None)
            self._claims[self._settings.output_topic(cfg)] = tid
            self.tenants[tid] = cfg
            self._timelines[tid] = BandTimeline(cfg)  # int64 times: bandspec bounds them by MAX_EVENT_TIME
            self.version += 1
            since = cfg.band_periods()[-1].from_time
            self._log("tenant %s updated: intents=%s bands=%s%s suspended=%s", tid, list(cfg.intents),
                      format_bands(cfg.bands),
                      f" from event time {since}" if since is not None else "", cfg.suspended)
        return cfg

    def _refuse(self, tid: str, value: bytes, why: str) -> None:
        self.refused[tid] = why
        self.refused_records[tid] = value[:REFUSED_KEPT]
        self.refusals += 1
        kept = "its previous record stays in force" if tid in self.tenants else "the tenant stays unknown"
        self._warn("tenant record %r refused (%s): %s", tid[:100], kept, why,
                   extra={"fields": {"event": "tenant_refused", "tenant": tid[:100], "reason": why}})

    def record_problem(self, cfg: TenantConfig) -> str | None:
        """`field: why` when a well-formed record must still be refused, else None: the one rule of the workers
        (apply) and of every writer (put_tenants, `muse-stream tenants set`), so that a record one accepts the
        other never refuses."""
        problem = intents_problem(self._settings, cfg)
        if problem is not None:
            return f"intents: {problem}"
        problem = self.output_topic_problem(cfg)
        return None if problem is None else f"output_topic: {problem}"

    def output_topic_problem(self, cfg: TenantConfig) -> str | None:
        """Why `cfg`'s output topic is not its tenant's own, or None when it is. Its own is a topic that is no
        other tenant's decision topic (claimed, or `<decisions_prefix><other tenant>`), no input, models,
        tenants, dead-letter, labels, shadow, replay, state changelog or Kafka-internal topic. Kafka treats '.'
        and '_' in topic names alike (two names that differ only there collide), so every comparison is made on
        names with '.' read as '_'. A topic two tenants claim is the first one's."""
        t = self._settings.topics
        topic = self._settings.output_topic(cfg)
        key = collision_key(topic)

        def alike(name: str) -> str:
            return "" if name == topic else f" (Kafka reads '.' and '_' alike: it collides with {name!r})"

        if topic.startswith("__"):
            return f"{topic!r} is a Kafka-internal topic"
        control = {name: "an input topic" for name in t.inputs}
        control |= {t.models: "the models topic", t.tenants: "the tenants topic",
                    t.deadletter: "the dead-letter topic", t.labels: "the labels topic"}
        for name, what in control.items():
            if collision_key(name) == key:
                return f"{topic!r} is {what}{alike(name)}"
        if key.startswith(collision_key(t.shadow_prefix)):
            return f"{topic!r} is a shadow topic (shadow_prefix {t.shadow_prefix!r})"
        if "replay" in topic.split("."):
            return f"{topic!r} is in a replay namespace (a 'replay' part in its name)"
        if key.endswith("_state-changelog"):
            return f"{topic!r} is a state changelog topic"
        prefix = collision_key(t.decisions_prefix)
        other = key[len(prefix):] if key.startswith(prefix) else None
        if other is not None and other != cfg.tenant_id and ID_RE.fullmatch(other):
            return f"{topic!r} is tenant {other!r}'s decision topic{alike(t.decisions_topic(other))}"
        for claimed, owner in self._claims.items():
            if owner != cfg.tenant_id and collision_key(claimed) == key:
                return f"{topic!r} is already tenant {owner!r}'s output topic{alike(claimed)}"
        return None

    def pinned_versions(self) -> set[tuple[str, int]]:
        """Every (intent, version) a tenant pins: the model registry keeps them loaded."""
        return {(i, v) for cfg in self.tenants.values() for i, v in cfg.pinned_versions.items()}

    def band_groups(self, tenant_id: str, intent: str,
                    event_times: np.ndarray) -> list[tuple[Bands, np.ndarray | None]]:
        """The bands in force for each of a tenant's events of one intent, by event time, as thresholds on the
        intent's reference scale: (bands, row indices) pairs, where None means every row. One pair unless a
        band change falls inside the batch's event times."""
        tl = self._timelines[tenant_id]
        return tl.groups(self._bands_of(tl, tenant_id, intent), event_times)

    def _bands_of(self, tl: BandTimeline, tenant_id: str, intent: str) -> list[Bands]:
        ref = self._references(intent)
        if ref is None and tl.has_rates and (tenant_id, intent) not in self._unresolved_warned:
            self._unresolved_warned.add((tenant_id, intent))
            self._warn("tenant %s: intent %s has no reference distribution yet, so its rate bands have no "
                       "threshold and are left out (nothing was published for the intent)", tenant_id, intent)
        return tl.bands(intent, ref)

    def describe_bands(self, tenant_id: str, intent: str) -> list[dict]:
        """describe_bands of the tenant's current record on `intent`, with the registry's reference."""
        return describe_bands(self.tenants[tenant_id], intent, self._references(intent))

    def output_topic(self, tenant_id: str) -> str:
        return self._settings.output_topic(self.tenants[tenant_id])


def intents_problem(settings: Settings, cfg: TenantConfig) -> str | None:
    """Why `cfg` names an intent the configuration does not (Settings.knows_intent), or None."""
    unknown = [i for i in cfg.intents if not settings.knows_intent(i)]
    if not unknown:
        return None
    return f"{unknown} are not in the config's intents {sorted(i.name for i in settings.intents)}"


def bands_in_force(cfg: TenantConfig, at_ms: int | None = None) -> tuple[dict, list[BandPeriod]]:
    """The bands in force at event time `at_ms` (default: now, which live events' times follow), and the
    periods that start later: a change written with a time ahead is not in force yet, though the record's
    `bands` already holds it."""
    at = int(time.time() * 1000) if at_ms is None else at_ms
    periods = cfg.band_periods()
    k = max((i for i, p in enumerate(periods) if p.from_time is None or p.from_time <= at), default=0)
    return periods[k].bands, list(periods[k + 1:])


def describe_bands(cfg: TenantConfig, intent: str, reference: ReferenceDistribution | None) -> list[dict]:
    """The tenant's bands in force now as they act on one intent: one dict per band, lowest threshold first,
    with name, spec (as given: a threshold or {"rate": r}), text (`1%` or `0.995`), threshold (on the intent's
    reference scale) and reference_rate (the share of the intent's reference population at or above it).
    threshold is None for a rate band while the intent has no reference; reference_rate None without one."""
    if intent not in cfg.intents:
        raise ConfigError(f"tenant {cfg.tenant_id} does not use intent {intent!r} (intents: {list(cfg.intents)})")
    return band_table(bands_in_force(cfg)[0], reference)


def _registry(settings: Settings, rows) -> TenantRegistry:
    reg = TenantRegistry(settings, log_changes=False)
    for k, v in rows:
        reg.apply(k, v)
    return reg


def read_tenant_registry(settings: Settings, references: ReferenceLookup | None = None) -> TenantRegistry:
    """The tenants topic as a quiet registry (refusals in `refused`, not logged: every command reads the whole
    topic, and an old refused record is news only once, to the workers)."""
    reg = _registry(settings, read_table(settings, settings.topics.tenants))
    if references is not None:
        reg._references = references
    return reg


def read_tenants(settings: Settings) -> dict[str, TenantConfig]:
    return read_tenant_registry(settings).tenants


def with_bands_from(prev: TenantConfig | None, new: TenantConfig, from_time: int | None) -> TenantConfig:
    """The record that replaces `prev` with `new`: `new`'s fields, and `prev`'s band timeline with `new.bands`
    in force for events with event_time >= from_time, and the periods from that time on replaced, as an
    activation replaces a later scheduled one (0: for every event; None: for every event, or the timeline as
    it is when `new` has `prev`'s latest bands). A new tenant's bands apply from the start of time, or as the
    timeline it carries says."""
    if prev is None:
        periods = new.band_periods()
    elif prev.bands == new.bands and from_time is None:
        periods = prev.band_periods()
    elif not from_time:
        periods = (BandPeriod(bands=new.bands),)
    else:
        kept = tuple(p for p in prev.band_periods() if p.from_time is None or p.from_time < from_time)
        periods = kept if kept[-1].bands == new.bands else (*kept, BandPeriod(from_time=from_time, bands=new.bands))
    data = new.model_dump() | {"band_timeline": [p.model_dump() for p in periods] if len(periods) > 1 else []}
    return TenantConfig.model_validate(data)


def tenant_transactional_id(settings: Settings, tenant_id: str) -> str:
    """The transactional id every writer of one tenant's record uses, so that they fence each other."""
    return f"muse-tenants-{settings.topics.tenants}-{tenant_id}"


def put_tenants(settings: Settings, tenants: list[TenantConfig], *, effective_at: int | None = None) -> list[TenantConfig]:
    """Write tenant records (a new tenant, new bands, a suspension) to the tenants topic; returns them.

    A band change applies by event time, in live scoring and in replays alike: events with event_time >= its
    effective time use the new bands, earlier events keep the bands they had. The effective time is
    `effective_at` (epoch ms) when given, else the input topics' event-time watermark now (see
    kafka/watermark.py): the change governs the events not on the topics yet. The record keeps every earlier
    period, so compaction loses no history. A new tenant's bands apply from the start of time. The other
    fields (intents, suspended, output topic, pinned versions) apply as soon as the workers read the record.

    Each tenant is written under its own fence (init, re-read, write; see kafka/table.fenced_write), so two
    writers changing one tenant never lose each other's band periods. A record the workers would refuse (an
    output topic that is not the tenant's own, an intent the config does not name) is a ConfigError, and nothing of that tenant is written.
    """
    if effective_at is not None and effective_at < 0:
        raise ConfigError(f"effective_at {effective_at} is not an epoch-ms event time")
    return _write(settings, tenants, effective_at)


def _write(settings: Settings, tenants: list[TenantConfig], effective_at: int | None, *,
           only_missing: bool = False) -> list[TenantConfig]:
    when: list[int | None] = [effective_at]

    def effective() -> int:
        if when[0] is None:
            when[0] = effective_time(settings)  # read once, only when some bands change
        return when[0]

    def step_for(new: TenantConfig):
        def step(rows) -> tuple[list[tuple[bytes, bytes]], tuple[TenantConfig | None, TenantConfig | None]]:
            reg = _registry(settings, rows)
            prev = reg.tenants.get(new.tenant_id)
            if only_missing and prev is not None:
                return [], (None, prev)
            # An explicit time applies even when the bands equal the record's latest: they may be a pending
            # period's, and the change moves them to that time (replacing what follows it).
            changes = prev is not None and (prev.bands != new.bands or effective_at is not None)
            rec = with_bands_from(prev, new, effective() if changes else None)
            problem = reg.record_problem(rec)
            if problem is not None:
                raise ConfigError(f"tenant {rec.tenant_id}: {problem}; nothing was written")
            return [(rec.tenant_id.encode(), orjson.dumps(rec.model_dump(mode="json")))], (rec, prev)
        return step

    written = []
    for new in tenants:
        rec, prev = fenced_write(settings, settings.topics.tenants, tenant_transactional_id(settings, new.tenant_id),
                                 step_for(new), what=f"tenant {new.tenant_id}")
        if rec is None:
            continue
        if rec.output_topic is not None and (prev is None or settings.output_topic(prev) != settings.output_topic(rec)):
            _check_claim(settings, rec, prev)
        written.append(rec)
        if prev is not None and prev.bands != rec.bands:
            logger.info("tenant %s: bands %s from event time %s", rec.tenant_id, format_bands(rec.bands),
                        rec.band_periods()[-1].from_time or "0 (every event)")
    return written


def _check_claim(settings: Settings, rec: TenantConfig, prev: TenantConfig | None) -> None:
    """After writing a record that claims an output topic (two tenants' writers are not fenced from each other):
    read back as the workers do; if they refuse it, put the previous record back (or none) and say so."""
    reg = _registry(settings, read_table(settings, settings.topics.tenants))
    if reg.tenants.get(rec.tenant_id) == rec:
        return
    tid, mine = rec.tenant_id, orjson.dumps(rec.model_dump(mode="json"))
    back = None if prev is None else orjson.dumps(prev.model_dump(mode="json"))

    def step(rows):  # only while this record is still the tenant's latest: a newer one stands
        latest = next((v for k, v in reversed(rows) if k == tid.encode()), None)
        return ([(tid.encode(), back)], True) if latest == mine else ([], False)

    undone = fenced_write(settings, settings.topics.tenants, tenant_transactional_id(settings, tid), step,
                          what=f"tenant {tid}")
    then = ("the previous record was put back" if prev is not None else "the tenant was not added") if undone \
        else "a newer record of the tenant stands"
    raise ConfigError(f"tenant {tid}: {reg.refused.get(tid, 'another record replaced it')} (claimed by a command "
                      f"that ran at the same time); {then}")


def remove_tenant(settings: Settings, tenant_id: str) -> TenantConfig:
    """Write a tombstone for the tenant, under its fence; returns the record it removed. From then on its events
    are dead-lettered as unknown_tenant, and once the topic compacts its band history is gone, so a replay of
    its earlier events dead-letters them too. Its decision topic is left as it is."""

    def step(rows) -> tuple[list[tuple[bytes, bytes | None]], TenantConfig | None]:
        prev = _registry(settings, rows).tenants.get(tenant_id)
        return ([(tenant_id.encode(), None)] if prev is not None else []), prev

    prev = fenced_write(settings, settings.topics.tenants, tenant_transactional_id(settings, tenant_id), step,
                        what=f"tenant {tenant_id}")
    if prev is None:
        raise ConfigError(f"tenant {tenant_id!r} is not on {settings.topics.tenants}; nothing was written")
    return prev


def seed_tenants(settings: Settings) -> int:
    """Write the config's tenants that the topic does not have yet; operators' later changes are kept.
    Returns how many were written."""
    present = read_tenants(settings)
    missing = [t for t in settings.tenants if t.tenant_id not in present]
    return len(_write(settings, missing, None, only_missing=True)) if missing else 0
