"""Drift: is a tenant's live reference-scale score distribution still the intent's reference?

Per (tenant, intent), each batch adds two count vectors to a sliding window: scores per PSI bin (bins of
equal mass under the reference) and decisions per band. Every update interval the window is judged:

- PSI = sum((a - e) * ln(a / e)) over the bins, a the live share and e the reference share;
- per band, the observed alert rate (share of scores at or above the band's threshold) against the rate
  the reference implies there, 1 - F_ref(threshold), judged only where the reference expects at least
  `min_expected_alerts` alerts in the window.

Crossing a bound (PSI > psi_max, or an alert-rate ratio outside [1/r, r]) logs one warning with the
figures; the state clears, with one info line, only once every figure is back well inside
(75% of the log-distance), so a figure hovering at a bound does not flood the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from muse_stream.config import DriftSettings
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.telemetry.windows import SlidingCounts

logger = logging.getLogger(__name__)

_EPS = 1e-4  # floor for shares in PSI, so an empty bin costs a bounded amount
_CLEAR = 0.75


@dataclass
class BandFigure:
    band: str
    threshold: float
    observed: float  # share of window scores >= threshold
    expected: float  # 1 - F_ref(threshold)
    judged: bool  # enough expected alerts to judge the ratio

    @property
    def ratio(self) -> float | None:
        return self.observed / self.expected if self.expected > 0 else None


@dataclass
class DriftVerdict:
    tenant: str
    intent: str
    version: str  # the version that scored the tenant's latest batch
    events: int  # scores in the window
    psi: float | None  # None: too few scores for a verdict
    bands: list[BandFigure] = field(default_factory=list)
    drifted: bool = False
    since: float | None = None  # wall-clock seconds when the current drift state began

    def as_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "intent": self.intent,
            "version": self.version,
            "events": self.events,
            "psi": self.psi,
            "drifted": self.drifted,
            "since": self.since,
            "bands": [
                {
                    "band": b.band,
                    "threshold": b.threshold,
                    "observed": b.observed,
                    "expected": b.expected,
                    "ratio": b.ratio,
                    "judged": b.judged,
                }
                for b in self.bands
            ],
        }


class _Binning:
    """PSI bin edges for one reference, and each bin's reference share."""

    def __init__(self, ref: ReferenceDistribution, bins: int) -> None:
        inner = ref.quantile(np.arange(1, bins) / bins)
        self.edges = np.unique(inner)  # ties in the reference collapse bins rather than leave empty ones
        cdf = ref.cdf(self.edges)
        self.expected = np.maximum(np.diff(np.concatenate([[0.0], cdf, [1.0]])), _EPS)
        self.size = self.edges.size + 1
        self.ref = ref


class DriftMonitor:
    """Sliding-window drift per (tenant, intent); the worker adds per batch and evaluates on a timer."""

    def __init__(self, settings: DriftSettings, reference_for: Callable[[str], ReferenceDistribution | None]):
        self.settings = settings
        self._reference_for = reference_for
        self._window = SlidingCounts(settings.window_s)
        self._binnings: dict[str, _Binning] = {}
        self._bands: dict[tuple[str, str], tuple[tuple[str, ...], tuple[float, ...]]] = {}
        self._version: dict[tuple[str, str], str] = {}
        self._since: dict[tuple[str, str], float] = {}  # keys currently in drift
        self.verdicts: dict[tuple[str, str], DriftVerdict] = {}

    def _binning(self, intent: str) -> _Binning | None:
        ref = self._reference_for(intent)
        if ref is None:
            return None
        b = self._binnings.get(intent)
        if b is None or b.ref is not ref:
            b = self._binnings[intent] = _Binning(ref, self.settings.psi_bins)
        return b

    def add(
        self,
        tenant: str,
        intent: str,
        version: str,
        scores: np.ndarray,
        band_counts: np.ndarray,
        band_names: list[str],
        thresholds: np.ndarray,
        now: float,
    ) -> None:
        """One batch's scores of one (tenant, intent); band_counts[i]: its decisions in band_names[i];
        thresholds: those of bands 1..n (band 0 is below them all)."""
        if scores.size == 0:
            return
        binning = self._binning(intent)
        if binning is None:
            return
        key = (tenant, intent)
        meta = (tuple(band_names), tuple(thresholds.tolist()))
        if self._bands.get(key) != meta:  # new bands: their old counts mean something else
            self._window.reset(key)
            self._bands[key] = meta
        psi_counts = np.bincount(np.searchsorted(binning.edges, scores, side="right"), minlength=binning.size)
        self._window.add(key, np.concatenate([psi_counts, band_counts]), now)
        self._version[key] = version

    def evaluate(self, now: float) -> list[DriftVerdict]:
        """Judge every window; log crossings; returns the verdicts (also kept in `verdicts`)."""
        verdicts: dict[tuple[str, str], DriftVerdict] = {}
        for key, counts in self._window.totals(now):
            binning = self._binning(key[1])
            meta = self._bands.get(key)
            if binning is None or meta is None or counts.size != binning.size + len(meta[0]):
                continue
            v = self._judge(key, counts, binning, meta)
            verdicts[key] = v
            self._transition(key, v, now)
        for key in list(self._since):
            if key not in verdicts:  # the window emptied: nothing left to be drifted about
                self._since.pop(key)
        self.verdicts = verdicts
        return list(verdicts.values())

    def _judge(self, key, counts: np.ndarray, binning: _Binning, meta) -> DriftVerdict:
        s = self.settings
        psi_counts, band_counts = counts[: binning.size], counts[binning.size :]
        n = int(psi_counts.sum())
        v = DriftVerdict(key[0], key[1], self._version.get(key, ""), n, None)
        if n < s.min_events:
            return v
        a = np.maximum(psi_counts / n, _EPS)
        e = binning.expected
        v.psi = float(np.sum((a - e) * np.log(a / e)))
        names, thresholds = meta
        at_or_above = np.cumsum(band_counts[::-1])[::-1]  # [b] = decisions in band b or higher
        expected = 1.0 - binning.ref.cdf(np.asarray(thresholds, dtype=np.float64))
        for i, (name, thr) in enumerate(zip(names[1:], thresholds)):
            exp = float(expected[i])
            v.bands.append(
                BandFigure(name, thr, float(at_or_above[i + 1]) / n, exp, exp * n >= s.min_expected_alerts)
            )
        return v

    def _beyond(self, v: DriftVerdict, scale: float) -> list[str]:
        """What is beyond the bounds shrunk by `scale` (1: the bounds; < 1: the clearing bounds)."""
        s = self.settings
        out = []
        if v.psi is not None and v.psi > s.psi_max * scale:
            out.append(f"PSI {v.psi:.3f} > {s.psi_max * scale:.3g}")
        r = s.alert_ratio_max**scale
        for b in v.bands:
            ratio = b.ratio
            if not b.judged or ratio is None:
                continue
            if ratio > r or ratio < 1.0 / r:
                out.append(
                    f"alert rate at {b.band} {100 * b.observed:.3g}% vs {100 * b.expected:.3g}% from the reference "
                    f"(x{ratio:.2f})"
                )
        return out

    def _transition(self, key, v: DriftVerdict, now: float) -> None:
        if v.psi is None:  # too few scores: no verdict, and no change of state
            v.drifted = key in self._since
            v.since = self._since.get(key)
            return
        if key not in self._since:
            why = self._beyond(v, 1.0)
            if why:
                self._since[key] = now
                logger.warning(
                    "drift: tenant %s intent %s (version %s): %s, over %d scores in the last %ds; "
                    "the transform may need refreshing",
                    v.tenant,
                    v.intent,
                    v.version,
                    "; ".join(why),
                    v.events,
                    self.settings.window_s,
                    extra={
                        "fields": {
                            "event": "drift",
                            "tenant": v.tenant,
                            "intent": v.intent,
                            "version": v.version,
                            "psi": round(v.psi, 5),
                            "events": v.events,
                            "window_s": self.settings.window_s,
                            "bands": {
                                b.band: {"observed": b.observed, "expected": b.expected} for b in v.bands
                            },
                        }
                    },
                )
        elif not self._beyond(v, _CLEAR):
            logger.info(
                "drift cleared: tenant %s intent %s (version %s): PSI %.3f over %d scores",
                v.tenant,
                v.intent,
                v.version,
                v.psi,
                v.events,
                extra={
                    "fields": {
                        "event": "drift_cleared",
                        "tenant": v.tenant,
                        "intent": v.intent,
                        "version": v.version,
                        "psi": round(v.psi, 5),
                        "events": v.events,
                    }
                },
            )
            self._since.pop(key)
        v.drifted = key in self._since
        v.since = self._since.get(key)
