"""The demo's figures about its deployment: the time of each step, the stream's rate while it ran, and the
alert-rate ratios of the map fitted on the shadow window alone and of the refreshed map, on the same events.

All from what the demo read back: the decisions (read_committed), the deployment record on the models topic,
and the replay's own produce times.
"""

from __future__ import annotations

import numpy as np

from muse_stream.config import TenantConfig
from muse_stream.demo.scenario import CARD
from muse_stream.deploy.guards import ratio_interval
from muse_stream.deploy.record import clock
from muse_stream.models.bands import resolve_bands
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.records import DeploymentRecord

OLD = f"{CARD}@1"  # the incumbent the demo publishes; every later card_fraud version comes from the deployment


def deployed_versions(decisions: list[dict]) -> list[str]:
    """The card_fraud versions that served after the swap, in version order."""
    names = {d["model_version"] for d in decisions if d["intent"] == CARD and d["model_version"] != OLD}
    return sorted(names, key=lambda v: int(v.rpartition("@")[2]))


def step_times(rec: DeploymentRecord) -> list[tuple[str, int, float, float]]:
    """(state, wall ms, seconds since the model file was read, seconds since the previous step) per step."""
    first = rec.steps[0].figures.get("file_read_ms", rec.steps[0].at)
    out, prev = [], first
    for st in rec.steps:
        out.append((st.state, st.at, (st.at - first) / 1000, (st.at - prev) / 1000))
        prev = st.at
    return out


def per_second(times_ms: np.ndarray, start_ms: int, end_ms: int, weights: np.ndarray | None = None) -> np.ndarray:
    """How many of `times_ms` (each counting `weights`, else 1) fall in each whole second from start_ms on."""
    seconds = max(1, (end_ms - start_ms) // 1000)
    keep = (times_ms >= start_ms) & (times_ms < start_ms + seconds * 1000)
    w = None if weights is None else weights[keep]
    return np.bincount(((times_ms[keep] - start_ms) // 1000).astype(np.int64), weights=w, minlength=seconds)


def paired_day0(decisions: list[dict], day1_at: int) -> dict[tuple[str, str], dict]:
    """(tenant, transaction row) -> that transaction's day-0 decision: both days replay the same rows, so a day-1
    decision is compared with the same transaction as the incumbent scored it the day before."""
    return {(d["tenant_id"], d["event_id"].rpartition("-")[2]): d for d in decisions
            if d["event_time"] < day1_at}


def refresh_ratios(decisions: list[dict], tenants: list[TenantConfig], reference: ReferenceDistribution,
                   fitted, refreshed: set[str], day1_at: int) -> list[dict]:
    """Per tenant and band, on the day-1 events the refreshed map served: alerts of the incumbent on the same
    transactions (day 0), of the map fitted on the shadow window alone (`fitted`, a ScoreTransform, applied to the
    same raw scores) and of the refreshed map as served; and the ratios new/old of both, each as (ratio, low, high)
    with its 95% interval as the deploy's alert-rate guard computes it."""
    card = [d for d in decisions if d["intent"] == CARD]
    before = paired_day0([d for d in card if d["model_version"] == OLD], day1_at)
    rows = []
    for t in tenants:
        pairs = [(d, b) for d in card if d["tenant_id"] == t.tenant_id and d["model_version"] in refreshed
                 and (b := before.get((t.tenant_id, d["event_id"].rpartition("-")[2]))) is not None]
        if not pairs:
            continue
        served = np.array([d["score"] for d, _ in pairs])
        old = np.array([b["score"] for _, b in pairs])
        no_refresh = fitted.apply(np.array([d["raw_score"] for d, _ in pairs]), t.tenant_id)
        for band, thr in sorted(resolve_bands(t.bands, reference).items(), key=lambda kv: kv[1]):
            k_old, k_fit, k_ref = (int((x >= thr).sum()) for x in (old, no_refresh, served))
            rows.append({"tenant": t.tenant_id, "band": band, "events": len(pairs), "old": k_old, "fitted": k_fit,
                         "refreshed": k_ref, "ratio_fitted": ratio_interval(k_fit, k_old, 0.95),
                         "ratio_refreshed": ratio_interval(k_ref, k_old, 0.95)})
    return rows


def print_deployment(console, res: dict) -> None:
    """The deployment's steps with their times, its first live decision, and the stream's rate meanwhile."""
    from rich.table import Table

    rec: DeploymentRecord | None = res.get("deployment")
    if rec is None:
        console.print(f"[red]deploy: no deployment ({res.get('deploy_error')})[/]")
        return
    table = Table(title=f"deploy {rec.model} --intent {CARD}: deployment {rec.name}, each step with its time")
    for col in ("step", "at (UTC)", "since the file was read", "step took"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for state, at, since, took in step_times(rec):
        table.add_row(state, clock(at), f"{since:.1f} s", f"{took:.1f} s")
    console.print(table)
    file_ms = rec.steps[0].figures.get("file_read_ms", rec.steps[0].at)
    rb = res["readback"]
    live = [a for d, a in zip(rb.decisions, rb.arrivals) if d["intent"] == CARD and d["model_version"] != OLD]
    watched = next((s for s in rec.steps if s.state == "watched"), None)
    ok = rec.state == "done"
    line = f"deploy               {rec.name} {'[green]' if ok else '[red]'}{rec.state}[/]"
    if watched is not None:
        line += f": model file to first live decision {watched.figures['file_to_live_s']:.1f} s (read by the deploy)"
    if live:
        line += f", {(min(live) - file_ms) / 1000:.1f} s to the first one visible to the tenants' reader"
    console.print(line)
    if len(rb.arrivals) and res.get("produced"):
        end = rec.steps[-1].at
        made = np.array(res["produced"], dtype=np.int64)
        sent = per_second(made[:, 0], file_ms, end, np.diff(made[:, 1], prepend=0).astype(np.float64))
        got = per_second(np.asarray(rb.arrivals, dtype=np.int64), file_ms, end)
        console.print(f"stream while deploying  {(end - file_ms) / 1000:.1f} s from the file read to {rec.state}: "
                      f"produced {sent.mean():,.0f} events/s (slowest second {sent.min():,.0f}), decided "
                      f"{got.mean():,.0f}/s (slowest second {got.min():,.0f}), read back read_committed")


def print_refresh_ratios(console, res: dict) -> list[dict]:
    """The ratios with and without the watch's refresh (empty when the deployment did not refresh its map)."""
    from rich.table import Table

    rec: DeploymentRecord | None = res.get("deployment")
    if rec is None or not rec.refreshes or res.get("fitted_transform") is None:
        return []
    refreshed = {f"{CARD}@{v}" for v in rec.refreshes}
    rows = refresh_ratios(res["readback"].decisions, res["tenants"], res["card"].reference,
                          res["fitted_transform"], refreshed, res["day1_at"])
    fitted = f"{CARD}@{rec.step('activated').figures['version']}"
    if not rows:
        # The refresh was published near the replay's end, after the last event it would have governed.
        console.print(f"after the refresh: {', '.join(sorted(refreshed))} scored no event before the replay ended "
                      "(it governs events from its activation time on)")
        return rows
    table = Table(title=f"Alert-rate ratios new/old after the refresh, per tenant and band: on the events "
                        f"{', '.join(sorted(refreshed))} served, against {OLD} on the same transactions")
    for col in ("tenant", "band", "events", f"alerts {OLD}", f"{fitted} (no refresh)", "refreshed",
                "ratio, no refresh [95%]", "ratio, refreshed [95%]"):
        table.add_column(col, justify="left" if col in ("tenant", "band") else "right")
    fmt = lambda r: f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"
    for r in rows:
        table.add_row(r["tenant"], r["band"], f"{r['events']:,}", str(r["old"]), str(r["fitted"]),
                      str(r["refreshed"]), fmt(r["ratio_fitted"]), fmt(r["ratio_refreshed"]))
    console.print(table)
    return rows
