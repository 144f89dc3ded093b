"""The demo's figures, all computed from the decisions read back from Kafka, and its picture."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muse_stream.bandspec import BandRate
from muse_stream.config import TenantConfig
from muse_stream.demo.deploy_report import (
    OLD,
    deployed_versions,
    paired_day0,
    print_deployment,
    print_refresh_ratios,
)
from muse_stream.demo.scenario import CARD, DAY_MS
from muse_stream.models.bands import Bands, format_band, resolve_bands
from muse_stream.models.quantile import ReferenceDistribution

RATIO_BAND = (0.9, 1.1)
RAW_FACTOR = 2.0
RATE_TOLERANCE = 0.2  # a rate band's measured alert rate before the swap is within ±20% of its configured rate


@dataclass
class BandRateRow:
    """One tenant band: as configured, its threshold on card_fraud's reference, and how often it alerted."""

    band: str
    given: str
    configured: float | None  # the configured alert rate (None for a band given as a threshold)
    threshold: float
    measured: float  # share of the tenant's card_fraud decisions of day 0 (all by the incumbent) in this band or higher

    @property
    def within(self) -> bool | None:
        if self.configured is None:
            return None
        return abs(self.measured - self.configured) <= RATE_TOLERANCE * self.configured


@dataclass
class TenantRow:
    tenant_id: str
    events_before: int
    events_after: int
    bands_before: Counter
    bands_after: Counter
    alert_before: float
    alert_after: float
    raw_after: float  # alert rate after the swap had the tenant's thresholds met raw scores
    band_rates: list[BandRateRow]

    @property
    def ratio(self) -> float:
        return self.alert_after / self.alert_before if self.alert_before else float("nan")

    @property
    def raw_ratio(self) -> float:
        return self.raw_after / self.alert_before if self.alert_before else float("nan")

    @property
    def kept(self) -> bool:
        return RATIO_BAND[0] <= self.ratio <= RATIO_BAND[1]


def tenant_rows(decisions: list[dict], tenants: list[TenantConfig], old: str, day1_at: int,
                reference: ReferenceDistribution) -> list[TenantRow]:
    """Per tenant: every card_fraud decision made after the swap (day 1, by the deployed versions) beside the
    incumbent's decision on the same transactions the day before, so the change comes from the model alone."""
    card = [d for d in decisions if d["intent"] == CARD]
    day0 = paired_day0([d for d in card if d["model_version"] == old], day1_at)
    rows = []
    for t in tenants:
        bands = Bands(resolve_bands(t.bands, reference))  # as the workers resolved them on card_fraud
        alert_thr = float(bands.thresholds.min())
        mine = [d for d in card if d["tenant_id"] == t.tenant_id]
        after = [d for d in mine if d["model_version"] != old]
        before = [b for d in after if (b := day0.get((t.tenant_id, d["event_id"].rpartition("-")[2]))) is not None]
        whole_day0 = [d for d in mine if d["event_time"] < day1_at]
        rate = lambda ds: float(np.mean([d["band"] != "approve" for d in ds])) if ds else float("nan")
        raw = float(np.mean([d["raw_score"] >= alert_thr for d in after])) if after else float("nan")
        level = {name: k for k, name in enumerate(bands.names)}
        before_level = np.array([level[d["band"]] for d in whole_day0], dtype=np.int64)
        band_rates = []
        for k, (name, thr) in enumerate(zip(bands.names[1:], bands.thresholds.tolist()), start=1):
            spec = t.bands[name]
            measured = float(np.mean(before_level >= k)) if whole_day0 else float("nan")
            band_rates.append(BandRateRow(name, format_band(spec), spec.rate if isinstance(spec, BandRate) else None,
                                          thr, measured))
        rows.append(TenantRow(t.tenant_id, len(before), len(after), Counter(d["band"] for d in before),
                              Counter(d["band"] for d in after), rate(before), rate(after), raw, band_rates))
    return rows


def latency_ms(decisions: list[dict], arrivals: list[int]) -> np.ndarray:
    ts = np.fromiter((d["source"]["timestamp"] for d in decisions), dtype=np.int64, count=len(decisions))
    return np.asarray(arrivals, dtype=np.int64) - ts


def print_report(console, res: dict) -> list[TenantRow]:
    from rich.table import Table

    rb = res["readback"]
    old = OLD
    new = ", ".join(deployed_versions(rb.decisions)) or "(none)"
    rows = tenant_rows(rb.decisions, res["tenants"], old, res["day1_at"], res["card"].reference)
    print_deployment(console, res)
    rates = Table(title=f"Bands as alert rates: configured, and measured on card_fraud on day 0 ({old})")
    for col in ("tenant", "band", "configured rate", "threshold (reference scale)", "measured before",
                f"within ±{RATE_TOLERANCE:.0%}"):
        rates.add_column(col, justify="left" if col in ("tenant", "band") else "right")
    for r in rows:
        for b in r.band_rates:
            ok = "-" if b.within is None else f"[{'green' if b.within else 'red'}]{'yes' if b.within else 'NO'}[/]"
            rates.add_row(r.tenant_id, b.band, b.given, f"{b.threshold:.6g}", f"{b.measured:.3%}", ok)
    console.print(rates)
    table = Table(title=f"Alert rates across the swap {old} -> {new}: every decision after the swap beside {old}'s "
                        "on the same transactions the day before (read back from Kafka)")
    for col in ("tenant", "events before/after", "alerts before (by band)", "alerts after (by band)", "alert before",
                "alert after", "ratio", "raw after", "raw ratio"):
        table.add_column(col, justify="left" if col.startswith(("tenant", "bands")) else "right")
    for r in rows:
        fmt = lambda c: " ".join(f"{k}={v}" for k, v in sorted(c.items()) if k != "approve")
        table.add_row(r.tenant_id, f"{r.events_before}/{r.events_after}", fmt(r.bands_before), fmt(r.bands_after),
                      f"{r.alert_before:.3%}", f"{r.alert_after:.3%}",
                      f"[{'green' if r.kept else 'red'}]{r.ratio:.2f}[/]", f"{r.raw_after:.3%}", f"{r.raw_ratio:.2f}")
    console.print(table)
    print_refresh_ratios(console, res)
    lat = latency_ms(rb.decisions, rb.arrivals)
    arr = np.asarray(rb.arrivals)
    span = (arr.max() - arr.min()) / 1000 if len(arr) > 1 else float("nan")
    reasons = Counter(r for r, _ in rb.dead)
    by_intent = Counter((d["intent"], d["model_version"]) for d in rb.decisions)
    console.print(f"events replayed      {res['expected']:,} ({res['rows']:,} held-out transactions x 2 days, "
                  f"{len(res['tenants'])} tenants, + cnp_fraud and malformed events)")
    console.print(f"decisions            {len(rb.decisions):,}  by version: "
                  + ", ".join(f"{v}={n:,}" for (_, v), n in sorted(by_intent.items())))
    console.print(f"dead letters         {len(rb.dead)}  " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    console.print(f"exactly once         {'yes' if rb.count == res['expected'] and not rb.duplicates else 'NO'}: "
                  f"{rb.count:,} outputs for {res['expected']:,} inputs, {rb.duplicates} duplicates "
                  "(read_committed)")
    console.print(f"throughput           {len(rb.decisions) / span:,.0f} decisions/s over {span:.1f} s "
                  f"read back ({res['workers']} workers, exactly-once; offered "
                  f"{'unpaced' if not res.get('rate') else format(res['rate'], ',') + '/s'}, the replay never paused for the deployment)")
    if len(lat):
        console.print(f"end-to-end latency   p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms "
                      f"(produce -> visible to a read_committed consumer)")
    return rows


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rb = res["readback"]
    card = [d for d in rb.decisions if d["intent"] == CARD]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    for ax, key, title in ((axes[0], "raw_score", "raw scores"), (axes[1], "score", "reference-scale scores")):
        deployed = ", ".join(deployed_versions(card))
        for label, is_old, color in ((OLD, True, "tab:blue"), (deployed, False, "tab:orange")):
            s = np.sort([d[key] for d in card if (d["model_version"] == OLD) == is_old])
            if len(s):
                surv = 1.0 - np.arange(len(s)) / len(s)
                ax.loglog(np.clip(s, 1e-7, 1), surv, color=color, label=label)
        ax.set_title(f"card_fraud {title}: share of events at or above a score")
        ax.set_xlabel("score")
        ax.set_ylabel("share of events")
        ax.set_ylim(1e-4, 1.05)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax = axes[2]
    # Both replayed days carry the same hours of traffic: lay day 1 right after day 0 on one time axis.
    times = np.array([d["event_time"] for d in card], dtype=np.int64)
    day = (times >= res["day1_at"]).astype(np.int64)
    local = times - day * DAY_MS
    start, span = local.min(), local.max() - local.min() + 1
    hours = (local - start + day * span) / 3.6e6
    tenant_of = np.array([d["tenant_id"] for d in card], dtype=object)
    alert = np.array([d["band"] != "approve" for d in card], dtype=float)
    raw = np.array([d["raw_score"] for d in card])
    new = np.array([d["model_version"] != OLD for d in card])
    bins = np.linspace(0, 2 * span / 3.6e6, 25)
    idx = np.digitize(hours, bins)
    centers = (bins[:-1] + bins[1:]) / 2
    for t in res["tenants"]:
        alert_thr = min(resolve_bands(t.bands, res["card"].reference).values())
        mine = tenant_of == t.tenant_id
        rate = [alert[mine & (idx == b)].mean() if (mine & (idx == b)).any() else np.nan for b in range(1, 25)]
        served_new = mine & new
        raw_rate = [(raw[served_new & (idx == b)] >= alert_thr).mean() if (served_new & (idx == b)).any()
                    else np.nan for b in range(1, 25)]
        line, = ax.plot(centers, rate, marker="o", ms=3, label=t.tenant_id)
        ax.plot(centers, raw_rate, ls=":", color=line.get_color(), label=f"{t.tenant_id}, raw scores")
    ax.axvline(span / 3.6e6, color="grey", ls=":", label="day 1 begins")
    act = res["deployment"].step("activated") if res.get("deployment") is not None else None
    if act is not None:
        x = (act.figures["from_event_time"] - DAY_MS - start + span) / 3.6e6
        ax.axvline(x, color="k", ls="--", label=f"deployed: {CARD}@{act.figures['version']} live")
    ax.set_yscale("log")
    ax.set_ylim(top=5.0)  # headroom for the legend above the raw-score lines
    ax.set_title("alert rate per tenant over replayed time")
    ax.set_xlabel("replayed hours (the held-out hours, twice)")
    ax.set_ylabel("alert rate")
    ax.legend(fontsize=7, ncol=2, loc="upper left")  # raw-score lines start at the swap, right of it
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
