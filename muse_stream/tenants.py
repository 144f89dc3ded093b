"""The tenant registry: routing and threshold bands, read from the compacted tenants topic, and the writers
of tenant records.

Bands change by event time, as model activations do: a tenant record carries its band timeline (every
period's bands and the event time they apply from), so the live workers and any later replay give each
event the bands that were in force at its event time. Everything else on the record (intents, suspension,
output topic, pinned versions) applies as soon as a worker reads it.
"""

from __future__ import annotations

import logging

import numpy as np
import orjson
from confluent_kafka import Producer
from pydantic import ValidationError

from muse_stream.config import BandPeriod, Settings, TenantConfig
from muse_stream.errors import ConfigError, KafkaOpError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.table import TopicTable
from muse_stream.kafka.watermark import input_watermark

logger = logging.getLogger(__name__)


class Bands:
    """A tenant's bands as sorted arrays, so a batch of scores gets its bands with one searchsorted."""

    def __init__(self, bands: dict[str, float]) -> None:
        items = sorted(bands.items(), key=lambda kv: kv[1])
        self.thresholds = np.array([v for _, v in items], dtype=np.float64)
        self.names = ["approve"] + [k for k, _ in items]

    def assign(self, scores: np.ndarray) -> np.ndarray:
        """Index into `names` for each score: the highest band whose threshold the score reaches."""
        return np.searchsorted(self.thresholds, scores, side="right")


class BandTimeline:
    """A tenant's bands over event time: period k applies to event times in [starts[k-1], starts[k])."""

    def __init__(self, cfg: TenantConfig) -> None:
        periods = cfg.band_periods()
        self.starts = np.array([p.from_time for p in periods[1:]], dtype=np.int64)
        self.bands = [Bands(p.bands) for p in periods]

    def groups(self, event_times: np.ndarray) -> list[tuple[Bands, np.ndarray | None]]:
        if not len(self.starts):
            return [(self.bands[0], None)]
        t = np.asarray(event_times, dtype=np.int64)
        if not t.size:
            return [(self.bands[-1], None)]
        first, last = np.searchsorted(self.starts, [t.min(), t.max()], side="right").tolist()
        if first == last:  # the whole batch falls in one period: the usual case
            return [(self.bands[first], None)]
        period = np.searchsorted(self.starts, t, side="right")
        return [(self.bands[k], np.flatnonzero(period == k)) for k in np.unique(period).tolist()]


class TenantRegistry:
    """tenant_id -> TenantConfig, updated between batches from the tenants topic."""

    def __init__(self, settings: Settings, tenants: dict[str, TenantConfig] | None = None, *,
                 log_changes: bool = True) -> None:
        self._settings = settings
        self._log = logger.info if log_changes else logger.debug
        self.tenants: dict[str, TenantConfig] = dict(tenants or {})
        self._timelines = {t: BandTimeline(c) for t, c in self.tenants.items()}
        # The newest bands of each tenant (its timeline's last period), for telemetry and drift.
        self.bands: dict[str, Bands] = {t: tl.bands[-1] for t, tl in self._timelines.items()}
        self.version = 0  # bumped on every change, so callers can rebuild derived state cheaply

    def apply(self, key: bytes, value: bytes | None) -> TenantConfig | None:
        tid = key.decode(errors="replace")
        if value is None:
            if self.tenants.pop(tid, None) is not None:
                self.bands.pop(tid, None)
                self._timelines.pop(tid, None)
                self.version += 1
                self._log("tenant %s removed", tid)
            return None
        try:
            cfg = TenantConfig.model_validate(orjson.loads(value))
        except (orjson.JSONDecodeError, ValidationError) as e:
            logger.warning("tenant record %r refused, keeping the previous one: %s", tid, str(e).splitlines()[0])
            return None
        if cfg.tenant_id != tid:
            logger.warning("tenant record key %r names tenant %r; refused", tid, cfg.tenant_id)
            return None
        if self.tenants.get(tid) != cfg:
            self.tenants[tid] = cfg
            tl = self._timelines[tid] = BandTimeline(cfg)
            self.bands[tid] = tl.bands[-1]
            self.version += 1
            since = cfg.band_periods()[-1].from_time
            self._log("tenant %s updated: intents=%s bands=%s%s suspended=%s", tid, list(cfg.intents), cfg.bands,
                      f" from event time {since}" if since is not None else "", cfg.suspended)
        return cfg

    def band_groups(self, tenant_id: str, event_times: np.ndarray) -> list[tuple[Bands, np.ndarray | None]]:
        """The bands in force for each of a tenant's events, by event time: (bands, row indices) pairs, where
        None means every row. One pair unless a band change falls inside the batch's event times."""
        return self._timelines[tenant_id].groups(event_times)

    def output_topic(self, tenant_id: str) -> str:
        return self._settings.output_topic(self.tenants[tenant_id])


def read_tenants(settings: Settings) -> dict[str, TenantConfig]:
    table = TopicTable(settings, settings.topics.tenants)
    try:
        reg = TenantRegistry(settings, log_changes=False)
        for k, v in table.catch_up():
            reg.apply(k, v)
        return reg.tenants
    finally:
        table.close()


def with_bands_from(prev: TenantConfig | None, new: TenantConfig, from_time: int | None) -> TenantConfig:
    """The record that replaces `prev` with `new`: `new`'s fields, and `prev`'s band timeline with `new.bands`
    in force for events with event_time >= from_time (None or 0: for every event; periods from that time on
    are replaced, as an activation replaces a later scheduled one). A new tenant's bands apply from the start
    of time, or as the timeline it carries says."""
    if prev is None:
        periods = new.band_periods()
    elif prev.bands == new.bands:
        periods = prev.band_periods()
    elif not from_time:
        periods = (BandPeriod(bands=new.bands),)
    else:
        kept = tuple(p for p in prev.band_periods() if p.from_time is None or p.from_time < from_time)
        periods = kept if kept[-1].bands == new.bands else (*kept, BandPeriod(from_time=from_time, bands=new.bands))
    data = new.model_dump() | {"band_timeline": [p.model_dump() for p in periods] if len(periods) > 1 else []}
    return TenantConfig.model_validate(data)


def put_tenants(settings: Settings, tenants: list[TenantConfig], *, effective_at: int | None = None) -> list[TenantConfig]:
    """Write tenant records (a new tenant, new bands, a suspension) to the tenants topic; returns them.

    A band change applies by event time, in live scoring and in replays alike: events with event_time >= its
    effective time use the new bands, earlier events keep the bands they had. The effective time is
    `effective_at` (epoch ms) when given, else the input topics' event-time watermark now (see
    kafka/watermark.py): the change governs the events not on the topics yet. The record keeps every earlier
    period, so compaction loses no history. A new tenant's bands apply from the start of time. The other
    fields (intents, suspended, output topic, pinned versions) apply as soon as the workers read the record.
    """
    if effective_at is not None and effective_at < 0:
        raise ConfigError(f"effective_at {effective_at} is not an epoch-ms event time")
    return _write(settings, tenants, read_tenants(settings), effective_at)


def _write(settings: Settings, tenants: list[TenantConfig], present: dict[str, TenantConfig],
           effective_at: int | None) -> list[TenantConfig]:
    changes = any(t.tenant_id in present and present[t.tenant_id].bands != t.bands for t in tenants)
    if changes and effective_at is None:
        effective_at = input_watermark(settings)  # read once, only when some bands change
    records = [with_bands_from(present.get(t.tenant_id), t, effective_at) for t in tenants]
    producer = Producer(producer_config(settings))
    for t in records:
        producer.produce(settings.topics.tenants, orjson.dumps(t.model_dump(mode="json")), key=t.tenant_id.encode())
    if producer.flush(30) != 0:
        raise KafkaOpError(f"could not write tenant records to {settings.topics.tenants}")
    for t in records:
        if t.tenant_id in present and present[t.tenant_id].bands != t.bands:
            logger.info("tenant %s: bands %s from event time %s", t.tenant_id, t.bands,
                        t.band_periods()[-1].from_time or "0 (every event)")
    return records


def seed_tenants(settings: Settings) -> int:
    """Write the config's tenants that the topic does not have yet; operators' later changes are kept."""
    present = read_tenants(settings)
    missing = [t for t in settings.tenants if t.tenant_id not in present]
    if missing:
        _write(settings, missing, present, None)
    return len(missing)
