"""Publishing a model version: score the calibration set, fit and check the transform, publish, report."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import DataError, ModelError, TransformError
from muse_stream.models.bands import band_table
from muse_stream.models.calibration_size import (
    MIN_CALIBRATION_EVENTS,
    calibration_need,
    check_calibration_size,
    tenant_map_needs,
)
from muse_stream.models.feature_contract import FeatureContract
from muse_stream.models.probe import check_probabilities, predict
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.records import VersionRecord
from muse_stream.models.registry import load_version
from muse_stream.models.store import publish, read_models
from muse_stream.models.tabular import read_table
from muse_stream.models.transform import fit_score_transform

logger = logging.getLogger(__name__)
__all__ = ["MIN_CALIBRATION_EVENTS", "publish_from_files", "publish_from_shadow"]


def load_booster(path: str | Path):
    """A booster file (UBJSON or JSON) and its feature names."""
    import xgboost as xgb

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: booster file not found")
    booster = xgb.Booster()
    try:
        booster.load_model(str(p))
    except xgb.core.XGBoostError as e:
        # xgboost's first line carries its log time, its source line and the path again: only its last clause,
        # with the path dropped, adds anything.
        said = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*|\s*(in:?)?\s*`?" + re.escape(str(p)) + "`?", "",
                      str(e).splitlines()[0]).rsplit(" : ", 1)[-1].strip(" .:")
        raise ModelError(f"{p}: not an XGBoost model ({said[:200] or 'xgboost cannot read it'})") from None
    except UnicodeDecodeError:
        # xgboost quotes the file's bytes in its error and fails decoding them: the file is no model either.
        raise ModelError(f"{p}: not an XGBoost model (neither UBJSON nor JSON that xgboost can read)") from None
    if not booster.feature_names:
        raise ModelError(f"{p}: the booster has no feature names; train it with named features")
    return booster, list(booster.feature_names)


def feature_matrix(table: dict[str, np.ndarray], features: list[str], source: str) -> np.ndarray:
    missing = [f for f in features if f not in table]
    if missing:
        raise DataError(f"{source}: the booster's features {missing[:5]}{'...' if len(missing) > 5 else ''} "
                        f"are not columns of the calibration set")
    bad = [f for f in features if table[f].dtype == object]
    if bad:
        raise DataError(f"{source}: feature columns {bad[:5]} are not numeric")
    return np.column_stack([table[f] for f in features]).astype(np.float32)


def served_scores(model, x: np.ndarray, tenant_ids: np.ndarray | None) -> np.ndarray:
    """What a loaded version would serve: transformed scores, with each tenant's own map where it has one."""
    return model.transform.apply(np.asarray(model.predict(x), dtype=np.float64), tenant_ids)


@dataclass
class PublishReport:
    record: VersionRecord
    aligned_to: str | None
    rows: list[BandRow]


class BandRow(NamedTuple):
    """One tenant band in a publish report: as given, as a threshold on the intent's reference scale, the share
    of the reference population at or above it, and the alert rates on the calibration set."""

    tenant: str
    band: str
    spec: str  # as given: `1%` (a rate) or `0.995` (a threshold)
    threshold: float
    reference_rate: float
    incumbent: float | None
    raw: float
    new: float


def _band_rows(tenant: TenantConfig, reference: ReferenceDistribution, mask: np.ndarray, inc: np.ndarray | None,
               raw: np.ndarray, new: np.ndarray) -> list[BandRow]:
    rows = []
    for b in band_table(tenant.bands, reference):
        thr = b["threshold"]
        rows.append(BandRow(tenant.tenant_id, b["name"], b["text"], thr, b["reference_rate"],
                            None if inc is None else float(np.mean(inc[mask] >= thr)),
                            float(np.mean(raw[mask] >= thr)), float(np.mean(new[mask] >= thr))))
    return rows


def publish_from_files(settings: Settings, *, intent: str, booster_path: str | Path, calibration_path: str | Path,
                       label_column: str | None = None, tenant_column: str | None = None,
                       negative_sampling_rate: float | None = None, train_prevalence: float | None = None,
                       prod_prevalence: float | None = None, align: bool = True, activate: bool = False,
                       activate_at: int | None = None, min_tenant_events: int = 2000,
                       tenants: list[TenantConfig] | None = None, shadow: bool = False,
                       also=None) -> PublishReport:
    """Publish a booster file's next version, its transform fitted on a calibration file (aligned to the incumbent
    when there is one). `also`: records written with the version (store.publish)."""
    booster, features = load_booster(booster_path)
    table = read_table(calibration_path)
    if label_column is not None and label_column not in table:
        raise DataError(f"{calibration_path}: label column {label_column!r} not found")
    x = feature_matrix(table, features, str(calibration_path))
    if len(x) < MIN_CALIBRATION_EVENTS:  # before reading Kafka: the floor needs no reference
        raise DataError(f"{calibration_path}: {len(x)} calibration events; at least {MIN_CALIBRATION_EVENTS} needed")
    tenant_ids = None
    if tenant_column is not None:
        if tenant_column not in table:
            raise DataError(f"{calibration_path}: tenant column {tenant_column!r} not found")
        tenant_ids = np.asarray([str(t) for t in table[tenant_column]], dtype=object)
    raw = predict(booster, x, f"the calibration set {calibration_path}")
    # Refused before anything is fitted: a booster whose outputs are not probabilities would have every
    # worker dead-letter (model_error) the events it scores outside [0, 1].
    check_probabilities(booster, what=str(booster_path), n_features=len(features), calibration_raw=raw,
                        calibration_x=x, max_abs_feature=settings.runtime.max_abs_feature)
    reg = read_models(settings)
    ref_rec = reg.references.get(intent)
    reference = ReferenceDistribution.from_dict(ref_rec.reference) if ref_rec else None
    check_calibration_size(len(x), calibration_need(tenants, intent, reference), str(calibration_path))
    incumbent = None
    act = reg.activations.get(intent)
    if act is not None:
        rec = reg.versions.get((intent, act.version))
        if rec is None:  # its record was deleted (a tombstone): publishing a new version is the way out
            logger.warning("the active %s@%d is not on the models topic (its record was deleted): publishing "
                           "without aligning to it", intent, act.version)
        else:
            incumbent = load_version(rec)
    incumbent_scores = None
    if align and incumbent is not None and reference is not None:
        try:
            incumbent_scores = served_scores(incumbent, feature_matrix(table, list(incumbent.features),
                                                                       str(calibration_path)), tenant_ids)
        except DataError as e:
            logger.warning("not aligning to %s (%s); fitting onto the fixed reference", incumbent.name, e)
    # A tenant's own map only from enough events for its top band (on a first version, its rate bands).
    default, per = tenant_map_needs(tenants, intent, reference, min_tenant_events)
    st, reference = fit_score_transform(
        raw, reference=reference, incumbent_ref_scores=incumbent_scores, tenant_ids=tenant_ids,
        min_tenant_events=default, tenant_min_events=per, negative_sampling_rate=negative_sampling_rate,
        train_prevalence=train_prevalence, prod_prevalence=prod_prevalence)
    new_scores = st.apply(raw, tenant_ids)
    order = np.argsort(raw, kind="stable")
    if np.any(np.diff(new_scores[order]) < -1e-12) and tenant_ids is None:
        raise TransformError("the fitted transform is not monotone; nothing was published")
    metadata = {"calibration_file": Path(calibration_path).name, "calibration_events": len(x),
                "aligned_to": incumbent.name if incumbent_scores is not None else None,
                "negative_sampling_rate": negative_sampling_rate, "train_prevalence": train_prevalence,
                "prod_prevalence": prod_prevalence}
    if label_column is not None:
        metadata["calibration_positives"] = int(np.nansum(table[label_column]))
    rec = publish(settings, intent=intent, booster_bytes=bytes(booster.save_raw("ubj")), features=features,
                  transform=st.to_dict(), reference=reference.to_dict(),
                  reference_source=f"{intent} first version calibration", metadata=metadata,
                  activate=activate, activate_at=activate_at, shadow=shadow,
                  feature_contract=FeatureContract.from_matrix(features, x).to_dict(), also=also)
    inc_scores = served_scores(incumbent, feature_matrix(table, list(incumbent.features), "calibration"),
                               tenant_ids) if incumbent is not None and _has(table, incumbent.features) else None
    rows = []
    for t in tenants or []:
        if intent not in t.intents:
            continue
        mask = np.ones(len(x), bool) if tenant_ids is None or not (tenant_ids == t.tenant_id).any() \
            else tenant_ids == t.tenant_id
        rows += _band_rows(t, reference, mask, inc_scores, raw, new_scores)
    return PublishReport(rec, metadata["aligned_to"], rows)


def _has(table: dict, features) -> bool:
    return all(f in table and table[f].dtype != object for f in features)


def parse_duration(text: str) -> int:
    """'90s', '30m', '2h', '1d' or plain milliseconds -> milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    t = text.strip().lower()
    for suffix in ("ms", "s", "m", "h", "d"):
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(suffix)]) * units[suffix])
    if t.isdigit():
        return int(t)
    raise DataError(f"{text!r}: expected a duration such as 90s, 30m, 2h or 1d")


def publish_from_shadow(settings: Settings, *, intent: str, version: int, window_ms: int,
                        min_tenant_events: int = 2000, activate: bool = False,
                        tenants: list[TenantConfig] | None = None) -> PublishReport:
    """Fit a shadow version's transform aligned to the incumbent on its shadow window; publish it anew."""
    import base64

    from muse_stream.models.shadow_window import read_shadow_window

    reg = read_models(settings)
    rec = reg.versions.get((intent, version))
    if rec is None:
        raise ModelError(f"{intent}@{version} is not on the models topic")
    ref_rec = reg.references.get(intent)
    if ref_rec is None:
        raise ModelError(f"intent {intent!r} has no reference distribution")
    win = read_shadow_window(settings, intent, version, window_ms)
    reference = ReferenceDistribution.from_dict(ref_rec.reference)
    check_calibration_size(win["shadow_raw"].size, calibration_need(tenants, intent, reference),
                           f"the shadow window of {rec.name}")
    # The shadow's raw scores are its calibration outputs; with no feature matrix here, the probe's ranges
    # come from the booster's split thresholds.
    check_probabilities(load_version(rec).booster, what=rec.name, n_features=len(rec.features),
                        calibration_raw=win["shadow_raw"], max_abs_feature=settings.runtime.max_abs_feature)
    # Refit with the same posterior correction the version was published with.
    prior = {k: rec.transform.get("correction", {}).get(k)
             for k in ("negative_sampling_rate", "train_prevalence", "prod_prevalence")}
    default, per = tenant_map_needs(tenants, intent, reference, min_tenant_events)
    st, _ = fit_score_transform(
        win["shadow_raw"], reference=reference, incumbent_ref_scores=win["incumbent"], tenant_ids=win["tenants"],
        min_tenant_events=default, tenant_min_events=per, **prior)
    new_scores = st.apply(win["shadow_raw"], win["tenants"])
    booster_bytes = base64.b64decode(rec.booster_b64)
    metadata = {**rec.metadata, "from_shadow": rec.name, "shadow_window_ms": window_ms,
                "calibration_events": int(win["shadow_raw"].size), "aligned_to": "the shadow window's incumbents"}
    # The shadow window holds scores, not features: the version keeps the contract of the calibration data
    # it was first published with.
    new = publish(settings, intent=intent, booster_bytes=booster_bytes, features=list(rec.features),
                  transform=st.to_dict(), metadata=metadata, activate=activate,
                  feature_contract=rec.feature_contract)
    rows = []
    for t in tenants or []:
        if intent not in t.intents:
            continue
        mask = win["tenants"] == t.tenant_id
        if not mask.any():
            continue
        rows += _band_rows(t, reference, mask, win["incumbent"], win["shadow_raw"], new_scores)
    return PublishReport(new, "the incumbent on the shadow window", rows)

