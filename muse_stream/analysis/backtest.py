"""Backtesting a candidate model on a range of the input topic, against the incumbent that served it.

The range is read through the same event contract as live scoring (scoring/contract.py): the events
compared are exactly those live would score with a version of the intent, and each by the version that
would score it (a pinned one, or the activation timeline's at its event time); the ones live would
dead-letter are counted by reason (model_error included: rows the version cannot score are not compared).
A candidate without a transform is fitted on the first part of the range, aligned to the incumbent on the
same events, and judged on the rest. Each event's alerts are judged against the tenant's bands in force at
its event time, as live gave them (one set of rows per band set when a tenant's bands changed in the range).
Everything is sorted by (event_time, partition, offset) first, so the same inputs give the same numbers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from muse_stream.analysis.evaluation import ks_distance, psi, wilson
from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import DataError, ModelError
from muse_stream.kafka.ranges import Bound, RangeReader
from muse_stream.models.lifecycle import load_booster
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.registry import LoadedModel, ModelRegistry, load_version
from muse_stream.models.store import read_models
from muse_stream.models.tabular import read_table
from muse_stream.models.transform import ScoreTransform, fit_score_transform
from muse_stream.scoring.columns import contract_pass
from muse_stream.scoring.contract import Router, feature_matrix, over_limit
from muse_stream.scoring.forest import raw_scores
from muse_stream.tenants import Bands, TenantRegistry, read_tenants

logger = logging.getLogger(__name__)


@dataclass
class RangeEvents:
    """The range's events that live scoring would score with a version of the intent, sorted by (event_time,
    partition, offset), and what live would do with the others."""

    event_ids: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # the version that would score each event
    raw: list[float] = field(default_factory=list)  # that version's raw score of each event, as live has it
    dead_letters: dict[str, int] = field(default_factory=dict)  # reason -> events of the range live dead-letters
    other_intents: int = 0  # events live would score with another intent's model

    @property
    def skipped(self) -> int:
        return self.other_intents + sum(self.dead_letters.values())


def read_range_events(settings: Settings, intent: str, start: Bound, end: Bound,
                      tenants: Mapping[str, TenantConfig], models: ModelRegistry) -> RangeEvents:
    """The range of the input topic through live scoring's contract, with the registries as they are now."""
    reader = RangeReader(settings, settings.topics.events, start, end)
    try:
        return range_events(reader.batches(), intent, tenants, models,
                            max_event_bytes=settings.runtime.max_event_bytes,
                            max_abs_feature=settings.runtime.max_abs_feature)
    finally:
        reader.close()


def range_events(batches: Iterable[list], intent: str, tenants: Mapping[str, TenantConfig], models: ModelRegistry,
                 *, max_event_bytes: int, max_abs_feature: float) -> RangeEvents:
    """Batches of input messages through the contract, as BatchScorer.process takes them: parse, route, then
    per version the value limits and the version's raw scores. Events routed to another intent go through
    that intent's version too, so dead_letters counts every dead letter live would write for these messages."""
    router = Router(tenants, models)  # the registries do not change while a backtest runs
    dead: Counter[str] = Counter()
    rows = []
    other = 0
    for batch in batches:
        # The live scorer's pass on its pure path (the same answers as the compiled one), which keeps each
        # event's features as a dict for the candidate's own matrix.
        cols, groups, refused = contract_pass(batch, router, max_event_bytes, max_abs_feature)
        dead.update(r.reason.value for _, r in refused)
        for model, idx, raw in groups:
            if model.intent != intent:
                other += int(idx.size)
                continue
            rows += [(cols.times[i], batch[i].partition(), batch[i].offset(), cols.eids[i], cols.tids[i],
                      cols.feats[i], model.version, r) for i, r in zip(idx.tolist(), raw.tolist())]
    rows.sort(key=lambda r: r[:3])
    out = RangeEvents(dead_letters={r: n for r, n in sorted(dead.items()) if n}, other_intents=other)
    for et, _, _, eid, tid, feats, version, r in rows:
        out.times.append(int(et))
        out.event_ids.append(eid)
        out.tenants.append(tid)
        out.features.append(feats)
        out.versions.append(version)
        out.raw.append(r)
    return out


def served(model: LoadedModel, x: np.ndarray, tenants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(raw, served) scores of a loaded version, each tenant through its own map where it has one."""
    raw = np.asarray(raw_scores(model, x), dtype=np.float64)
    return raw, model.transform.apply(raw, tenants)


def candidate_matrix(features: list[dict], names: tuple[str, ...], max_abs_feature: float) -> tuple[np.ndarray, int]:
    """The candidate's float32 matrix of the compared events, and how many of them it would dead-letter live
    (a value beyond the limit in a feature only it reads); those values are scored as missing here."""
    x = feature_matrix(features, names)
    over = over_limit(x, max_abs_feature)
    x[over] = np.nan
    return x.astype(np.float32), int(over.any(axis=1).sum())


@dataclass
class Candidate:
    name: str
    booster: object
    features: tuple[str, ...]
    transform: ScoreTransform | None


def resolve_candidate(settings: Settings, spec: str, intent: str, reg) -> Candidate:
    p = Path(spec)
    if p.exists():
        booster, feats = load_booster(p)
        return Candidate(p.name, booster, tuple(feats), None)
    ci, sep, ver = spec.partition("@")
    if not sep or not ver.isdigit():
        raise DataError(f"candidate {spec!r} is neither a booster file nor INTENT@VERSION")
    if ci != intent:
        raise ModelError(f"candidate {spec} is a version of intent {ci!r}, not {intent!r}")
    rec = reg.versions.get((ci, int(ver)))
    if rec is None:
        raise ModelError(f"{spec} is not on the models topic")
    m = load_version(rec)
    return Candidate(m.name, m.booster, m.features, m.transform)


def load_labels(path: str, event_ids: list[str]) -> np.ndarray:
    """Labels aligned to event_ids (NaN where unlabelled); the file needs columns event_id and label."""
    t = read_table(path)
    if "event_id" not in t or "label" not in t:
        raise DataError(f"{path}: needs columns event_id and label")
    ids = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in t["event_id"].tolist()]
    lab = dict(zip(ids, np.asarray(t["label"], dtype=np.float64).tolist()))
    y = np.array([lab.get(e, np.nan) for e in event_ids], dtype=np.float64)
    if np.isnan(y).all():
        raise DataError(f"{path}: no label matches an event of the range")
    return y


def run_backtest(settings: Settings, *, intent: str, candidate: str, start: Bound, end: Bound,
                 labels: str | None = None, calibration_fraction: float = 0.3,
                 negative_sampling_rate: float | None = None) -> dict:
    """Everything the report needs, as plain data (written out by write_report)."""
    if not 0.05 <= calibration_fraction <= 0.9:
        raise DataError("--calibration-fraction must be within [0.05, 0.9]")
    if any(i.name == intent and i.state is not None for i in settings.intents):
        # Its features, duplicates and missing entities come from the workers' state, which a backtest does not
        # keep: the incumbent's scores and the dead letters would not be live's.
        raise DataError(f"intent {intent!r} keeps entity state, which a backtest does not compute: replay a range "
                        "(`muse-stream replay` builds state as live did) or deploy the candidate as a shadow")
    reg = read_models(settings, load=True)  # as live loads it: an activation that does not load is refused
    act = reg.activations.get(intent)
    if act is None:
        raise ModelError(f"intent {intent!r} has no activation on {settings.topics.models} (unknown intent?)")
    ref_rec = reg.references.get(intent)
    if ref_rec is None:
        raise ModelError(f"intent {intent!r} has no reference distribution")
    reference = ReferenceDistribution.from_dict(ref_rec.reference)
    cand = resolve_candidate(settings, candidate, intent, reg)
    tenants = read_tenants(settings)
    ev = read_range_events(settings, intent, start, end, tenants, reg)
    n = len(ev.event_ids)
    if n == 0:
        raise DataError(f"the range holds no events of intent {intent!r} ({ev.skipped} others skipped)")
    present = set().union(*(f.keys() for f in ev.features[: min(n, 1000)]))
    missing = [f for f in cand.features if f not in present]
    if missing:
        raise DataError(f"candidate {cand.name}: features {missing[:5]} are not in the events")
    y = load_labels(labels, ev.event_ids) if labels else None
    tids = np.array(ev.tenants, dtype=object)
    times = np.array(ev.times, dtype=np.int64)
    # The incumbent, event by event: the version live routing gave it (pinned, or the timeline's at its time),
    # and the raw score it gave, as live would serve it.
    inc_ver = np.array(ev.versions, dtype=np.int64)
    inc_raw, inc_served = np.array(ev.raw, dtype=np.float64), np.empty(n)
    for v in np.unique(inc_ver).tolist():
        rows = np.flatnonzero(inc_ver == v)
        inc_served[rows] = reg.get(intent, v).transform.apply(inc_raw[rows], tids[rows])
    cand_x, cand_over = candidate_matrix(ev.features, cand.features, settings.runtime.max_abs_feature)
    cand_raw = np.asarray(cand.booster.inplace_predict(cand_x), dtype=np.float64)
    outside = cand_raw[~((cand_raw >= 0.0) & (cand_raw <= 1.0))]
    if outside.size:  # publish would refuse it, and its transform cannot map it
        raise ModelError(f"candidate {cand.name}: its outputs are not probabilities: {outside.size} of {n} are "
                         f"outside [0, 1] (e.g. {float(outside[0]):.6g})")
    fitted_here = cand.transform is None
    n_cal = int(n * calibration_fraction) if fitted_here else 0
    if fitted_here:
        if n_cal < 200 or n - n_cal < 200:
            raise DataError(f"{n} events are too few to fit on {calibration_fraction:.0%} and evaluate on the rest")
        st, _ = fit_score_transform(cand_raw[:n_cal], reference=reference, incumbent_ref_scores=inc_served[:n_cal],
                                    tenant_ids=tids[:n_cal], negative_sampling_rate=negative_sampling_rate)
    else:
        st = cand.transform
    ev_rows = slice(n_cal, n)
    c_served = st.apply(cand_raw, tids)
    result = {"intent": intent, "candidate": cand.name, "candidate_transform": "fitted on the range" if fitted_here
              else "its own", "events": n, "calibration_events": n_cal, "evaluation_events": n - n_cal,
              "skipped_events": ev.skipped, "dead_letters": ev.dead_letters, "other_intent_events": ev.other_intents,
              "candidate_value_too_large": cand_over,
              "incumbent_versions": sorted({f"{intent}@{v}" for v in inc_ver.tolist()}),
              "range": {"first_event_time": int(times.min()), "last_event_time": int(times.max())},
              "tenants": []}
    e_tids, e_inc, e_raw, e_cand = tids[ev_rows], inc_served[ev_rows], cand_raw[ev_rows], c_served[ev_rows]
    e_y, e_times = None if y is None else y[ev_rows], times[ev_rows]
    result["distance"] = {"ks": ks_distance(e_inc, e_cand), "psi": psi(e_inc, e_cand)}
    # Rate bands resolve through the intent's reference, as live resolves them.
    band_reg = TenantRegistry(settings, dict(tenants), log_changes=False,
                              references=lambda i: reference if i == intent else None)
    for tid in sorted(set(e_tids.tolist())):
        rows = np.flatnonzero(e_tids == tid)
        entry = {"tenant_id": tid, "events": int(rows.size),
                 "ks": ks_distance(e_inc[rows], e_cand[rows]), "psi": psi(e_inc[rows], e_cand[rows]), "bands": []}
        # Each event against the bands in force at its event time, as live judged it.
        for bands, sel in band_sets(band_reg, tid, intent, e_times[rows]):
            r = rows[sel]
            entry["bands"] += _band_rows(bands, e_times[r], e_inc[r], e_raw[r], e_cand[r],
                                         None if e_y is None else e_y[r])
        result["tenants"].append(entry)
    result["_arrays"] = {"incumbent": e_inc, "candidate": e_cand, "candidate_raw": e_raw, "tenants": e_tids}
    return result


def band_sets(tenants: TenantRegistry, tenant_id: str, intent: str,
              event_times: np.ndarray) -> list[tuple[Bands, np.ndarray]]:
    """A tenant's events grouped by the band set in force at their event times: (bands, row indices), in
    order of first use. Periods with equal bands (a change and its undoing) are one set."""
    sets: dict[tuple, tuple[Bands, list[np.ndarray]]] = {}
    for bands, idx in tenants.band_groups(tenant_id, intent, event_times):
        key = (tuple(bands.names), bands.thresholds.tobytes())
        sets.setdefault(key, (bands, []))[1].append(np.arange(len(event_times)) if idx is None else idx)
    return [(bands, np.sort(np.concatenate(parts))) for bands, parts in sets.values()]


def _band_rows(bands: Bands, times: np.ndarray, inc: np.ndarray, raw: np.ndarray, cand: np.ndarray,
               y: np.ndarray | None) -> list[dict]:
    """One row per band of a band set, on the events judged against it: alert rates, and label stats."""
    n = int(times.size)
    rows = []
    for band, thr in zip(bands.names[1:], bands.thresholds.tolist()):
        row = {"band": band, "threshold": thr, "events": n, "event_times": [int(times.min()), int(times.max())]}
        for key, scores in (("incumbent", inc), ("candidate_raw", raw), ("candidate", cand)):
            k = int((scores >= thr).sum())
            lo, hi = wilson(k, n)
            row[key] = {"alert_rate": k / n, "ci95": [lo, hi], "alerts": k}
        row["ratio"] = (row["candidate"]["alert_rate"] / row["incumbent"]["alert_rate"]
                        if row["incumbent"]["alert_rate"] else None)
        if y is not None:
            row["labels"] = _label_stats(y, inc, cand, thr)
        rows.append(row)
    return rows


def _label_stats(y: np.ndarray, inc: np.ndarray, cand: np.ndarray, thr: float) -> dict:
    known = ~np.isnan(y)
    y, inc, cand = y[known] > 0.5, inc[known], cand[known]

    def rp(flag: np.ndarray) -> dict:
        tp = int((flag & y).sum())
        return {"recall": tp / int(y.sum()) if y.sum() else None,
                "precision": tp / int(flag.sum()) if flag.sum() else None}

    inc_flag = inc >= thr
    # Equal alert rate: the candidate's threshold that flags as many events as the incumbent does.
    k = int(inc_flag.sum())
    eq = np.zeros_like(y)
    if k:
        eq[np.argsort(-cand, kind="stable")[:k]] = True
    return {"labelled": int(known.sum()), "positives": int(y.sum()), "incumbent": rp(inc_flag),
            "candidate": rp(cand >= thr), "candidate_equal_alert_rate": rp(eq.astype(bool))}


def summary_markdown(res: dict) -> str:
    lines = [f"# Backtest of {res['candidate']} for intent {res['intent']}", "",
             (f"{res['events']:,} events ({res['calibration_events']:,} to fit the candidate's transform, "
             f"{res['evaluation_events']:,} evaluated); incumbent: {', '.join(res['incumbent_versions'])}; "
             f"candidate transform: {res['candidate_transform']}. KS {res['distance']['ks']:.4f}, "
             f"PSI {res['distance']['psi']:.4f} (reference-scale scores, evaluated events)."), "",
             _not_scored_line(res), "",
             "| tenant | band | threshold | events | incumbent | candidate raw | candidate | ratio | 95% CI candidate |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in res["tenants"]:
        for b in t["bands"]:
            ci = b["candidate"]["ci95"]
            ratio = "-" if b["ratio"] is None else f"{b['ratio']:.2f}"
            lines.append(f"| {t['tenant_id']} | {band_label(t, b)} | {b['threshold']:.6g} | {b['events']:,} | "
                         f"{b['incumbent']['alert_rate']:.3%} | {b['candidate_raw']['alert_rate']:.3%} | "
                         f"{b['candidate']['alert_rate']:.3%} | {ratio} | {ci[0]:.3%}-{ci[1]:.3%} |")
    if any("labels" in b for t in res["tenants"] for b in t["bands"]):
        lines += ["", ("| tenant | band | recall inc | recall cand | recall cand @ equal rate | precision inc | "
                  "precision cand |"), "|---|---|---:|---:|---:|---:|---:|"]
        f = lambda v: "-" if v is None else f"{v:.3f}"
        for t in res["tenants"]:
            for b in t["bands"]:
                lab = b.get("labels")
                if lab:
                    lines.append(f"| {t['tenant_id']} | {band_label(t, b)} | {f(lab['incumbent']['recall'])} | "
                                 f"{f(lab['candidate']['recall'])} | {f(lab['candidate_equal_alert_rate']['recall'])} | "
                                 f"{f(lab['incumbent']['precision'])} | {f(lab['candidate']['precision'])} |")
    return "\n".join(lines) + "\n"


def band_label(tenant: dict, row: dict) -> str:
    """A band row's name; with the event times it judged when the tenant's bands changed in the range."""
    if len({tuple(b["event_times"]) for b in tenant["bands"]}) == 1:
        return row["band"]
    first, last = row["event_times"]
    return f"{row['band']} (event times {first}-{last})"


def _not_scored_line(res: dict) -> str:
    dead = res.get("dead_letters", {})
    text = ", ".join(f"{r} {n:,}" for r, n in dead.items()) if dead else "none"
    line = (f"Not compared: {res.get('other_intent_events', 0):,} events of other intents; dead letters live "
            f"would write for the range: {text}.")
    if res.get("candidate_value_too_large"):
        line += (f" The candidate would dead-letter {res['candidate_value_too_large']:,} of the compared events "
                 "(a feature only it reads beyond max_abs_feature); those values are scored as missing.")
    return line


PLOT_SKIPPED = "backtest.png skipped: install muse-stream[plots] for the picture"


def write_report(res: dict, out_dir: Path) -> list[Path]:
    """Write backtest.json, backtest.md and (with matplotlib, the [plots] extra) backtest.png; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = res["_arrays"]
    data = {k: v for k, v in res.items() if k != "_arrays"}
    paths = [out_dir / "backtest.json", out_dir / "backtest.md", out_dir / "backtest.png"]
    paths[0].write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    paths[1].write_text(summary_markdown(res))
    try:
        import matplotlib
    except ImportError:
        # An earlier run's picture would not match this report.
        paths[2].unlink(missing_ok=True)
        return paths[:2]
    _plot(matplotlib, res, arrays, paths[2])
    return paths


def _plot(matplotlib, res: dict, arrays: dict, path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for key, label in (("incumbent", "incumbent (served)"), ("candidate", f"{res['candidate']} (transformed)"),
                       ("candidate_raw", f"{res['candidate']} (raw)")):
        s = np.sort(arrays[key])
        a1.loglog(np.clip(s, 1e-7, 1), 1 - np.arange(s.size) / s.size, label=label)
    a1.set_title(f"{res['intent']}: share of events at or above a score")
    a1.set_xlabel("score")
    a1.set_ylim(1e-4, 1.05)
    a1.grid(True, which="both", alpha=0.3)
    a1.legend()
    labels, inc, cand, raw = [], [], [], []
    for t in res["tenants"]:
        for b in t["bands"]:
            labels.append(f"{t['tenant_id']}\n{band_label(t, b)}")
            inc.append(b["incumbent"]["alert_rate"])
            cand.append(b["candidate"]["alert_rate"])
            raw.append(b["candidate_raw"]["alert_rate"])
    x = np.arange(len(labels))
    a2.bar(x - 0.27, inc, 0.27, label="incumbent")
    a2.bar(x, cand, 0.27, label="candidate, transformed")
    a2.bar(x + 0.27, raw, 0.27, label="candidate, raw")
    a2.set_xticks(x, labels, fontsize=7)
    a2.set_yscale("log")
    a2.set_title("alert rate per tenant and band (evaluated events)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
