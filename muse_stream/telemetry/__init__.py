"""Observability: metrics (OpenTelemetry, served to Prometheus, optionally pushed over OTLP), batch traces,
score drift, health endpoints, and the data behind `muse-stream status`.

May import: errors, config, kafka, models, tenants, scoring.
"""

from muse_stream.telemetry.facade import Telemetry
from muse_stream.telemetry.server import endpoint_port


class NoTelemetry:
    """What a worker uses when telemetry.enabled is false: every hook does nothing."""

    def __getattr__(self, name: str):
        return _nothing


def _nothing(*args, **kwargs) -> None:
    return None


__all__ = ["NoTelemetry", "Telemetry", "endpoint_port"]
