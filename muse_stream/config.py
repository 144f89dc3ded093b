"""Settings: read once from a TOML file at the edge (the CLI), validated into frozen pydantic models."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from muse_stream.bandspec import BandPeriod, BandSet
from muse_stream.deployspec import DeploySettings
from muse_stream.errors import ConfigError
from muse_stream.featurespec import StateSpec
from muse_stream.frozen import Frozen
from muse_stream.tomlwrite import dump_toml  # noqa: F401 - written here, kept under config's name

# Shipped inside the package, so an installed muse-stream runs from any folder; config/muse.toml links here.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "defaults" / "muse.toml"
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")  # fullmatch: "$" would let a trailing newline through
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch; a tenant or intent id (tenants.py reads topic names with it)
_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,185}")  # fullmatch


def _check_topic(name: str) -> str:
    if not _TOPIC_RE.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"{name!r} is not a valid Kafka topic name")
    return name


class KafkaSettings(Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Extra librdkafka settings (security, timeouts) merged into every client; never logged.
    client: dict[str, str | int | float | bool] = Field(default_factory=dict)


class TopicSettings(Frozen):
    events: str = "muse.events"
    # More input topics the workers read besides `events` (the group subscribes to all of them).
    extra_inputs: tuple[str, ...] = ()
    events_partitions: int = Field(8, ge=1, le=10_000)
    models: str = "muse.models"
    tenants: str = "muse.tenants"
    deadletter: str = "muse.deadletter"
    labels: str = "muse.labels"  # {event_id, label, label_time}: read by `deploy`'s recall guard when it exists
    decisions_prefix: str = "muse.decisions."
    shadow_prefix: str = "muse.shadow."
    decisions_partitions: int = Field(4, ge=1, le=10_000)
    # None: chosen from the cluster when topics are created (min(3, brokers); kafka/topics.py).
    replication_factor: int | None = Field(None, ge=1, le=16)

    @field_validator("events", "models", "tenants", "deadletter", "labels")
    @classmethod
    def _topic(cls, v: str) -> str:
        return _check_topic(v)

    @field_validator("decisions_prefix", "shadow_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        # Room for the longest tenant id or intent name (64) within Kafka's 249.
        if not _PREFIX_RE.fullmatch(v):
            raise ValueError(f"{v!r}: a topic prefix is 1-185 letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _apart(self) -> TopicSettings:
        d, s = self.decisions_prefix, self.shadow_prefix
        if d.startswith(s) or s.startswith(d):
            raise ValueError(f"decisions_prefix {d!r} and shadow_prefix {s!r} overlap: one topic could be both")
        return self

    def decisions_owner(self, topic: str) -> str | None:
        """The tenant whose default decision topic `topic` is (whether that tenant exists or not), else None."""
        if not topic.startswith(self.decisions_prefix):
            return None
        rest = topic[len(self.decisions_prefix):]
        return rest if ID_RE.fullmatch(rest) else None

    @field_validator("extra_inputs")
    @classmethod
    def _inputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_topic(t) for t in v)

    @property
    def inputs(self) -> list[str]:
        return [self.events, *(t for t in self.extra_inputs if t != self.events)]

    def decisions_topic(self, tenant_id: str) -> str:
        return f"{self.decisions_prefix}{tenant_id}"

    def shadow_topic(self, intent: str) -> str:
        """Where shadow scores of an intent go: (incumbent score, shadow raw score) pairs, never to a tenant."""
        return f"{self.shadow_prefix}{intent}"


class BatchSettings(Frozen):
    max_events: int = Field(2000, ge=1, le=1_000_000)
    max_wait_ms: int = Field(50, ge=0, le=60_000)


class RuntimeSettings(Frozen):
    group_id: str = "muse-stream"
    processing_guarantee: Literal["exactly-once", "at-least-once"] = "exactly-once"
    workers: int = Field(1, ge=1, le=256)
    # Transactions commit at most this often; batches in between share one transaction.
    commit_interval_ms: int = Field(100, ge=0, le=600_000)
    transactional_id_prefix: str = "muse-stream"
    # Entity state (featurespec.py): one RocksDB store per assigned partition under <state_dir>/<group>/slot-N.
    state_dir: str = Field("state", min_length=1)
    transaction_timeout_ms: int = Field(60_000, ge=1000, le=900_000)
    # Feature values beyond this magnitude (or non-finite) are bad input, sent to the dead-letter topic.
    max_abs_feature: float = Field(1e30, gt=0)
    max_event_bytes: int = Field(1_000_000, ge=64)
    # A change made "now" (an immediate activation, a band change without a time) takes effect this far past
    # the input's event-time watermark, so every worker has read it before the first event it governs is
    # scored, and live and replay agree (see kafka/watermark.py).
    change_lead_ms: int = Field(5_000, ge=0, le=3_600_000)
    # The `run` supervisor. A slot that fails more often than this within a minute is a crash loop, not a
    # blip: the supervisor stops every worker and exits non-zero rather than restart it forever.
    max_restarts_per_minute: int = Field(5, ge=0, le=1000)
    # A worker whose loop has not turned (no heartbeat) for this long is stuck, e.g. inside a librdkafka call
    # that outlives its timeout: it is killed and restarted. Longer than any wait the loop itself makes.
    stall_after_s: float = Field(60.0, ge=1.0, le=3600.0)
    # Added to stall_after_s before a worker's first heartbeat: start-up (imports, init_transactions, catching
    # up the models topic) may take longer than one loop turn.
    startup_grace_s: float = Field(60.0, ge=0.0, le=3600.0)
    # A worker that has taken no event for this long while the group's input waits and its committed offsets
    # stand still (worker/progress.py) ends, to be restarted with new clients: a consumer that never reached a
    # restarted broker again turns its loop, so the stall check above does not see it.
    stuck_after_s: float = Field(120.0, ge=5.0, le=3600.0)
    # After SIGTERM, workers get this long to finish or abort their transaction before SIGKILL. At most 25 s, so
    # `run` always ends within 30 s of SIGTERM.
    shutdown_grace_s: float = Field(20.0, ge=0.5, le=25.0)

    @field_validator("group_id")
    @classmethod
    def _group(cls, v: str) -> str:
        # It names the state changelog topics (<group>.<input>.state-changelog) and the state folder
        # (<state_dir>/<group>): a topic-name character set, so neither can go astray ("../x", "a/b").
        if not _PREFIX_RE.fullmatch(v) or v in {".", ".."}:
            raise ValueError("group_id must be 1-185 letters, digits, '.', '_' or '-' (it names topics and a folder)")
        return v


class TenantConfig(Frozen):
    """A tenant's routing and thresholds; also the value of its record on the tenants topic."""

    tenant_id: str
    intents: tuple[str, ...] = Field(min_length=1)
    default_intent: str | None = None
    # Named bands, a threshold on the reference scale or {rate = r}: the highest reached, else "approve".
    bands: BandSet = Field(default_factory=dict)
    output_topic: str | None = None
    pinned_versions: dict[str, int] = Field(default_factory=dict)
    suspended: bool = False
    # Every band change, in event time (written by tenants.put_tenants; users leave it out): the record carries
    # the whole history, so compaction of the tenants topic loses none of it and replays use the bands that
    # were in force. Its last period's bands are `bands`. Empty: `bands` for every event time.
    band_timeline: tuple[BandPeriod, ...] = ()

    @field_validator("tenant_id")
    @classmethod
    def _tid(cls, v: str) -> str:
        if not ID_RE.fullmatch(v):
            raise ValueError("tenant_id must be 1-64 letters, digits, '_' or '-'")
        return v

    @field_validator("band_timeline")
    @classmethod
    def _timeline(cls, v: tuple[BandPeriod, ...]) -> tuple[BandPeriod, ...]:
        if v and v[0].from_time is not None:
            raise ValueError("a band timeline starts with a period from the start of time")
        times = [p.from_time for p in v[1:]]
        if any(t is None for t in times) or times != sorted(set(times)):
            raise ValueError("band timeline periods must be in strictly increasing from_time")
        return v

    @field_validator("output_topic")
    @classmethod
    def _out(cls, v: str | None) -> str | None:
        return None if v is None else _check_topic(v)

    @model_validator(mode="after")
    def _default(self) -> TenantConfig:
        bad = [i for i in self.intents if not ID_RE.fullmatch(i)]
        if bad:
            raise ValueError(f"intents {bad} are not intent names (1-64 letters, digits, '_' or '-')")
        if self.default_intent is not None and self.default_intent not in self.intents:
            raise ValueError(f"default_intent {self.default_intent!r} is not among intents {list(self.intents)}")
        for intent in self.pinned_versions:
            if intent not in self.intents:
                raise ValueError(f"pinned intent {intent!r} is not among intents {list(self.intents)}")
            if self.pinned_versions[intent] < 1:
                raise ValueError(f"pinned_versions.{intent}: versions start at 1")
        if self.band_timeline and self.band_timeline[-1].bands != self.bands:
            raise ValueError("bands must be the band timeline's last period's bands")
        return self

    def band_periods(self) -> tuple[BandPeriod, ...]:
        """The band timeline, never empty: one period from the start of time when the record has none."""
        return self.band_timeline or (BandPeriod(bands=self.bands),)

    def resolve_intent(self, intent: str | None) -> str | None:
        if intent is None:
            return self.default_intent or (self.intents[0] if len(self.intents) == 1 else None)
        return intent


class IntentConfig(Frozen):
    name: str
    # An event feature the active model does not know: "reject" dead-letters the event (unknown_feature,
    # naming the field), "ignore" scores it without the field and counts the field in a metric.
    unknown_features: Literal["reject", "ignore"] = "reject"
    # Decisions in a band other than approve carry this many top contributing features (0: none).
    reason_codes: int = Field(default=3, ge=0, le=20)
    # Entity features, de-duplication and the partition-key check (featurespec.py); None: stateless.
    state: StateSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ID_RE.fullmatch(v):
            raise ValueError("intent name must be 1-64 letters, digits, '_' or '-'")
        return v


class DriftSettings(Frozen):
    """When a tenant's live reference-scale scores have moved away from the intent's reference."""

    enabled: bool = True
    window_s: int = Field(900, ge=10, le=7 * 86400)
    min_events: int = Field(2000, ge=100)  # fewer scores in the window: no verdict
    psi_bins: int = Field(10, ge=2, le=100)  # equal-mass bins under the reference
    psi_max: float = Field(0.2, gt=0)
    # Observed / reference-implied alert rate at a band outside [1/r, r] is drift...
    alert_ratio_max: float = Field(2.0, gt=1)
    # ...judged only where the reference implies at least this many alerts in the window.
    min_expected_alerts: float = Field(50.0, gt=0)


class TelemetrySettings(Frozen):
    # Off: no metrics, traces, drift or endpoint at all (the benchmark measures what they cost).
    enabled: bool = True
    # Worker slot N serves /metrics, /healthz, /readyz and /status on metrics_port + N; 0 = no endpoint.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # "0.0.0.0" to be scraped from other hosts
    log_format: Literal["plain", "json"] = "plain"
    # OTLP/HTTP collector, e.g. "http://127.0.0.1:4318": metrics are pushed there too, and sampled traces.
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, str] = Field(default_factory=dict)  # never logged
    otlp_interval_ms: int = Field(10_000, ge=100, le=3_600_000)
    trace_sample_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of batches traced; needs otlp_endpoint
    alert_window_s: int = Field(300, ge=10, le=7 * 86400)  # sliding window of the per-tenant alert rates
    update_interval_s: float = Field(5.0, gt=0, le=300)  # windows, lag and drift are evaluated this often
    stall_after_s: float = Field(120.0, gt=0)  # /healthz fails when the loop has not turned for this long
    drift: DriftSettings = Field(default_factory=DriftSettings)

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("otlp_endpoint must be an http(s):// URL")
        return v.rstrip("/") if v else None


class Settings(Frozen):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    intents: tuple[IntentConfig, ...] = ()
    tenants: tuple[TenantConfig, ...] = ()
    deploy: DeploySettings = Field(default_factory=DeploySettings)

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        for what, ids in (("tenant ids", [t.tenant_id for t in self.tenants]),
                          ("intent names", [i.name for i in self.intents])):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"{what} repeated: {dup}")
        for t in self.tenants:
            unknown = [i for i in t.intents if not self.knows_intent(i)]
            if unknown:
                raise ValueError(f"tenant {t.tenant_id!r} names unknown intents {unknown}")
        return self

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        # Two roles on one topic mix records that cannot be told apart, and two CreateTopics requests for one
        # name crash librdkafka: refuse it here, naming both fields, before any command touches Kafka.
        t = self.topics
        owner: dict[str, str] = {}

        def claim(field: str, topic: str) -> None:
            if topic in owner:
                raise ValueError(f"{field}: {json.dumps(topic)} is also {owner[topic]}")
            owner[topic] = field

        claim("topics.events", t.events)
        for i, topic in enumerate(t.extra_inputs):
            claim(f"topics.extra_inputs[{i}]", topic)
        for name in ("models", "tenants", "deadletter", "labels"):
            claim(f"topics.{name}", getattr(t, name))
        for i, tenant in enumerate(self.tenants):
            field = (f"tenants[{i}].output_topic" if tenant.output_topic
                     else f"the decision topic of tenant {tenant.tenant_id!r} (topics.decisions_prefix)")
            topic = self.output_topic(tenant)
            if topic.startswith(t.shadow_prefix):
                raise ValueError(f"{field}: {json.dumps(topic)} starts with topics.shadow_prefix "
                                 f"{json.dumps(t.shadow_prefix)}")
            claim(field, topic)
        return self

    def output_topic(self, tenant: TenantConfig) -> str:
        return tenant.output_topic or self.topics.decisions_topic(tenant.tenant_id)

    def knows_intent(self, name: str) -> bool:
        """Whether the configuration names intent `name`; one that names no intents knows every intent (the
        models topic decides). The one rule of the config's tenants, tenant records, validate and deploy."""
        return not self.intents or any(i.name == name for i in self.intents)

    def require_intent(self, name: str) -> None:
        """A ConfigError naming the config's intents unless knows_intent(name): validate's and deploy's check
        of the intent they are given, before Kafka is asked."""
        if not self.knows_intent(name):
            raise ConfigError(f"intent {name!r} is not in the config "
                              f"(intents: {', '.join(i.name for i in self.intents)})")

    def with_overrides(self, **sections: dict) -> Settings:
        """A copy with some fields of some sections replaced, validated again."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        return Settings.model_validate(data)


def error_text(err: ValidationError, top: str = "(top level)") -> str:
    """`field: why` of the first error, without pydantic's "Value error, " prefix; a whole-record check names
    its fields itself (`topics.models: ... is also topics.events`), so it has no location."""
    first = err.errors()[0]
    why = str(first["ctx"]["error"]) if first["type"] == "value_error" and "ctx" in first else first["msg"]
    if not first["loc"] and first["type"] == "value_error":
        return why
    return f"{'.'.join(str(p) for p in first['loc']) or top}: {why}"


def load_settings(path: str | os.PathLike | None = None, *, bootstrap: str | None = None) -> Settings:
    """Read and validate a config file. `bootstrap` (or MUSE_BOOTSTRAP) overrides kafka.bootstrap_servers."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark some editors write: dropped
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 text (byte {e.start})") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    boot = bootstrap or os.environ.get("MUSE_BOOTSTRAP")
    if boot:
        raw.setdefault("kafka", {})
        if isinstance(raw["kafka"], dict):
            raw["kafka"]["bootstrap_servers"] = boot
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{p}: {error_text(e)}{more}") from None
