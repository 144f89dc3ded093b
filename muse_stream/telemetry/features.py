"""Feature telemetry: missing values per (tenant, feature), ignored unknown fields, and contract drift.

Per batch, from the matrices the scorer built (BatchOutput.matrices: the float32 rows each version scored and
their tenants), vectorised per tenant group, never per event:

- `muse_feature_missing` counts NaN cells (null or absent values) per (tenant, intent, feature);
- `muse_unknown_features_ignored` takes the fields the contract ignored (the registry's tally, drained);
- per (tenant, version), a sliding window (telemetry.drift.window_s) sums events, missing values and values
  outside the version's contract range, per feature.

Every update interval the windows are judged against each version's feature contract (models/feature_contract).
A feature departs from it when, over at least telemetry.drift.min_events events in the window:

- its missing rate differs from the contract's by more than MISSING_MARGIN (5 percentage points) plus
  MISSING_SIGMAS standard errors of the window's estimate, or
- more than OUT_OF_RANGE_MAX (1%) of its non-missing values (at least MIN_VALUES of them) fall outside the
  contract's [min, max].

Entering that state logs one warning; it clears, with one info line, only once the figure is back within 75%
of the bound, so a figure hovering at a bound does not flood the log. The current departures are in the
worker's /status (`features`) and in the gauge `muse_feature_drift`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from muse_stream.models.feature_contract import MAX_TRACKED_FIELDS, OTHER_FIELD
from muse_stream.telemetry.windows import SlidingCounts

logger = logging.getLogger(__name__)

MISSING_MARGIN = 0.05
MISSING_SIGMAS = 3.0
OUT_OF_RANGE_MAX = 0.01
MIN_VALUES = 100
_CLEAR = 0.75


@dataclass(frozen=True)
class Departure:
    """A feature of a version whose live figure, for one tenant, is away from the version's contract."""

    tenant: str
    intent: str
    version: str
    feature: str
    kind: str  # "missing_rate" or "out_of_range"
    observed: float  # the window's missing rate, or its share of values outside [min, max]
    contract: float  # the contract's missing rate, or 0 (its values were all within its range)
    events: int  # events in the window
    since: float  # wall-clock seconds

    def as_dict(self) -> dict:
        return {"tenant": self.tenant, "intent": self.intent, "version": self.version, "feature": self.feature,
                "kind": self.kind, "observed": self.observed, "contract": self.contract, "events": self.events,
                "since": self.since}


@dataclass
class _Meta:
    intent: str
    features: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    missing: np.ndarray


class FeatureMonitor:
    """Feature metrics and contract drift of one worker (hub: MetricsHub; models: the ModelRegistry)."""

    def __init__(self, hub, settings, models) -> None:
        """settings: TelemetrySettings."""
        self.hub = hub
        self.models = models
        drift = settings.drift
        self.judging = drift.enabled
        self.min_events = drift.min_events
        self.window_s = drift.window_s
        self.interval_s = settings.update_interval_s
        self._window = SlidingCounts(drift.window_s)
        self._meta: dict[str, _Meta | None] = {}  # version name -> its contract as arrays (None: no contract)
        self._since: dict[tuple[str, str, str, str], float] = {}  # (tenant, version, feature, kind) departed
        self._seen: dict[tuple[str, str], float] = {}  # (tenant, version) -> when it last scored an event
        self._fields: set[tuple[str, str]] = set()  # ignored (intent, field) labels in use
        self._next = 0.0
        self.departures: list[Departure] = []  # replaced whole: the endpoint thread reads it
        hub.gauge("muse_feature_drift", unit="1",
                  description="1 while a feature's live missing rate or range departs from its version's contract",
                  values=lambda: [(1, {"tenant": d.tenant, "intent": d.intent, "feature": d.feature, "kind": d.kind})
                                  for d in self.departures])

    # ---- per batch ----------------------------------------------------------------------------------

    def on_batch(self, out, now: float) -> None:
        for m in getattr(out, "matrices", ()):
            if len(m.x):
                self._matrix(m, now)
        self._drain_ignored()
        self.tick(now)

    def tick(self, now: float) -> None:
        """Judge the window when it is due: after a batch, and on the loop's idle turns too (Telemetry.update),
        so a burst that ends is judged without waiting for the next event."""
        if self.judging and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.interval_s
            self.evaluate(now)

    def _matrix(self, m, now: float) -> None:
        """One ScoredMatrix: missing values per tenant and feature; the window's counts when judging."""
        x, names = m.x, m.features
        nan = np.isnan(x)
        meta = self._contract(m.intent, m.model_name) if self.judging else None
        table = self.hub.feature_missing
        for tid, rows in _tenant_rows(m.tenants):
            miss = nan[rows].sum(axis=0)
            for j in np.flatnonzero(miss).tolist():
                table.add((tid, m.intent, names[j]), int(miss[j]))
            if meta is not None:
                xs = x[rows]
                with np.errstate(invalid="ignore"):
                    outside = ((xs < meta.low) | (xs > meta.high)).sum(axis=0)  # NaN compares False
                self._window.add((tid, m.model_name), np.concatenate([[len(xs)], miss, outside]), now)
                self._seen[(tid, m.model_name)] = now

    def _drain_ignored(self) -> None:
        tally = self.models.ignored_features
        if not tally:
            return
        table = self.hub.unknown_features_ignored
        for (intent, name), n in list(tally.items()):
            key = (intent, name)
            if key not in self._fields:
                if len(self._fields) >= MAX_TRACKED_FIELDS:
                    key = (intent, OTHER_FIELD)
                else:
                    self._fields.add(key)
            table.add(key, n)
        tally.clear()

    def _contract(self, intent: str, name: str) -> _Meta | None:
        if name in self._meta:
            return self._meta[name]
        _, _, ver = name.rpartition("@")
        model = self.models.loaded.get((intent, int(ver))) if ver.isdigit() else None
        if model is None:  # not loaded (yet): try again next batch
            return None
        c = model.contract
        meta = None
        if c is not None:
            low, high, missing = c.bounds()
            meta = _Meta(intent, c.features, low, high, missing)
        self._meta[name] = meta
        return meta

    # ---- judging (worker thread, every update interval) ----------------------------------------------

    def evaluate(self, now: float) -> list[Departure]:
        current: list[Departure] = []
        judged: set[tuple[str, str, str, str]] = set()
        for (tid, name), counts in self._window.totals(now):
            meta = self._meta.get(name)
            k = len(meta.features) if meta is not None else -1
            if meta is None or counts.size != 1 + 2 * k:
                continue
            n = int(counts[0])
            if self._superseded(tid, name, meta.intent):
                continue  # another version now scores this tenant's events (a swap): nothing live to judge
            if n < self.min_events:
                # Too few events for a verdict: no change of state.
                kept = [d for d in self.departures if (d.tenant, d.version) == (tid, name)]
                current += kept
                judged |= {(tid, name, d.feature, d.kind) for d in kept}
                continue
            miss, outside = counts[1:1 + k], counts[1 + k:]
            rate = miss / n
            margin = MISSING_MARGIN + MISSING_SIGMAS * np.sqrt(meta.missing * (1 - meta.missing) / n)
            gap = np.abs(rate - meta.missing)
            present = n - miss
            share = outside / np.maximum(present, 1)
            has_range = ~np.isnan(meta.low) & (present >= MIN_VALUES)
            for j, feature in enumerate(meta.features):
                for kind, value, bound, base, on in (
                        ("missing_rate", gap[j], margin[j], meta.missing[j], True),
                        ("out_of_range", share[j], OUT_OF_RANGE_MAX, 0.0, bool(has_range[j]))):
                    key = (tid, name, feature, kind)
                    judged.add(key)
                    observed = float(rate[j]) if kind == "missing_rate" else float(value)
                    if self._state(key, on, float(value), float(bound), now, meta.intent, observed, float(base), n):
                        current.append(Departure(tid, meta.intent, name, feature, kind, observed, float(base), n,
                                                 self._since[key]))
        for key in list(self._since):
            if key not in judged:  # the window emptied, or the version stopped scoring: nothing left to depart
                self._since.pop(key)
        self._seen = {k: t for k, t in self._seen.items() if now - t <= self.window_s}
        self.departures = current
        return current

    def _superseded(self, tid: str, name: str, intent: str) -> bool:
        """Whether another version of the intent has scored one of this tenant's events more than two update
        intervals after this one's last (a quiet input supersedes nothing)."""
        last = self._seen.get((tid, name), 0.0)
        return any(t - last > 2 * self.interval_s for (other_tid, other), t in self._seen.items()
                   if other_tid == tid and other != name and other.rpartition("@")[0] == intent)

    def _state(self, key, on: bool, value: float, bound: float, now: float, intent: str, observed: float,
               base: float, n: int) -> bool:
        """Enter or leave the departed state for one (tenant, version, feature, kind); True while departed."""
        tid, name, feature, kind = key
        what = "missing rate" if kind == "missing_rate" else "share of values outside the contract's range"
        if key not in self._since:
            if on and value > bound:
                self._since[key] = now
                logger.warning(
                    "feature drift: tenant %s intent %s (%s): feature %r %s %.2f%% vs %.2f%% in the contract, "
                    "over %d events in the last %ds; check the producer's field", tid, intent, name, feature,
                    what, 100 * observed, 100 * base, n, self.window_s,
                    extra={"fields": {"event": "feature_drift", "tenant": tid, "intent": intent, "version": name,
                                      "feature": feature, "kind": kind, "observed": observed, "contract": base,
                                      "events": n}})
        elif not on or value <= bound * _CLEAR:
            self._since.pop(key)
            logger.info("feature drift cleared: tenant %s intent %s (%s): feature %r %s %.2f%%", tid, intent, name,
                        feature, what, 100 * observed,
                        extra={"fields": {"event": "feature_drift_cleared", "tenant": tid, "intent": intent,
                                          "version": name, "feature": feature, "kind": kind}})
        return key in self._since

    # ---- read by the endpoint thread ----------------------------------------------------------------

    def status(self) -> dict:
        deps = self.departures
        return {"drifted": bool(deps), "departures": [d.as_dict() for d in deps]}


def _tenant_rows(tenants: list) -> list[tuple[str, np.ndarray | slice]]:
    """Each tenant's rows of a matrix: one slice when the whole matrix is one tenant's (the common case)."""
    first = tenants[0]
    if tenants.count(first) == len(tenants):
        return [(first, slice(None))]
    # Codes by first appearance, from a dict: np.unique of an object array sorts the strings themselves,
    # which cost more than the rest of the feature monitor.
    code = {t: k for k, t in enumerate(dict.fromkeys(tenants))}
    codes = np.fromiter(map(code.__getitem__, tenants), dtype=np.intp, count=len(tenants))
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(code)))[:-1]
    return list(zip(code, np.split(order, bounds)))
