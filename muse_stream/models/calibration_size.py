"""How many calibration events a transform needs: enough above the intent's top band to estimate its rate.

A map fitted on n events places a threshold whose alert rate is r from about n * r events above it: on 100
events a 1% band rests on one event (issue 14 saw a top-1% band alert 0.36%). So the smallest reference rate
among the bands of the intent's tenants sets the size: at least MIN_ABOVE_TOP_BAND events expected above it,
and never fewer than MIN_CALIBRATION_EVENTS. A band no reference event reaches is left out (it cannot alert,
on any calibration set).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from muse_stream.bandspec import BandRate
from muse_stream.config import TenantConfig
from muse_stream.errors import DataError
from muse_stream.models.bands import band_table
from muse_stream.models.quantile import ReferenceDistribution

MIN_CALIBRATION_EVENTS = 1000
MIN_ABOVE_TOP_BAND = 50


@dataclass(frozen=True)
class CalibrationNeed:
    events: int  # the calibration events needed
    why: str  # which band sets it ("" when the floor does)


def calibration_need(tenants: Iterable[TenantConfig] | None, intent: str,
                     reference: ReferenceDistribution | None) -> CalibrationNeed:
    """The calibration size `intent` needs for its tenants' bands on `reference` (None: the intent's first
    version, whose reference these calibration scores become, so a rate band's rate is exact and a threshold
    band is not known yet)."""
    top: tuple[float, str] | None = None
    for t in tenants or ():
        if intent not in t.intents or t.suspended:
            continue
        if reference is None:
            rates = [(s.rate, k) for k, s in t.bands.items() if isinstance(s, BandRate)]
        else:
            rates = [(b["reference_rate"], b["name"]) for b in band_table(t.bands, reference)
                     if b["reference_rate"] is not None]
        for rate, band in rates:
            if rate > 0 and (top is None or rate < top[0]):
                top = (rate, f"{t.tenant_id}'s {band}")
    if top is None:
        return CalibrationNeed(MIN_CALIBRATION_EVENTS, "")
    need = math.ceil(MIN_ABOVE_TOP_BAND / top[0])
    if need <= MIN_CALIBRATION_EVENTS:
        return CalibrationNeed(MIN_CALIBRATION_EVENTS, "")
    return CalibrationNeed(need, f"the top band, {top[1]}, alerts {top[0]:.3%} of the reference: "
                                 f"{MIN_ABOVE_TOP_BAND} events above it take {need:,}")


def tenant_map_needs(tenants: Iterable[TenantConfig] | None, intent: str, reference: ReferenceDistribution | None,
                     floor: int) -> tuple[int, dict[str, int]]:
    """The events a tenant's own map needs: 50 above its own top band, as the whole window needs for the
    intent's top band (a map on fewer drifts deployment after deployment: issue 14 saw a 0.5% band at 1.24%
    after ten), and at least `floor`. Returns the need of a tenant not listed (the intent's whole need, the
    most any listed tenant needs) and each listed tenant's need."""
    listed = [t for t in tenants or () if intent in t.intents and not t.suspended]
    default = max(floor, calibration_need(listed, intent, reference).events)
    return default, {t.tenant_id: max(floor, calibration_need([t], intent, reference).events) for t in listed}


def check_calibration_size(n: int, need: CalibrationNeed, what: str) -> None:
    """DataError saying how many more events are needed, unless n is enough."""
    if n >= need.events:
        return
    why = f" ({need.why})" if need.why else ""
    raise DataError(f"{what}: {n:,} calibration events; {need.events:,} needed{why}: "
                    f"{need.events - n:,} more")
