"""Threshold bands on an intent's reference scale, and alert-rate bands turned into thresholds.

A band is a threshold on the reference scale or an alert rate (`{rate = 0.01}`): the threshold at which that
share of the intent's reference population alerts, F_ref^-1(1 - rate). The reference of an intent is fixed
once (the first ReferenceRecord on the models topic, never moved), so a rate resolves to one threshold per
(band set, intent), cached, and that threshold stays put across model versions: every version's transform
maps onto the same scale. A tenant may use several intents, each with its own reference, so one rate gives
each intent its own threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from muse_stream.bandspec import BandRate, BandSpec
from muse_stream.errors import MuseError
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.records import ReferenceRecord

logger = logging.getLogger(__name__)

ReferenceLookup = Callable[[str], ReferenceDistribution | None]


class Bands:
    """A tenant's bands as sorted arrays, so a batch of scores gets its bands with one searchsorted.

    Two bands on one threshold (possible only once rates are resolved) keep their order as written: the one
    written later is the one assigned, the other is never reached."""

    def __init__(self, bands: Mapping[str, float]) -> None:
        items = sorted(bands.items(), key=lambda kv: kv[1])
        self.thresholds = np.array([v for _, v in items], dtype=np.float64)
        self.names = ["approve"] + [k for k, _ in items]

    def assign(self, scores: np.ndarray) -> np.ndarray:
        """Index into `names` for each score: the highest band whose threshold the score reaches."""
        return np.searchsorted(self.thresholds, scores, side="right")


def resolve_bands(bands: Mapping[str, BandSpec], reference: ReferenceDistribution | None) -> dict[str, float]:
    """The thresholds of a band set on one intent's reference scale: a threshold as given, a rate r as
    F_ref^-1(1 - r). With no reference (an intent nothing was published for yet, so it has no model either and
    its events are dead-lettered as no_active_model) rate bands are left out: they have no threshold yet."""
    rates = {k: s.rate for k, s in bands.items() if isinstance(s, BandRate)}
    out = {k: float(s) for k, s in bands.items() if not isinstance(s, BandRate)}
    if rates and reference is not None:
        thr = reference.quantile(1.0 - np.fromiter(rates.values(), dtype=np.float64, count=len(rates)))
        out.update(zip(rates, thr.tolist()))
    return {k: out[k] for k in bands if k in out}  # the order as written: it breaks ties (see Bands)


def reference_rates(thresholds: Mapping[str, float], reference: ReferenceDistribution) -> dict[str, float]:
    """The share of the intent's reference population at or above each threshold: 1 - F_ref(t)."""
    if not thresholds:
        return {}
    cdf = reference.cdf(np.fromiter(thresholds.values(), dtype=np.float64, count=len(thresholds)))
    return {k: float(1.0 - c) for k, c in zip(thresholds, cdf.tolist())}


def format_band(spec: BandSpec) -> str:
    """`1%` for a rate, `0.995` for a threshold: the form the `tenants set --band` option takes."""
    if isinstance(spec, BandRate):
        return f"{spec.rate * 100:.10g}%"
    return f"{spec:.10g}"


def format_bands(bands: Mapping[str, BandSpec]) -> str:
    return ", ".join(f"{k}={format_band(s)}" for k, s in bands.items()) or "(none)"


def band_ties(bands: Mapping[str, BandSpec], reference: ReferenceDistribution | None) -> list[tuple[str, str]]:
    """Pairs of bands that land on one threshold on this reference: the first of each is never assigned."""
    thr = resolve_bands(bands, reference)
    names = list(thr)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if thr[a] == thr[b]]


def band_table(bands: Mapping[str, BandSpec], reference: ReferenceDistribution | None) -> list[dict]:
    """Each band as given and as it acts on one intent's reference: name, spec (a threshold, or {"rate": r}),
    text (`1%` / `0.995`), threshold and reference_rate (None while the intent has no reference and the
    band is a rate; reference_rate None without a reference). Lowest threshold first, unresolved last."""
    thr = resolve_bands(bands, reference)
    rates = reference_rates(thr, reference) if reference is not None else {}
    rows = [{"name": k, "spec": s.model_dump() if isinstance(s, BandRate) else s, "text": format_band(s),
             "threshold": thr.get(k), "reference_rate": rates.get(k)} for k, s in bands.items()]
    return sorted(rows, key=lambda r: (r["threshold"] is None, r["threshold"] or 0.0))


class ReferenceCache:
    """intent -> ReferenceDistribution, read from a live mapping of ReferenceRecords (a ModelRegistry's
    `references`), each record parsed once. A record that does not parse is None (warned once)."""

    def __init__(self, records: Callable[[], Mapping[str, ReferenceRecord]]) -> None:
        self._records = records
        self._parsed: dict[str, tuple[ReferenceRecord, ReferenceDistribution | None]] = {}

    def __call__(self, intent: str) -> ReferenceDistribution | None:
        rec = self._records().get(intent)
        if rec is None:
            return None
        hit = self._parsed.get(intent)
        if hit is None or hit[0] is not rec:
            try:
                ref = ReferenceDistribution.from_dict(rec.reference)
            except MuseError as e:
                logger.warning("reference of %s unusable (rate bands, drift): %s", intent, e)
                ref = None
            hit = self._parsed[intent] = (rec, ref)
        return hit[1]
