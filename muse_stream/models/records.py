"""Record shapes on muse-stream's topics: events in, decisions out, and the models topic's records.

The runtime's hot path does not build these pydantic models per event (see scoring.py); they are the
documented contract, used by producers, tools, tests and the slow path that explains a bad event.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from muse_stream.errors import ModelError


class _Rec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(_Rec):
    """An input event: one transaction of one tenant."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    event_id: str = Field(min_length=1, max_length=256)
    tenant_id: str = Field(min_length=1, max_length=64)
    intent: str | None = None
    event_time: int = Field(ge=0, le=2**62)
    features: dict[str, float | None]


class Source(_Rec):
    topic: str
    partition: int
    offset: int
    timestamp: int  # the input record's Kafka timestamp (ms), for end-to-end latency downstream


class Decision(_Rec):
    """One decision per event, on the tenant's own topic."""

    event_id: str
    tenant_id: str
    intent: str
    score: float
    raw_score: float
    band: str
    model_version: str
    transform_version: str
    event_time: int
    decided_at: int
    source: Source


# ---- models topic -------------------------------------------------------------------------------

def version_key(intent: str, version: int) -> bytes:
    return f"version/{intent}/{version}".encode()


def active_key(intent: str) -> bytes:
    return f"active/{intent}".encode()


def reference_key(intent: str) -> bytes:
    return f"reference/{intent}".encode()


def shadow_key(intent: str) -> bytes:
    return f"shadow/{intent}".encode()


def deployment_key(intent: str, deployment: int) -> bytes:
    """One key per deployment, so compaction keeps every deployment's last state: the audit trail."""
    return f"deployment/{intent}/{deployment}".encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class VersionRecord(_Rec):
    """A model version: the booster (UBJSON, base64 in JSON), its features and its fitted transform."""

    kind: Literal["version"] = "version"
    intent: str
    version: int = Field(ge=1)
    features: tuple[str, ...] = Field(min_length=1)
    booster_b64: str
    booster_sha256: str
    transform: dict  # ScoreTransform.to_dict()
    metadata: dict = Field(default_factory=dict)
    created_at: int
    # FeatureContract.to_dict(): each feature's range and missing rate on the calibration data. None on records
    # written before contracts existed, or by hand: such a version scores as before, with no drift check.
    feature_contract: dict | None = None
    # featurespec.StateSpec.to_record() of the entity features the version was trained with; None: it reads
    # none (or was written before state existed). Publish and the registry refuse a version whose recorded
    # definitions differ from its intent's config (featurespec.mismatch).
    state_spec: dict | None = None

    @property
    def name(self) -> str:
        return f"{self.intent}@{self.version}"

    def booster_bytes(self) -> bytes:
        """The booster bytes, verified against the recorded sha256."""
        try:
            raw = base64.b64decode(self.booster_b64, validate=True)
        except ValueError as e:
            raise ModelError(f"{self.name}: booster is not valid base64: {e}") from None
        if sha256_hex(raw) != self.booster_sha256:
            raise ModelError(f"{self.name}: booster checksum does not match its record")
        return raw


class TimelineEntry(_Rec):
    version: int = Field(ge=1)
    # Events with event_time >= from_time use this version; None: from the start of time.
    from_time: int | None = None


class ActivationRecord(_Rec):
    """The active pointer of an intent. It carries the whole timeline, so compaction never loses history.

    `activate_at` is the event time an activation was scheduled for; None for an immediate one, whose
    timeline entry starts at the input topics' event-time watermark when it was written (store.activate).
    """

    kind: Literal["activation"] = "activation"
    intent: str
    version: int = Field(ge=1)
    activate_at: int | None = None
    previous: int | None = None
    activated_at: int
    timeline: tuple[TimelineEntry, ...] = Field(min_length=1)

    @field_validator("timeline")
    @classmethod
    def _ordered(cls, v: tuple[TimelineEntry, ...]) -> tuple[TimelineEntry, ...]:
        if v[0].from_time is not None:
            raise ValueError("a timeline starts with an entry from the start of time")
        times = [e.from_time for e in v[1:]]
        if any(t is None for t in times) or times != sorted(times):
            raise ValueError("timeline entries must be in increasing from_time")
        return v

    @model_validator(mode="after")
    def _ends_with_version(self) -> ActivationRecord:
        if self.timeline[-1].version != self.version:
            raise ValueError(f"the timeline ends with version {self.timeline[-1].version}, not {self.version}")
        return self

    def version_for(self, event_time: int) -> int:
        # Newest entry first: live events almost always fall after the latest switch, and timelines grow
        # with every activation.
        for e in reversed(self.timeline):
            if e.from_time is None or event_time >= e.from_time:
                return e.version
        return self.timeline[0].version  # unreachable: the first entry starts at the start of time


def next_timeline(prev: ActivationRecord | None, version: int, from_time: int | None) -> tuple[TimelineEntry, ...]:
    """The timeline after activating `version` for events with event_time >= from_time. Earlier entries are
    kept, so a replay of earlier events uses the versions that scored them; entries from `from_time` on are
    replaced. from_time None or 0 (the start of time), or no previous activation: `version` for every event."""
    if prev is None or not from_time:
        return (TimelineEntry(version=version),)
    kept = [e for e in prev.timeline if e.from_time is None or e.from_time < from_time]
    if kept[-1].version == version:  # already the version in force at from_time
        return tuple(kept)
    return (*kept, TimelineEntry(version=version, from_time=from_time))


class ReferenceRecord(_Rec):
    """An intent's reference distribution: fixed once, never moved by a later publish."""

    kind: Literal["reference"] = "reference"
    intent: str
    reference: dict  # ReferenceDistribution.to_dict()
    source: str  # e.g. "card_fraud@1 calibration" or "explicit"
    created_at: int


class ShadowRecord(_Rec):
    """Which version, if any, workers score in shadow for an intent."""

    kind: Literal["shadow"] = "shadow"
    intent: str
    version: int | None
    set_at: int


DEPLOYMENT_STATES = ("registered", "shadow", "fitted", "judged", "activated", "watched", "done", "refused",
                     "rolled back")
FINAL_STATES = frozenset({"done", "refused", "rolled back"})


class DeploymentStep(_Rec):
    """One step of a deployment: its state, when it was reached (wall clock, ms), its figures and why."""

    state: Literal[DEPLOYMENT_STATES]  # type: ignore[valid-type]
    at: int
    detail: str = ""
    figures: dict = Field(default_factory=dict)


class DeploymentRecord(_Rec):
    """A deployment (muse_stream/deploy): a model file taken to live through shadow, fit, guards and watch.
    Every step rewrites the record with one more step, in the same transaction as the models-topic change it
    makes, so a restarted deploy resumes from here."""

    kind: Literal["deployment"] = "deployment"
    intent: str
    deployment: int = Field(ge=1)
    model: str  # the model file's name
    booster_sha256: str
    incumbent: int | None = None  # the version serving when the deployment began
    candidate: int | None = None  # the version registered for shadow scoring
    serving: int | None = None  # the fitted (or refreshed) version that scores live once activated
    refreshes: tuple[int, ...] = ()
    steps: tuple[DeploymentStep, ...] = Field(min_length=1)

    @property
    def state(self) -> str:
        return self.steps[-1].state

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def name(self) -> str:
        return f"{self.intent}#{self.deployment}"

    def step(self, state: str) -> DeploymentStep | None:
        """The latest step in `state`, if any."""
        return next((s for s in reversed(self.steps) if s.state == state), None)


ModelsRecord = VersionRecord | ActivationRecord | ReferenceRecord | ShadowRecord | DeploymentRecord
_KINDS = {"version": VersionRecord, "activation": ActivationRecord, "reference": ReferenceRecord, "shadow": ShadowRecord,
          "deployment": DeploymentRecord}


def parse_models_record(value: bytes) -> ModelsRecord:
    """Parse a models-topic value; raises ModelError on anything malformed."""
    try:
        data = orjson.loads(value)
        cls = _KINDS[data["kind"]]
        return cls.model_validate(data)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelError(f"malformed models record: {str(e).splitlines()[0][:200]}") from None


def dump(record: BaseModel) -> bytes:
    return orjson.dumps(record.model_dump(mode="json"))
