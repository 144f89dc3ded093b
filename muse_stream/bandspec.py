"""A tenant's bands as configured: a threshold on the intent's reference scale, or an alert rate; and the
periods of a band timeline. Validated here, resolved on an intent's reference in models/bands.py."""

from __future__ import annotations

import math
from typing import Annotated

import pydantic
from pydantic import Field

from muse_stream.eventtime import MAX_EVENT_TIME
from muse_stream.frozen import Frozen

# The smallest alert rate a band may give: 1e-6 (0.0001%). A reference resolves a rate only down to about one
# over its population, and publish would need ~1/rate calibration events to hold such a reference, so a
# smaller rate is a deploy that never becomes ready. The one rule: config, `tenants set` and workers use it.
MIN_RATE = 1e-6
RATE_RANGE = "at least 0.0001% (1e-6) and below 100%"


class BandRate(Frozen):
    """A band as an alert rate: the threshold at which this share of the intent's reference alerts (bands.py)."""

    rate: float

    @pydantic.field_validator("rate")
    @classmethod
    def _rate(cls, v: float) -> float:
        if v < 1.0 and not v < MIN_RATE:
            return v
        why = "" if v >= 1.0 or math.isnan(v) else ": an intent's reference cannot resolve a smaller share of events"
        raise ValueError(f"a rate band is {RATE_RANGE}, got rate {v:g}{why}")


def _threshold(v):
    """A threshold may also be written as `{ threshold = 0.9 }`, the shape of a rate band's `{ rate = 0.05 }`."""
    if isinstance(v, dict):
        if set(v) != {"threshold"}:
            raise ValueError(f"a band is a threshold (0.9 or {{ threshold = 0.9 }}) or an alert rate "
                             f"({{ rate = 0.05 }}), not {v}")
        v = v["threshold"]
    if type(v) is bool or isinstance(v, str):  # not read as 1.0 or parsed: written as a number, or refused
        raise ValueError(f"a threshold is a number from 0 to 1, not {type(v).__name__} {v!r}")
    if isinstance(v, float) and math.isnan(v):
        raise ValueError("a threshold is a number from 0 to 1 on the intent's reference scale, not nan")
    return v


# A threshold on the reference scale or an alert rate, told apart by shape: a refusal names the one meant.
BandSpec = Annotated[Annotated[float, pydantic.BeforeValidator(_threshold), Field(ge=0.0, le=1.0),
                               pydantic.Tag("threshold")]
                     | Annotated[BandRate, pydantic.Tag("rate")],
                     pydantic.Discriminator(lambda v: "rate" if isinstance(v, BandRate) or (
                         isinstance(v, dict) and "rate" in v) else "threshold")]


def _check_bands(v: dict[str, BandSpec]) -> dict[str, BandSpec]:
    # Bands are ordered by threshold (a rate's falls as the rate grows): a higher band has the higher threshold
    # and lower rate. A rate meets a threshold only on an intent's reference: see models/bands.py for ties.
    if "approve" in v:
        raise ValueError("'approve' is the band below every threshold; it takes no threshold")
    for kind, values in (("threshold", [s for s in v.values() if isinstance(s, float)]),
                         ("rate", [s.rate for s in v.values() if isinstance(s, BandRate)])):
        if len(set(values)) != len(values):
            raise ValueError(f"two bands share a {kind}")
    return v


BandSet = Annotated[dict[str, BandSpec], pydantic.AfterValidator(_check_bands)]


class BandPeriod(Frozen):
    """A tenant's bands from an event time on: events with event_time >= from_time use them, until the next
    period's from_time. from_time None: from the start of time."""

    from_time: int | None = Field(None, ge=0, le=MAX_EVENT_TIME)
    bands: BandSet = Field(default_factory=dict)
