"""The watch after the swap: the replaced version keeps scoring in shadow; every window of live events as large as
the shadow window (deploy.shadow_events, or more when the top band needs it) is judged (the new version as served
against the old as it would have served); a window that breaks a guard rolls the deployment back by event time,
and a window that passes refreshes the new version's map on itself (judged on its own held-out tail first),
published as a new version of the same booster, so every decision names exactly the map that scored it.
"""

from __future__ import annotations

from muse_stream.deploy import record as dr
from muse_stream.deploy.feed import ShadowFeed, Window
from muse_stream.deploy.guards import Judgement, table_lines
from muse_stream.deploy.record import clock
from muse_stream.errors import TransformError
from muse_stream.kafka.watermark import effective_time
from muse_stream.models.records import DeploymentRecord, ShadowRecord, active_key, dump, shadow_key
from muse_stream.models.registry import load_version
from muse_stream.models.store import activation_record, now_ms, publish
from muse_stream.models.transform import fit_score_transform

# `d` below is the deploy.controller.Deployer that drives the watch (not imported: it imports this module).


def _serving_names(d, rec: DeploymentRecord) -> set[str]:
    first = rec.step("activated").figures["version"]
    return {f"{d.intent}@{v}" for v in (first, rec.serving, *rec.refreshes)}


def _shadow_off(d, reg) -> list[tuple[bytes, bytes]]:
    sh = reg.shadows.get(d.intent)
    if sh is None or sh.version is None:
        return []
    return [(shadow_key(d.intent), dump(ShadowRecord(intent=d.intent, version=None, set_at=now_ms())))]


def _done(d, rec: DeploymentRecord, detail: str) -> DeploymentRecord:
    def make(reg, r):
        sh = reg.shadows.get(d.intent)
        off = _shadow_off(d, reg) if sh is not None and sh.version == rec.incumbent else []
        return off, dr.advanced(rec, "done", detail)
    return d.write(rec, make)


def watch_activated(d, rec: DeploymentRecord) -> DeploymentRecord:
    """Wait for the first live decision of the new version (the first shadow pair it is the incumbent of)."""
    if not d.g.watch_events:
        return _done(d, rec, f"{d.intent}@{rec.serving} serves; no watch (deploy.watch_events = 0)")
    act = rec.step("activated")
    feed = ShadowFeed(d.s, d.intent, f"{d.intent}@{rec.incumbent}", _serving_names(d, rec), act.at - 1000)
    try:
        if not d.collect(rec, feed, 1, act.at, "watch"):
            return _done(d, rec, f"no live event reached {d.intent}@{rec.serving} in {d.g.watch_timeout_s:g}s; "
                                 "nothing to watch")
    finally:
        feed.close()
    seen = now_ms()
    first_file = rec.steps[0].figures.get("file_read_ms", rec.steps[0].at)
    detail = (f"first live decision by {d.intent}@{rec.serving} read at {clock(seen)}, "
              f"{(seen - first_file) / 1000:.1f}s after the model file was read; watching "
              f"{d.g.watch_events:,} events beside {d.intent}@{rec.incumbent}")
    return d.write(rec, lambda reg, r: ([], dr.advanced(rec, "watched", detail, {
        "first_live_ms": seen, "file_to_live_s": (seen - first_file) / 1000})))


def _rollback(d, rec: DeploymentRecord, reason: str, j: Judgement) -> DeploymentRecord:
    from_time = effective_time(d.s)

    def make(reg, r):
        act = activation_record(reg, d.intent, rec.incumbent, from_time)
        return [(active_key(d.intent), dump(act)), *_shadow_off(d, reg)], dr.advanced(
            rec, "rolled back", f"{reason}; {d.intent}@{rec.incumbent} serves again from event time {from_time}",
            {"from_event_time": from_time, "judgement": j.to_dict()})
    return d.write(rec, make)


def _refresh(d, rec: DeploymentRecord, reg, ref, tenants, bands, win: Window, old_served, k: int,
             j: Judgement) -> DeploymentRecord:
    """Refit the serving version's map on this window, aligned to the old version as it would have served, judge
    it on the window's held-out tail, and publish it active when it passes."""
    serving = reg.versions[(d.intent, rec.serving)]
    cut = round(len(win) * (1.0 - d.g.holdout_share))
    order = win.event_time.argsort(kind="stable")
    fit_rows, tail_rows = order[:cut], order[cut:]
    fit, tail = win.take(fit_rows), win.take(tail_rows)
    prior = {key: serving.transform.get("correction", {}).get(key)
             for key in ("negative_sampling_rate", "train_prevalence", "prod_prevalence")}
    base = {"window": k, "judgement": j.to_dict()}
    try:
        st, _ = fit_score_transform(fit.incumbent_raw, reference=ref, incumbent_ref_scores=old_served[fit_rows],
                                    tenant_ids=fit.tenant, **d.map_needs(tenants, ref), **prior)
    except TransformError as e:
        why = f"window {k}: guards passed; refresh not fitted: {e}"
        return d.write(rec, lambda reg, r: ([], dr.advanced(r, "watched", why, base)))
    jr = d.judgement(old_served[tail_rows], st.apply(tail.incumbent_raw, tail.tenant), tail, bands)
    if not jr.passed:
        return d.write(rec, lambda reg, r: ([], dr.advanced(
            rec, "watched", f"window {k}: guards passed; refresh refused: {jr.reason()}",
            {**base, "refresh": jr.to_dict()})))
    def also(reg, version, act):
        from_time = act.timeline[-1].from_time
        new = dr.advanced(rec, "watched", f"window {k}: guards passed; map refreshed on it as {version.name} "
                                          f"(booster of {serving.name}), serving from event time {from_time}",
                          {**base, "refresh": jr.to_dict(), "from_event_time": from_time},
                          serving=version.version, refreshes=(*rec.refreshes, version.version))
        d._refreshed = new
        return [dr.entry(new)]

    publish(d.s, intent=d.intent, booster_bytes=serving.booster_bytes(), features=list(serving.features),
            transform=st.to_dict(), feature_contract=serving.feature_contract, activate=True, also=also,
            metadata={**serving.metadata, "reuses_booster_of": serving.metadata.get("reuses_booster_of", serving.name),
                      "refreshed_from": serving.name, "calibration_events": len(fit),
                      "aligned_to": f"{d.intent}@{rec.incumbent} on the watch window"})
    d.say(d._refreshed)
    return d._refreshed


def watch_windows(d, rec: DeploymentRecord) -> DeploymentRecord:
    """Judge each watch window in turn until deploy.watch_events are watched; done, or rolled back."""
    reg, ref, tenants, bands = d.context()
    old = load_version(reg.versions[(d.intent, rec.incumbent)])
    first = next(s for s in rec.steps if s.state == "watched")
    # A window as large as the shadow window: a refresh is fitted on it and needs the same calibration size.
    n, _ = d.window_target(tenants, ref)
    k = sum(1 for s in rec.steps if s.state == "watched" and "window" in s.figures)
    feed = ShadowFeed(d.s, d.intent, old.name, _serving_names(d, rec), rec.step("activated").at - 1000)
    try:
        while k * n < d.g.watch_events:
            if not d.collect(rec, feed, (k + 1) * n, first.at, "watch"):
                return _done(d, rec, f"watch timed out after {d.g.watch_timeout_s:g}s with {len(feed):,} events "
                                     f"({k} windows judged); {d.intent}@{rec.serving} serves")
            win = feed.window(k * n, (k + 1) * n)
            k += 1
            old_served = old.transform.apply(win.shadow_raw, win.tenant)
            j = d.judgement(old_served, win.incumbent, win, bands)
            for line in table_lines(j):
                d.out(line)
            if not j.passed:
                return _rollback(d, rec, f"window {k} broke a guard: {j.reason()}", j)
            if d.g.refresh:
                rec = _refresh(d, rec, reg, ref, tenants, bands, win, old_served, k, j)
                feed.want(_serving_names(d, rec))
                reg = reg if not rec.refreshes else d.context()[0]
            else:
                rec = d.write(rec, lambda reg, r, k=k, j=j: ([], dr.advanced(
                    r, "watched", f"window {k}: guards passed", {"window": k, "judgement": j.to_dict()})))
    finally:
        feed.close()
    return _done(d, rec, f"watched {k * n:,} live events in {k} windows, {len(rec.refreshes)} map refreshes; "
                         f"{d.intent}@{rec.serving} serves")
