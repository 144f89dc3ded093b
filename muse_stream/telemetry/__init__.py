"""Observability: metrics (OpenTelemetry, served to Prometheus, optionally pushed over OTLP), batch traces,
score drift, health endpoints, and the data behind `muse-stream status`."""

from .core import Telemetry, endpoint_port

__all__ = ["Telemetry", "endpoint_port"]
