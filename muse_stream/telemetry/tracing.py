"""Batch traces: one span per micro-batch with consume, score (per intent), produce and commit children.

Spans are built after the fact from timestamps the loop hands over (time.perf_counter_ns, converted to
wall-clock ns here), so a batch that is not sampled costs only those few timestamps. Off unless a sample
rate > 0 and an OTLP endpoint (or, in tests, an exporter) are given.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

logger = logging.getLogger(__name__)


class BatchTracer:
    def __init__(
        self,
        *,
        rate: float,
        resource: Resource,
        endpoint: str | None = None,
        headers: dict[str, str] | None = None,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(rate)))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=dict(headers or {}))
                )
            )
        self.tracer = self.provider.get_tracer("muse_stream")
        self._offset = time.time_ns() - time.perf_counter_ns()
        self._reset()

    def _reset(self) -> None:
        self._poll = 0
        self._batch = None  # (t0, t1, t2, attributes, per-intent list)
        self._commit = None  # (start, end, outcome)

    def poll_start(self, t: int) -> None:
        """A loop iteration begins: emit the previous one's spans, then start timing this one."""
        self.flush()
        self._poll = t

    def batch(
        self,
        t_score: int,
        t_scored: int,
        t_produced: int,
        attributes: dict,
        intents: list[tuple[str, int, int | None, int | None]],
    ) -> None:
        self._batch = (t_score, t_scored, t_produced, attributes, intents)

    def commit(self, start: int, end: int, outcome: str) -> None:
        self._commit = (start, end, outcome)

    def flush(self) -> None:
        if self._batch is None and self._commit is None:
            return
        try:
            self._emit()
        finally:
            self._reset()

    def _emit(self) -> None:
        w = self._offset
        if self._batch is not None:
            t0, t1, t2, attrs, intents = self._batch
            end = max(t2, self._commit[1] if self._commit else 0)
            root = self.tracer.start_span("muse.batch", start_time=self._poll + w, attributes=attrs)
            if root.is_recording():
                ctx = trace.set_span_in_context(root)
                self._child("consume", self._poll, t0, ctx)
                score = self.tracer.start_span("score", context=ctx, start_time=t0 + w)
                sctx = trace.set_span_in_context(score)
                for intent, n, s, e in intents:
                    attrs_i = {"muse.intent": intent, "muse.events": n}
                    if s is not None and e is not None:  # per-intent timing, when the scorer gives it
                        self._child(f"score {intent}", s, e, sctx, attrs_i)
                    else:
                        score.add_event(f"scored {intent}", attributes=attrs_i)
                score.end(end_time=t1 + w)
                self._child("produce", t1, t2, ctx)
                if self._commit is not None:
                    self._child(
                        "commit", self._commit[0], self._commit[1], ctx, {"muse.outcome": self._commit[2]}
                    )
            root.end(end_time=end + w)
        elif self._commit is not None:
            s, e, outcome = self._commit
            span = self.tracer.start_span(
                "muse.commit", start_time=s + w, attributes={"muse.outcome": outcome}
            )
            span.end(end_time=e + w)

    def _child(self, name: str, start: int, end: int, ctx, attributes: dict | None = None) -> None:
        span = self.tracer.start_span(
            name, context=ctx, start_time=start + self._offset, attributes=attributes
        )
        span.end(end_time=end + self._offset)

    def shutdown(self) -> None:
        try:
            self.flush()
            self.provider.shutdown()
        except Exception as e:  # noqa: BLE001 - an exporter failing at exit must not mask the worker's exit
            logger.warning("tracing shutdown: %s", e)
