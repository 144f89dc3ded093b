"""A deployment's record on the models topic: begun, moved on a step at a time, each step written in the same
fenced transaction as the models-topic change it makes (a shadow set, a version published, an activation)."""

from __future__ import annotations

import time
from collections.abc import Callable

from muse_stream.config import Settings
from muse_stream.errors import ModelError
from muse_stream.models.records import (
    DeploymentRecord,
    DeploymentStep,
    deployment_key,
    dump,
)
from muse_stream.models.registry import ModelRegistry
from muse_stream.models.store import now_ms, write_models

# What may follow each state (the state machine); a step may also repeat "watched" (a refresh, a window judged).
NEXT = {
    "registered": {"shadow", "refused"},
    "shadow": {"fitted", "refused"},
    "fitted": {"judged", "refused"},
    "judged": {"activated", "refused"},
    "activated": {"watched", "rolled back", "done"},
    "watched": {"watched", "done", "rolled back"},
}

Records = list[tuple[bytes, bytes]]


def clock(ms: int) -> str:
    """A step's wall-clock time as printed: 13:05:02.417Z."""
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def advanced(rec: DeploymentRecord, state: str, detail: str = "", figures: dict | None = None,
             **changes) -> DeploymentRecord:
    """`rec` with one more step (and any field changes); ModelError for a move the state machine forbids."""
    if state not in NEXT.get(rec.state, set()):
        raise ModelError(f"deployment {rec.name}: cannot go from {rec.state} to {state}")
    step = DeploymentStep(state=state, at=now_ms(), detail=detail, figures=figures or {})
    return rec.model_copy(update={**changes, "steps": (*rec.steps, step)})


def entry(rec: DeploymentRecord) -> tuple[bytes, bytes]:
    return deployment_key(rec.intent, rec.deployment), dump(rec)


def write_step(settings: Settings, rec: DeploymentRecord,
               make: Callable[[ModelRegistry, DeploymentRecord], tuple[Records, DeploymentRecord]]) -> DeploymentRecord:
    """Write `make`'s records and the deployment's new state as one fenced step of the intent. `make` gets the
    models topic as it is now and the deployment as last written, and refuses (raises) when another process
    moved the deployment on meanwhile."""

    def step(reg: ModelRegistry) -> tuple[Records, DeploymentRecord]:
        on_topic = reg.deployments.get((rec.intent, rec.deployment))
        if on_topic is not None and on_topic.steps != rec.steps:
            raise ModelError(f"deployment {rec.name} was moved on by another deploy process (now {on_topic.state})")
        records, new = make(reg, rec)
        return [*records, entry(new)], new

    return write_models(settings, rec.intent, step)


def next_deployment_number(reg: ModelRegistry, intent: str) -> int:
    return max((n for (i, n) in reg.deployments if i == intent), default=0) + 1
