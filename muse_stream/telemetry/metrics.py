"""The metric instruments of one worker, on an OpenTelemetry MeterProvider of its own.

Readers: always a Prometheus reader on the worker's own CollectorRegistry (served at /metrics when the
endpoint is on), and a periodic OTLP/HTTP push when a collector endpoint is configured. Every name below
appears in docs/operations.md (Metrics) with its labels; keep the two in step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import Metric, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from muse_stream.telemetry.histogram import BulkHistogram, ExtrasExporter, with_extras

logger = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 50_000)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

Attrs = tuple[tuple[str, str], ...]
GaugeFn = Callable[[], Iterable[tuple[float, dict]]]


class _PrometheusReader(PrometheusMetricReader):
    """The stock reader, plus the bulk histograms merged into each collection."""

    def __init__(
        self, extras: Callable[[], list[Metric]], resource: Resource, registry: CollectorRegistry
    ) -> None:
        super().__init__(disable_target_info=False, scope_info_enabled=False, registry=registry)
        self._extras, self._resource = extras, resource

    def collect(self, timeout_millis: float = 10_000) -> None:
        self._received = False
        super().collect(timeout_millis=timeout_millis)
        if not self._received:  # the SDK had nothing to report (it then skips _receive_metrics): extras only
            data = with_extras(None, self._extras(), self._resource)
            if data is not None:
                super()._receive_metrics(data, timeout_millis=timeout_millis)

    def _receive_metrics(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> None:
        self._received = True
        super()._receive_metrics(
            with_extras(metrics_data, self._extras(), self._resource), timeout_millis=timeout_millis, **kwargs
        )


class CounterTable:
    """A monotonic counter kept as a plain dict and read by an OpenTelemetry observable counter.

    The SDK's Counter.add() costs microseconds per call (attribute hashing, locks); the per-batch counters
    take one dict update per label set here and are turned into data points only when collected.
    """

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.values: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...], n: int) -> None:
        self.values[key] = self.values.get(key, 0) + n

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        labels = self.labels
        # dict.copy is atomic under the GIL: the worker thread may be adding meanwhile.
        return [Observation(v, dict(zip(labels, k))) for k, v in self.values.copy().items()]


class MetricsHub:
    """Instruments, recorded per batch by Telemetry; observable gauges read snapshots it keeps."""

    def __init__(
        self,
        resource_attributes: dict,
        *,
        otlp_endpoint: str | None = None,
        otlp_headers: dict[str, str] | None = None,
        otlp_interval_ms: int = 10_000,
    ) -> None:
        self.resource = Resource.create(resource_attributes)
        self.registry = CollectorRegistry()
        self.latency = BulkHistogram(
            "muse_end_to_end_latency",
            unit="s",
            bounds=LATENCY_BUCKETS,
            description="Seconds from an event's event_time (source=event_time) or its "
            "input record's timestamp (source=record_timestamp) to its "
            "decision being produced",
        )
        readers: list[MetricReader] = [_PrometheusReader(self._extras, self.resource, self.registry)]
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(
                endpoint=f"{otlp_endpoint}/v1/metrics", headers=dict(otlp_headers or {})
            )
            readers.append(
                PeriodicExportingMetricReader(
                    ExtrasExporter(exporter, self._extras, self.resource),
                    export_interval_millis=otlp_interval_ms,
                )
            )
        views = [
            View(
                instrument_name="muse_batch_size",
                aggregation=ExplicitBucketHistogramAggregation(BATCH_SIZE_BUCKETS),
            ),
            View(
                instrument_name="muse_batch_duration",
                aggregation=ExplicitBucketHistogramAggregation(BATCH_SECONDS_BUCKETS),
            ),
        ]
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=self.resource,
            views=views,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        m = self.provider.get_meter("muse_stream")
        # Recorded every batch: dict tables read at collection time (see CounterTable).
        self.events_in = self._table(
            m, "muse_events_in", ("tenant", "intent"), "{event}", "Input events read, by tenant and intent"
        )
        self.decisions = self._table(
            m,
            "muse_decisions",
            ("tenant", "intent", "model_version"),
            "{decision}",
            "Decisions produced, by tenant, intent and model version",
        )
        self.band_decisions = self._table(
            m,
            "muse_band_decisions",
            ("tenant", "intent", "band"),
            "{decision}",
            "Decisions produced, by tenant, intent and band",
        )
        self.dead_letters = self._table(
            m,
            "muse_dead_letters",
            ("tenant", "intent", "reason"),
            "{event}",
            "Events sent to the dead-letter topic, by tenant, intent and reason",
        )
        # Feature telemetry (telemetry/features.py): missing values in scored matrices, and event fields an
        # intent ignores (unknown_features = "ignore").
        self.feature_missing = self._table(
            m,
            "muse_feature_missing",
            ("tenant", "intent", "feature"),
            "{value}",
            "Missing values (null or absent) of a model feature in scored events, by tenant, intent and feature",
        )
        self.unknown_features_ignored = self._table(
            m,
            "muse_unknown_features_ignored",
            ("intent", "feature"),
            "{event}",
            "Scored events that carried a field their version does not know (ignored), by intent and field",
        )
        self.transactions = m.create_counter(
            "muse_transactions",
            unit="{transaction}",
            description="Transactions (offset commits in at-least-once) by outcome: committed or aborted",
        )
        self.rebalances = m.create_counter(
            "muse_rebalances", unit="{rebalance}", description="Consumer-group rebalance callbacks, by kind"
        )
        self.activations = m.create_counter(
            "muse_model_activations", unit="{activation}", description="Model swaps applied by this worker"
        )
        self.refusals = m.create_counter(
            "muse_model_refusals", unit="{version}", description="Model versions this worker refused to load"
        )
        self.batch_size = m.create_histogram(
            "muse_batch_size", unit="{event}", description="Events per micro-batch"
        )
        self.batch_duration = m.create_histogram(
            "muse_batch_duration", unit="s", description="Seconds to score and produce one micro-batch"
        )
        self._meter = m
        self._attrs: dict[Attrs, dict] = {}

    def attrs(self, key: Attrs) -> dict:
        """A cached attribute dict per label tuple: no dict built per record."""
        d = self._attrs.get(key)
        if d is None:
            d = self._attrs[key] = dict(key)
        return d

    @staticmethod
    def _table(meter, name: str, labels: tuple[str, ...], unit: str, description: str) -> CounterTable:
        table = CounterTable(labels)
        meter.create_observable_counter(name, callbacks=[table.observe], unit=unit, description=description)
        return table

    def gauge(self, name: str, *, unit: str, description: str, values: GaugeFn) -> None:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, a) for v, a in values()]

        self._meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)

    def observed_counter(self, name: str, *, unit: str, description: str, values: GaugeFn) -> None:
        """A monotonic counter read at collection time (a total the worker keeps itself, e.g. state's stats)."""
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, a) for v, a in values()]

        self._meter.create_observable_counter(name, callbacks=[callback], unit=unit, description=description)

    def _extras(self) -> list[Metric]:
        m = self.latency.metric()
        return [m] if m is not None else []

    def shutdown(self) -> None:
        try:
            self.provider.shutdown(timeout_millis=5000)
        except Exception as e:  # noqa: BLE001 - an exporter failing at exit must not mask the worker's exit
            logger.warning("metrics shutdown: %s", e)
