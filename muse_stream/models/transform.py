"""The per-version score transform: raw model scores onto an intent's fixed reference scale.

Two monotone levels (see the architecture guide, "Score transformation"): ``PosteriorCorrection``
(correction.py) undoes the prior shift of training; ``QuantileMap`` (quantile.py) maps corrected scores onto
the reference. ``ScoreTransform`` bundles level 1, the intent-level map and optional per-tenant maps, and
serves a whole batch of mixed tenants in one call; ``fit_score_transform`` fits one for a model version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from muse_stream.errors import TransformError
from muse_stream.models.correction import PosteriorCorrection
from muse_stream.models.knots import (
    FORMAT,
    MIN_FIT_SCORES,
    as_1d,
    as_probabilities,
    calibration_scores,
    record_field,
)
from muse_stream.models.quantile import NanPolicy, QuantileMap, ReferenceDistribution, Tails

logger = logging.getLogger(__name__)

DEFAULT_MIN_TENANT_EVENTS = 2000


class ScoreTransform:
    """A model version's full transform: posterior correction, intent map, optional tenant maps.

    A tenant without its own map (too few calibration events) is served by the intent map.
    """

    def __init__(
        self,
        *,
        correction: PosteriorCorrection,
        intent_map: QuantileMap,
        tenant_maps: Mapping[str, QuantileMap] | None = None,
        min_tenant_events: int = DEFAULT_MIN_TENANT_EVENTS,
    ) -> None:
        correction._check_fitted()
        intent_map._check_fitted()
        maps = dict(tenant_maps or {})
        for tid, qm in maps.items():
            if not isinstance(tid, str) or not tid:
                raise TransformError(f"tenant id must be a non-empty string, got {tid!r}")
            qm._check_fitted()
        self.correction = correction
        self.intent_map = intent_map
        self._tenant_maps = maps
        self.min_tenant_events = int(min_tenant_events)
        # Map 0 serves every row whose tenant has no map of its own; tenant maps follow in sorted order.
        self._maps = (intent_map, *(maps[t] for t in sorted(maps)))
        self._codes = {t: k for k, t in enumerate(sorted(maps), start=1)}

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        """Tenants with their own level-2 map, sorted."""
        return tuple(sorted(self._tenant_maps))

    def has_tenant_map(self, tenant_id: str | None) -> bool:
        return tenant_id in self._tenant_maps

    def map_for(self, tenant_id: str | None) -> QuantileMap:
        """The level-2 map that serves `tenant_id`: its own, else the intent's."""
        return self._tenant_maps.get(tenant_id, self.intent_map) if tenant_id is not None else self.intent_map

    def apply(self, raw: Any, tenant_ids: str | Sequence[str | None] | np.ndarray | None = None) -> np.ndarray:
        """Raw model probabilities -> reference-scale scores, float64.

        tenant_ids: None (every row on the intent map), one tenant id for every row, or one id (or None) per
        row. A row goes through its tenant's own map where the tenant has one, else through the intent map:
        each map is applied once, to all of its rows, and the result is the same as applying it row by row.
        """
        p = self.correction._apply(as_probabilities(raw, "raw scores"))
        if tenant_ids is None or isinstance(tenant_ids, str):
            return self.map_for(tenant_ids)._apply(p)
        codes = self._map_codes(tenant_ids, p.size)
        if codes is None:
            return self.intent_map._apply(p)
        # Rows sorted by map (stable), so each map's rows are one slice of `order`.
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(self._maps))
        ends = np.cumsum(counts)
        out = np.empty_like(p)
        for k in np.flatnonzero(counts).tolist():
            rows = order[ends[k] - counts[k]:ends[k]]
            out[rows] = self._maps[k]._apply(p[rows])
        return out

    def _map_codes(self, tenant_ids: Sequence[str | None] | np.ndarray, n: int) -> np.ndarray | None:
        """Per row, the index in self._maps of the map serving it; None when every row takes the intent map."""
        if isinstance(tenant_ids, np.ndarray) and tenant_ids.ndim != 1:
            raise TransformError(f"tenant_ids: expected one id per score, got shape {tenant_ids.shape}")
        ids = tenant_ids.tolist() if isinstance(tenant_ids, np.ndarray) else list(tenant_ids)
        if len(ids) != n:
            raise TransformError(f"tenant_ids: {len(ids)} ids for {n} scores")
        if not self._tenant_maps:
            return None
        try:
            # dict.get mapped over the ids runs in C: no Python bytecode per row.
            codes = np.fromiter(map(self._codes.get, ids, repeat(0)), dtype=np.intp, count=n)
        except TypeError:
            raise TransformError("tenant_ids: every id must be a string or None") from None
        return codes if codes.any() else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "correction": self.correction.to_dict(),
            "intent_map": self.intent_map.to_dict(),
            "tenant_maps": {tid: self._tenant_maps[tid].to_dict() for tid in self.tenant_ids},
            "min_tenant_events": self.min_tenant_events,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreTransform:
        what = "score transform"
        if record_field(d, "format", what) != FORMAT:
            raise TransformError(f"{what}: unsupported format {d['format']!r}")
        tenants = record_field(d, "tenant_maps", what)
        if not isinstance(tenants, Mapping):
            raise TransformError(f"{what}: tenant_maps must be a dict")
        mte = record_field(d, "min_tenant_events", what)
        if isinstance(mte, bool) or not isinstance(mte, int) or mte < 1:
            raise TransformError(f"{what}: invalid min_tenant_events {mte!r}")
        return cls(
            correction=PosteriorCorrection.from_dict(record_field(d, "correction", what)),
            intent_map=QuantileMap.from_dict(record_field(d, "intent_map", what)),
            tenant_maps={tid: QuantileMap.from_dict(m) for tid, m in tenants.items()},
            min_tenant_events=mte,
        )


def _tenant_groups(tenant_ids: Sequence[str | None] | np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Row indices per tenant; None rows belong to no tenant."""
    tids = np.asarray(tenant_ids, dtype=object)
    if tids.shape != (n,):
        raise TransformError(f"tenant_ids: expected {n} ids, got shape {tids.shape}")
    present = np.fromiter((t is not None for t in tids), dtype=bool, count=n)
    if not all(isinstance(t, str) and t for t in tids[present]):
        raise TransformError("tenant_ids: every id must be a non-empty string or None")
    idx = np.flatnonzero(present)
    names, inverse = np.unique(tids[present].astype(str), return_inverse=True)
    return {str(name): idx[inverse == i] for i, name in enumerate(names)}


def fit_score_transform(
    raw_scores: Any,
    *,
    reference: ReferenceDistribution | None = None,
    incumbent_ref_scores: Any = None,
    tenant_ids: Sequence[str | None] | np.ndarray | None = None,
    min_tenant_events: int = DEFAULT_MIN_TENANT_EVENTS,
    tenant_min_events: Mapping[str, int] | None = None,
    negative_sampling_rate: float | None = None,
    train_prevalence: float | None = None,
    prod_prevalence: float | None = None,
    levels: Any = None,
    tails: Tails = "extend",
    nan_policy: NanPolicy = "propagate",
) -> tuple[ScoreTransform, ReferenceDistribution]:
    """Fit a model version's transform on its raw calibration scores (events it did not train on).

    reference None: the first model of an intent; the reference is built from these corrected scores
    and returned. Otherwise the given reference is used and returned unchanged.
    incumbent_ref_scores: the incumbent's served (reference-scale, tenant maps included) scores for the
    same events; when given, every level-2 map is aligned to the incumbent (needs the reference).
    tenant_ids: one id (or None) per score; tenants with >= min_tenant_events events get their own map, or
    with tenant_min_events, the tenant's own figure there where it has one (calibration_size.tenant_map_needs).
    """
    if min_tenant_events < MIN_FIT_SCORES:
        raise TransformError(f"min_tenant_events must be at least {MIN_FIT_SCORES}")
    raw = calibration_scores(raw_scores, "raw calibration scores")
    correction = PosteriorCorrection(
        negative_sampling_rate=negative_sampling_rate,
        train_prevalence=train_prevalence,
        prod_prevalence=prod_prevalence,
    ).fit()
    p = correction._apply(raw)
    target = None
    if incumbent_ref_scores is not None:
        if reference is None:
            raise TransformError("aligning to an incumbent needs the intent's reference")
        target = as_1d(incumbent_ref_scores, "incumbent_ref_scores")
        if target.size != p.size:
            raise TransformError(f"incumbent_ref_scores: {target.size} scores for {p.size} events")
    if reference is None:
        reference = ReferenceDistribution.from_scores(p, levels=levels)

    def new_map(rows: np.ndarray | None) -> QuantileMap:
        qm = QuantileMap(levels=levels, tails=tails, nan_policy=nan_policy)
        if rows is None:
            return qm.fit(p, reference=reference, target_scores=target)
        return qm.fit(p[rows], reference=reference, target_scores=None if target is None else target[rows])

    intent_map = new_map(None)
    tenant_maps: dict[str, QuantileMap] = {}
    if tenant_ids is not None:
        groups = _tenant_groups(tenant_ids, p.size)
        needs = tenant_min_events or {}
        for tid, rows in groups.items():
            if rows.size >= max(MIN_FIT_SCORES, needs.get(tid, min_tenant_events)):
                tenant_maps[tid] = new_map(rows)
        logger.info(
            "tenant maps: %d of %d tenants have >= %d calibration events",
            len(tenant_maps),
            len(groups),
            min_tenant_events,
        )
    st = ScoreTransform(
        correction=correction,
        intent_map=intent_map,
        tenant_maps=tenant_maps,
        min_tenant_events=min_tenant_events,
    )
    logger.info(
        "score transform fitted on %d events (%s, odds ratio %.6g)",
        p.size,
        "aligned to incumbent" if target is not None else "onto reference",
        correction.odds_ratio_,
    )
    return st, reference
