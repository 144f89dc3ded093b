"""Histograms fed a whole batch of values with one numpy call, exported through OpenTelemetry's data model.

The SDK's Histogram.record() costs a few microseconds per value, too much per event on the hot path. A
BulkHistogram keeps cumulative bucket counts per attribute set, adds a batch with searchsorted + bincount,
and is merged into the MetricsData the SDK collects, so the Prometheus and OTLP exporters see it like any
other histogram (same names, same units, same bucket semantics: bucket i counts bounds[i-1] < v <= bounds[i]).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

_SCOPE = InstrumentationScope("muse_stream.bulk")


class _Point:
    __slots__ = ("counts", "max", "min", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = np.zeros(n_buckets, dtype=np.int64)
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class BulkHistogram:
    """A cumulative explicit-bucket histogram whose record() takes an array of values."""

    def __init__(self, name: str, *, unit: str, description: str, bounds: Sequence[float]) -> None:
        b = np.asarray(bounds, dtype=np.float64)
        if b.ndim != 1 or b.size == 0 or not (np.diff(b) > 0).all():
            raise ValueError("bounds must be a non-empty increasing sequence")
        self.name, self.unit, self.description = name, unit, description
        self.bounds = b
        self._bounds_list = b.tolist()
        self._points: dict[tuple[tuple[str, str], ...], _Point] = {}
        self._lock = threading.Lock()  # record() runs in the worker, metric() in the scrape thread
        self._start_ns = time.time_ns()

    def record(
        self,
        values: np.ndarray,
        attributes: tuple[tuple[str, str], ...] = (),
        weights: np.ndarray | None = None,
    ) -> None:
        """Add every value of a 1-D array (NaN ignored); `weights` (int) counts a value as that many."""
        if values.dtype.kind == "f":
            keep = ~np.isnan(values)
            if not keep.all():
                values = values[keep]
                weights = None if weights is None else weights[keep]
        v = values
        if v.size == 0:
            return
        idx = np.searchsorted(self.bounds, v, side="left")
        if weights is None:
            counts = np.bincount(idx, minlength=self.bounds.size + 1)
            total = float(v.sum())
        else:
            counts = np.bincount(idx, weights=weights, minlength=self.bounds.size + 1).astype(np.int64)
            total = float(np.dot(v, weights))
        lo, hi = float(v.min()), float(v.max())
        with self._lock:
            p = self._points.get(attributes)
            if p is None:
                p = self._points[attributes] = _Point(self.bounds.size + 1)
            p.counts += counts
            p.sum += total
            p.min = min(p.min, lo)
            p.max = max(p.max, hi)

    def count(self, attributes: tuple[tuple[str, str], ...] = ()) -> int:
        with self._lock:
            p = self._points.get(attributes)
            return int(p.counts.sum()) if p is not None else 0

    def metric(self) -> Metric | None:
        now = time.time_ns()
        with self._lock:
            points = [
                HistogramDataPoint(
                    attributes=dict(attrs),
                    start_time_unix_nano=self._start_ns,
                    time_unix_nano=now,
                    count=int(p.counts.sum()),
                    sum=p.sum,
                    bucket_counts=p.counts.tolist(),
                    explicit_bounds=self._bounds_list,
                    min=p.min,
                    max=p.max,
                )
                for attrs, p in self._points.items()
            ]
        if not points:
            return None
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )


def with_extras(data: MetricsData | None, extras: list[Metric], resource: Resource) -> MetricsData | None:
    """`data` with `extras` added as one more scope of its first resource."""
    if not extras:
        return data
    scope = ScopeMetrics(scope=_SCOPE, metrics=extras, schema_url="")
    if data is None or not data.resource_metrics:
        return MetricsData(
            resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[scope], schema_url="")]
        )
    first = data.resource_metrics[0]
    merged = ResourceMetrics(
        resource=first.resource, scope_metrics=[*first.scope_metrics, scope], schema_url=first.schema_url
    )
    return MetricsData(resource_metrics=[merged, *data.resource_metrics[1:]])


class ExtrasExporter(MetricExporter):
    """Wraps a push exporter (OTLP) so every export carries the bulk histograms too."""

    def __init__(self, inner: MetricExporter, extras: Callable[[], list[Metric]], resource: Resource) -> None:
        super().__init__()
        self._inner, self._extras, self._resource = inner, extras, resource

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs
    ) -> MetricExportResult:
        return self._inner.export(
            with_extras(metrics_data, self._extras(), self._resource), timeout_millis=timeout_millis, **kwargs
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
