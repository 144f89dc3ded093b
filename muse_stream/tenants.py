"""The tenant registry: routing and threshold bands, read from the compacted tenants topic."""

from __future__ import annotations

import logging

import numpy as np
import orjson
from confluent_kafka import Producer
from pydantic import ValidationError

from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import KafkaOpError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.table import TopicTable

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


class TenantRegistry:
    """tenant_id -> TenantConfig, updated between batches from the tenants topic."""

    def __init__(self, settings: Settings, tenants: dict[str, TenantConfig] | None = None, *,
                 log_changes: bool = True) -> None:
        self._settings = settings
        self._log = logger.info if log_changes else logger.debug
        self.tenants: dict[str, TenantConfig] = dict(tenants or {})
        self.bands: dict[str, Bands] = {t: Bands(c.bands) for t, c in self.tenants.items()}
        self.version = 0  # bumped on every change, so callers can rebuild derived state cheaply

    def apply(self, key: bytes, value: bytes | None) -> TenantConfig | None:
        tid = key.decode(errors="replace")
        if value is None:
            if self.tenants.pop(tid, None) is not None:
                self.bands.pop(tid, None)
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
            self.bands[tid] = Bands(cfg.bands)
            self.version += 1
            self._log("tenant %s updated: intents=%s bands=%s suspended=%s", tid, list(cfg.intents), cfg.bands,
                        cfg.suspended)
        return cfg

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


def put_tenants(settings: Settings, tenants: list[TenantConfig]) -> None:
    """Write tenant records (a new tenant, new thresholds, a suspension) to the tenants topic."""
    producer = Producer(producer_config(settings))
    for t in tenants:
        producer.produce(settings.topics.tenants, orjson.dumps(t.model_dump(mode="json")), key=t.tenant_id.encode())
    if producer.flush(30) != 0:
        raise KafkaOpError(f"could not write tenant records to {settings.topics.tenants}")


def seed_tenants(settings: Settings) -> int:
    """Write the config's tenants that the topic does not have yet; operators' later changes are kept."""
    present = read_tenants(settings)
    missing = [t for t in settings.tenants if t.tenant_id not in present]
    if missing:
        put_tenants(settings, missing)
    return len(missing)
