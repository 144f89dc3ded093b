"""The state a worker's endpoint thread reads: gauges, /healthz, /readyz and /status."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Snapshots:
    """Built in the worker thread and read by the endpoint thread, which never touches a Kafka client.

    The worker thread replaces each field whole and never changes one in place, so a reader sees either the
    old value or the new one, never half of an update.
    """

    assignment: frozenset[tuple[str, int]] = frozenset()  # (topic, partition) assigned to this worker
    held: frozenset[tuple[str, int]] = frozenset()  # assigned, committed offset unreadable (kafka/starts.py)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # messages behind each partition's end
    alerts: dict[str, dict] = field(default_factory=dict)  # per tenant: events and band rates in the window
    models: dict[str, dict] = field(default_factory=dict)  # per intent: the active version and its state
    refused: dict[tuple[str, int], str] = field(default_factory=dict)  # (intent, version) -> reason
    models_loaded: bool = False
    events_per_s: float = 0.0
