"""Entity feature definitions of an intent (`[intents.X.state]` in the config): what the worker computes per
event from the earlier events of the same entity, in sliding windows by event time.

    [[intents]]
    name = "card_fraud"
    [intents.state]
    entity = ["card_id"]                         # one field, or several (a composite entity)
    windows = ["10m", "1h", "24h"]               # 1 minute to 30 days
    aggregates = ["count", "sum:amount", "mean:amount", "max:amount", "distinct:merchant_id",
                  "seconds_since_last"]
    lateness = "1h"          # an event this far behind its entity's newest event is late: scored, never stored
    dedup_window = "24h"     # an event id seen again within this is a duplicate_event dead letter
    wrong_key = "dead_letter"  # or "count": an event whose Kafka key is not its entity value
    debug = false            # decisions carry the state features they used ("state": {...})

Where fields are read (the interface shared with training, scripts/ and demo/): the entity and `distinct`
fields are top-level event fields (strings or integers, outside `features`, so the model never sees an id);
the numeric fields of sum / mean / max are read from the top level first, then from `features`. The Kafka
key an event must carry is its entity value, several fields joined with "|" (`entity_key`).

Feature names (`feature_names`): `<entity>.<agg>_<window>`, with the entity's fields joined with "+", e.g.
`card_id.count_10m`, `card_id.sum_amount_1h`, `card_id.distinct_merchant_id_24h`, and
`card_id.seconds_since_last` (no window: the time since the entity's previous event within the longest
window, NaN when there is none). A model version records the spec it was trained with (`to_record`, as
VersionRecord.state_spec: `publish(..., state_spec=spec.to_record())`, or metadata["state_spec"] as before);
`mismatch` says how it differs from the intent's config, and publish and the workers' model registry refuse
such a version with that reason.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from muse_stream.frozen import Frozen

AGGREGATES = ("count", "sum", "mean", "max", "distinct", "seconds_since_last")
NEEDS_FIELD = frozenset({"sum", "mean", "max", "distinct"})
_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DUR = re.compile(r"([0-9]+)([smhd])")  # fullmatch; [0-9], as \d takes any script's digits
MIN_WINDOW_MS, MAX_WINDOW_MS = 60_000, 30 * 86_400_000
_FIELD = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # fullmatch: "$" would let a trailing newline through
# The event contract's own fields: an entity of one of them (but tenant_id) or an aggregate over one means nothing.
RESERVED = frozenset({"event_id", "tenant_id", "intent", "event_time", "features"})


def duration_ms(text: str) -> int:
    """'10m' -> 600000 (units s, m, h, d)."""
    m = _DUR.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 10m, 1h or 7d")
    return int(m.group(1)) * _UNITS[m.group(2)]


class Aggregate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    fn: str
    field: str | None = None

    @classmethod
    def parse(cls, text: str) -> Aggregate:
        fn, colon, field = text.partition(":")
        if fn not in AGGREGATES:
            raise ValueError(f"aggregate {fn!r} is not one of {', '.join(AGGREGATES)}")
        if (fn in NEEDS_FIELD) != bool(field) or (colon and not field):
            raise ValueError(f"aggregate {text!r}: " + ("needs a field, as in sum:amount" if fn in NEEDS_FIELD
                                                       else "takes no field"))
        if field and not _FIELD.fullmatch(field):
            raise ValueError(f"aggregate {text!r}: field must be 1-64 letters, digits, '_' or '-'")
        if field in RESERVED:
            raise ValueError(f"aggregate {text!r}: {field!r} is a field of the event contract, not a value to "
                             "aggregate")
        return cls(fn=fn, field=field or None)

    @property
    def text(self) -> str:
        return self.fn if self.field is None else f"{self.fn}:{self.field}"


class StateSpec(Frozen):
    """One intent's entity features, de-duplication and partitioning checks (validated once, frozen)."""

    entity: tuple[str, ...] = Field(min_length=1, max_length=4)
    windows: tuple[str, ...] = Field(default=("10m", "1h", "24h"), min_length=1, max_length=8)
    aggregates: tuple[str, ...] = Field(default=("count",), min_length=1, max_length=16)
    lateness: str = "1h"
    dedup_window: str = "24h"
    wrong_key: Literal["dead_letter", "count"] = "dead_letter"
    debug: bool = False

    @field_validator("entity")
    @classmethod
    def _entity(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [f for f in v if not _FIELD.fullmatch(f)]
        if bad or len(set(v)) != len(v):
            raise ValueError("entity fields must be distinct names of 1-64 letters, digits, '_' or '-'")
        reserved = [f for f in v if f in RESERVED and f != "tenant_id"]
        if reserved:
            raise ValueError(f"entity field {reserved[0]!r} is a field of the event contract, not an entity")
        return v

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for w in v:
            ms = duration_ms(w)
            if not MIN_WINDOW_MS <= ms <= MAX_WINDOW_MS:
                raise ValueError(f"window {w!r} is outside 1 minute to 30 days")
        if len({duration_ms(w) for w in v}) != len(v):
            raise ValueError("windows must differ")
        return v

    @field_validator("aggregates")
    @classmethod
    def _aggregates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        parsed = [Aggregate.parse(a) for a in v]
        if len({a.text for a in parsed}) != len(parsed):
            raise ValueError("aggregates must differ")
        return tuple(a.text for a in parsed)

    @field_validator("lateness", "dedup_window")
    @classmethod
    def _duration(cls, v: str) -> str:
        if duration_ms(v) > 365 * 86_400_000:
            raise ValueError(f"{v!r} is longer than a year")
        return v

    @model_validator(mode="after")
    def _no_clash(self) -> StateSpec:
        fields = {a.field for a in self.parsed if a.field}
        if fields & set(self.entity):
            raise ValueError("an aggregate's field cannot be an entity field")
        return self

    # ---- derived --------------------------------------------------------------------------------

    @property
    def parsed(self) -> tuple[Aggregate, ...]:
        return tuple(Aggregate.parse(a) for a in self.aggregates)

    @property
    def windows_ms(self) -> tuple[int, ...]:
        return tuple(duration_ms(w) for w in self.windows)

    @property
    def longest_ms(self) -> int:
        return max(self.windows_ms)

    @property
    def lateness_ms(self) -> int:
        return duration_ms(self.lateness)

    @property
    def dedup_ms(self) -> int:
        return duration_ms(self.dedup_window)

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.field for a in self.parsed if a.fn in ("sum", "mean", "max")))

    @property
    def distinct_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.field for a in self.parsed if a.fn == "distinct"))

    @property
    def prefix(self) -> str:
        return "+".join(self.entity)

    def feature_names(self) -> tuple[str, ...]:
        """Every feature this spec adds, in a fixed order: per window, per aggregate; then seconds_since_last."""
        names = []
        for w in self.windows:
            for a in self.parsed:
                if a.fn == "seconds_since_last":
                    continue
                mid = a.fn if a.field is None else f"{a.fn}_{a.field}"
                names.append(f"{self.prefix}.{mid}_{w}")
        if any(a.fn == "seconds_since_last" for a in self.parsed):
            names.append(f"{self.prefix}.seconds_since_last")
        return tuple(names)

    def to_record(self) -> dict:
        """What a model version records: the definitions its state features were computed with."""
        return {"entity": list(self.entity), "windows": list(self.windows), "aggregates": list(self.aggregates),
                "lateness": self.lateness}


def entity_key(values: list) -> str | None:
    """The Kafka key an event of this entity must carry: its entity field values, joined with '|'; None when a
    value of a composite entity holds a '|' itself (("a|b", "c") and ("a", "b|c") would be one entity)."""
    texts = [str(v) for v in values]
    if len(texts) > 1 and any("|" in t for t in texts):
        return None
    return "|".join(texts)


def mismatch(model_features: tuple[str, ...], recorded: dict | None, spec: StateSpec | None) -> str | None:
    """Why a model version cannot be served the intent's state features as configured, or None.

    Refused (by publish, and by the registry when a worker loads it, so its events are dead-lettered rather
    than scored with missing or different features): the version reads a state feature the config does not
    compute, or it recorded an entity or lateness other than the config's (same names, other meaning). Windows
    and aggregates it does not read may differ: a feature's name says its entity field, aggregate, field and
    window, so one the config computes under the same entity and lateness is the one it was trained with (what
    lets a spec grow and shrink under a live version: docs/models.md, "Changing a state spec")."""
    produced = set(spec.feature_names()) if spec is not None else set()
    wanted = {f for f in model_features if "." in f and f.split(".", 1)[0].replace("+", "").replace("_", "")
              .replace("-", "").isalnum() and f not in produced and _looks_stateful(f)}
    if wanted:
        return f"reads state features the config does not compute: {', '.join(sorted(wanted)[:5])}"
    if recorded is not None and spec is not None:
        now = spec.to_record()
        differ = [k for k in ("entity", "lateness") if recorded.get(k) != now[k]]
        if differ:
            return f"trained with state definitions {recorded}, the config has {now} ({' and '.join(differ)} differ)"
    return None


def _looks_stateful(name: str) -> bool:
    tail = name.split(".", 1)[1]
    return tail == "seconds_since_last" or tail.split("_", 1)[0] in AGGREGATES
