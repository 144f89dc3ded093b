"""One deployment, start to end: registered -> shadow -> fitted -> judged -> activated -> watched -> done, or
refused / rolled back with the reason.

Every step is written to the models topic with the change it makes (see record.py), and the next step is
chosen from the record alone, so a deploy process stopped anywhere resumes where the topic says it was. The
watch after the swap lives in watch.py.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from muse_stream.config import Settings
from muse_stream.deploy import record as dr
from muse_stream.deploy.feed import ShadowFeed, ShadowSetting, Window, read_labels
from muse_stream.deploy.guards import Judgement, judge, table_lines
from muse_stream.deploy.record import clock
from muse_stream.errors import DataError, ModelError, MuseError, TransformError
from muse_stream.kafka.watermark import effective_time
from muse_stream.models.bands import resolve_bands
from muse_stream.models.calibration_size import calibration_need, check_calibration_size, tenant_map_needs
from muse_stream.models.lifecycle import load_booster, publish_from_files
from muse_stream.models.probe import check_probabilities
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.records import (
    DeploymentRecord,
    DeploymentStep,
    ShadowRecord,
    active_key,
    dump,
    sha256_hex,
    shadow_key,
)
from muse_stream.models.registry import ModelRegistry, load_version
from muse_stream.models.store import activation_record, now_ms, publish, read_models, write_models
from muse_stream.models.transform import ScoreTransform, fit_score_transform
from muse_stream.tenants import read_tenants

logger = logging.getLogger(__name__)


# How often a deploy collecting its shadow window checks that the candidate is still the intent's shadow.
SHADOW_CHECK_S = 3.0


class Interrupted(MuseError):
    """The deploy process was asked to stop; the deployment stays where the models topic says it is."""


def provisional_transform(reference: ReferenceDistribution) -> ScoreTransform:
    """A transform for the shadow phase only (shadow pairs carry raw scores; no tenant sees this map): raw u
    to the reference's quantile at level u. The fitted version, aligned to the incumbent, replaces it."""
    st, _ = fit_score_transform(np.linspace(0.0, 1.0, 4001), reference=reference)
    return st


class Deployer:
    def __init__(self, settings: Settings, intent: str, *, out: Callable[[str], None] = print,
                 stop: threading.Event | None = None) -> None:
        self.s = settings
        self.intent = intent
        self.g = settings.deploy.for_intent(intent)
        self.out = out
        self.stop = stop or threading.Event()
        self._tail: Window | None = None  # the held-out tail, kept from the fit to the judgement

    # ---- the run ---------------------------------------------------------------------------------

    def deploy(self, model_path: str | Path, *, calibration: str | Path | None = None) -> DeploymentRecord:
        """Deploy a booster file, or resume the intent's unfinished deployment of the same booster."""
        booster, features = load_booster(model_path)
        raw = bytes(booster.save_raw("ubj"))
        sha = sha256_hex(raw)
        cur = read_models(self.s).latest_deployment(self.intent)
        if cur is not None and not cur.final:
            if cur.booster_sha256 != sha:
                raise ModelError(f"deployment {cur.name} of {cur.model} is {cur.state}: one deployment at a time "
                                 f"per intent (wait for it, or deploy {cur.model} again to resume it)")
            self.out(f"resuming deployment {cur.name} of {cur.model} at {cur.state}")
            return self.run(cur)
        return self.run(self._register(Path(model_path), booster, features, raw, sha, calibration))

    def run(self, rec: DeploymentRecord) -> DeploymentRecord:
        from muse_stream.deploy.watch import watch_activated, watch_windows

        actions = {"registered": self._to_shadow, "shadow": self._fit, "fitted": self._judge,
                   "judged": self._activate, "activated": lambda r: watch_activated(self, r),
                   "watched": lambda r: watch_windows(self, r)}
        while not rec.final:
            if self.stop.is_set():
                raise Interrupted(f"deploy stopped; deployment {rec.name} stays {rec.state}")
            rec = actions[rec.state](rec)
        return rec

    def say(self, rec: DeploymentRecord, steps: int = 1) -> None:
        for st in rec.steps[-steps:]:
            self.out(f"{clock(st.at)}  {rec.name}  {st.state:11} {st.detail}")

    def write(self, rec: DeploymentRecord, make) -> DeploymentRecord:
        new = dr.write_step(self.s, rec, make)
        self.say(new, len(new.steps) - len(rec.steps))
        return new

    # ---- registered ------------------------------------------------------------------------------

    def _register(self, path: Path, booster, features: list[str], raw: bytes, sha: str,
                  calibration: str | Path | None) -> DeploymentRecord:
        reg = read_models(self.s)
        incumbent = reg.active_version(self.intent)
        if incumbent is None or self.intent not in reg.references:
            raise ModelError(f"intent {self.intent!r} has no active version: deploy replaces an incumbent; "
                             "publish the first version with `muse-stream publish --activate`")
        self._check_features(path, features, reg.versions[(self.intent, incumbent)],
                             reject=reg.unknown_features(self.intent).reject)
        started = now_ms()

        def also(reg: ModelRegistry, version, _act) -> list[tuple[bytes, bytes]]:
            cur = reg.latest_deployment(self.intent)
            if cur is not None and not cur.final:
                raise ModelError(f"deployment {cur.name} of {cur.model} is {cur.state}: one at a time per intent")
            rec = DeploymentRecord(
                intent=self.intent, deployment=dr.next_deployment_number(reg, self.intent), model=path.name,
                booster_sha256=sha, incumbent=reg.active_version(self.intent), candidate=version.version,
                steps=(DeploymentStep(state="registered", at=now_ms(), detail=(
                    f"{version.name} from {path.name} (sha256 {sha[:12]}), replacing "
                    f"{self.intent}@{reg.active_version(self.intent)}; file read at {clock(started)}"),
                    figures={"file_read_ms": started}),))
            self._registered = rec
            return [dr.entry(rec)]

        meta = {"deployment_file": path.name}
        if calibration is not None:
            publish_from_files(self.s, intent=self.intent, booster_path=path, calibration_path=calibration,
                               tenants=list(read_tenants(self.s).values()) or list(self.s.tenants), also=also)
        else:
            ref = ReferenceDistribution.from_dict(reg.references[self.intent].reference)
            check_probabilities(booster, what=path.name, n_features=len(features), calibration_raw=np.zeros(0),
                                max_abs_feature=self.s.runtime.max_abs_feature)
            publish(self.s, intent=self.intent, booster_bytes=raw, features=features,
                    transform=provisional_transform(ref).to_dict(), also=also,
                    metadata={**meta, "provisional_transform": "for shadow scoring only; never activated"})
        self.say(self._registered)
        return self._registered

    def _check_features(self, path: Path, features: list[str], incumbent, *, reject: bool) -> None:
        """A feature the incumbent does not read: under unknown_features = "reject" the workers dead-letter every
        event carrying it, so the candidate would be shadow-scored on it missing and refused far later for
        near-constant scores; refused here instead. Under "ignore", events may carry it: said, not refused."""
        # The intent's entity-state features are computed by the workers, never carried by events: a candidate
        # may read any of them. One the config does not compute is refused with the workers' own reason.
        spec = next((i.state for i in self.s.intents if i.name == self.intent and i.state is not None), None)
        computed = set(spec.feature_names()) if spec is not None else set()
        known = set(incumbent.features) | computed
        new = [f for f in features if f not in known]
        if not new:
            return
        stateful = [f for f in new if spec is not None and f.startswith(spec.prefix + ".")]
        if stateful:
            raise ModelError(f"{path.name} reads {', '.join(stateful[:10])}, which intent {self.intent}'s state "
                             f"does not compute (it computes {', '.join(sorted(computed))}); nothing registered")
        names = ", ".join(new[:10]) + (f" (and {len(new) - 10} more)" if len(new) > 10 else "")
        if reject:
            raise ModelError(f"{path.name} reads {names}, which {incumbent.name} does not: intent {self.intent} "
                             "dead-letters events carrying features its active version does not know "
                             "(unknown_features = \"reject\"), so they can never be present; nothing registered")
        self.out(f"warning: {path.name} reads {names}, which {incumbent.name} does not; intent {self.intent} "
                 "accepts events carrying them (unknown_features = \"ignore\"); where events lack them, the "
                 "model scores them as missing")

    # ---- shadow ----------------------------------------------------------------------------------

    def _to_shadow(self, rec: DeploymentRecord) -> DeploymentRecord:
        def make(reg, rec):
            shadow = ShadowRecord(intent=self.intent, version=rec.candidate, set_at=now_ms())
            return [(shadow_key(self.intent), dump(shadow))], dr.advanced(
                rec, "shadow", f"{self.intent}@{rec.candidate} scores live traffic in shadow")
        return self.write(rec, make)

    def keep_shadow(self, rec: DeploymentRecord, setting: ShadowSetting | None = None) -> None:
        """Set the candidate as the intent's shadow again if someone changed it (`models shadow X --off`) while
        the deployment needs its pairs: else the window never fills and the deploy waits for ever. `setting`:
        the shadow record as followed while collecting (else the models topic is read once)."""
        if setting is not None:
            current = setting.version()
        else:
            sh = read_models(self.s).shadows.get(self.intent)
            current = None if sh is None else sh.version
        if current == rec.candidate:
            return

        def step(reg: ModelRegistry):
            on_topic = reg.deployments.get((self.intent, rec.deployment))
            if on_topic is None or on_topic.steps != rec.steps:
                raise ModelError(f"deployment {rec.name} was moved on by another process "
                                 f"(now {on_topic.state if on_topic else 'gone'})")
            return [(shadow_key(self.intent), dump(ShadowRecord(intent=self.intent, version=rec.candidate,
                                                                set_at=now_ms())))], None

        write_models(self.s, self.intent, step)
        was = "off" if current is None else f"{self.intent}@{current}"
        self.out(f"{clock(now_ms())}  {rec.name}  {rec.state:11} the shadow of {self.intent} was {was}, not "
                 f"{self.intent}@{rec.candidate}: set again")

    def context(self, reg: ModelRegistry | None = None):
        reg = reg or read_models(self.s)
        ref = ReferenceDistribution.from_dict(reg.references[self.intent].reference)
        tenants = [t for t in read_tenants(self.s).values() if self.intent in t.intents] or \
            [t for t in self.s.tenants if self.intent in t.intents]
        bands = {t.tenant_id: sorted(resolve_bands(t.bands, ref).items(), key=lambda kv: kv[1])
                 for t in tenants if not t.suspended}
        return reg, ref, tenants, bands

    def window_target(self, tenants, ref) -> tuple[int, str]:
        need = calibration_need(tenants, self.intent, ref)
        target = max(self.g.shadow_events, math.ceil(need.events / (1.0 - self.g.holdout_share)))
        return target, need.why

    def map_needs(self, tenants, ref) -> dict:
        """fit_score_transform's tenant-map sizes: a tenant's own map only from enough events for its top band."""
        default, per = tenant_map_needs(tenants, self.intent, ref, self.g.min_tenant_events)
        return {"min_tenant_events": default, "tenant_min_events": per}

    def collect(self, rec: DeploymentRecord, feed: ShadowFeed, target: int, since_ms: int, what: str) -> bool:
        """Poll `feed` until it holds `target` pairs; False when the timeout comes first."""
        deadline = since_ms / 1000 + (self.g.shadow_timeout_s if what == "shadow" else self.g.watch_timeout_s)
        shown = checked = time.monotonic()
        setting = None
        try:
            while len(feed) < target:
                if self.stop.is_set():
                    raise Interrupted(f"deploy stopped; deployment {rec.name} stays {rec.state}")
                if time.time() > deadline:
                    return False
                if what == "shadow" and time.monotonic() - checked > SHADOW_CHECK_S:
                    checked = time.monotonic()
                    setting = setting or ShadowSetting(self.s, self.intent)
                    self.keep_shadow(rec, setting)
                feed.poll(min(self.g.poll_s, 1.0))
                if time.monotonic() - shown > 10:
                    shown = time.monotonic()
                    self.out(f"{clock(now_ms())}  {rec.name}  {rec.state:11} {what}: {len(feed):,} of {target:,} "
                             "events")
            return True
        finally:
            if setting is not None:
                setting.close()

    def _fit(self, rec: DeploymentRecord) -> DeploymentRecord:
        reg, ref, tenants, _ = self.context()
        target, why = self.window_target(tenants, ref)
        cand = reg.versions[(self.intent, rec.candidate)]
        since = rec.step("shadow").at - 1000
        self.keep_shadow(rec)  # on resume too: the shadow may have been turned off while no deploy ran
        feed = ShadowFeed(self.s, self.intent, cand.name, {f"{self.intent}@{rec.incumbent}"}, since)
        try:
            if not self.collect(rec, feed, target, since, "shadow"):
                n = len(feed)
                return self.refuse(rec, f"the shadow window holds {n:,} of the {target:,} events it needs after "
                                        f"{self.g.shadow_timeout_s:g}s: {target - n:,} more" + (f" ({why})" if why else ""))
            win = feed.window(0, target)
        finally:
            feed.close()
        fit, tail = win.split(self.g.holdout_share)
        prior = {k: cand.transform.get("correction", {}).get(k)
                 for k in ("negative_sampling_rate", "train_prevalence", "prod_prevalence")}
        try:
            check_probabilities(load_version(cand).booster, what=cand.name, n_features=len(cand.features),
                                calibration_raw=win.shadow_raw, max_abs_feature=self.s.runtime.max_abs_feature)
            check_calibration_size(len(fit), calibration_need(tenants, self.intent, ref), "the fit window")
            st, _ = fit_score_transform(fit.shadow_raw, reference=ref, incumbent_ref_scores=fit.incumbent,
                                        tenant_ids=fit.tenant, **self.map_needs(tenants, ref), **prior)
        except (ModelError, DataError, TransformError) as e:
            return self.refuse(rec, str(e))
        self._tail = tail
        figures = {"window_events": len(win), "fit_events": len(fit), "holdout_events": len(tail),
                   "holdout_event_times": [int(tail.event_time[0]), int(tail.event_time[-1])],
                   "tenant_maps": list(st.tenant_ids)}

        def also(reg, version, _act):
            new = dr.advanced(rec, "fitted", f"{version.name} aligned to {self.intent}@{rec.incumbent} on the first "
                                             f"{len(fit):,} of {len(win):,} shadow events; {len(tail):,} held out",
                              figures, serving=version.version)
            self._fitted = new
            return [dr.entry(new)]

        publish(self.s, intent=self.intent, booster_bytes=cand.booster_bytes(), features=list(cand.features),
                transform=st.to_dict(), feature_contract=cand.feature_contract, also=also,
                metadata={**cand.metadata, "deployment": rec.deployment, "reuses_booster_of": cand.name,
                          "aligned_to": f"{self.intent}@{rec.incumbent}", "calibration_events": len(fit),
                          "provisional_transform": None})
        self.say(self._fitted)
        return self._fitted

    # ---- judged ----------------------------------------------------------------------------------

    def _reread_tail(self, rec: DeploymentRecord, cand_name: str) -> Window:
        """After a restart between fit and judgement: the held-out tail again, by its event times."""
        f = rec.step("fitted").figures
        lo, hi = f["holdout_event_times"]
        feed = ShadowFeed(self.s, self.intent, cand_name, {f"{self.intent}@{rec.incumbent}"},
                          rec.step("shadow").at - 1000)
        try:
            deadline = time.monotonic() + 60
            while feed.poll(1.0) and time.monotonic() < deadline:
                pass
            win = feed.window().sorted()
        finally:
            feed.close()
        rows = np.flatnonzero((win.event_time >= lo) & (win.event_time <= hi))
        return win.take(rows[:f["holdout_events"]])

    def judgement(self, old: np.ndarray, new: np.ndarray, win: Window, bands) -> Judgement:
        labels = read_labels(self.s, win.event_id)
        return judge(old, new, win.tenant, bands, self.g, labels)

    def _judge(self, rec: DeploymentRecord) -> DeploymentRecord:
        reg, _, _, bands = self.context()
        cand = reg.versions[(self.intent, rec.candidate)]
        tail = self._tail if self._tail is not None else self._reread_tail(rec, cand.name)
        st = load_version(reg.versions[(self.intent, rec.serving)]).transform
        j = self.judgement(tail.incumbent, st.apply(tail.shadow_raw, tail.tenant), tail, bands)
        for line in table_lines(j):
            self.out(line)
        judged = dr.advanced(rec, "judged", f"{'passed' if j.passed else 'FAILED'} on {j.events:,} held-out events",
                             j.to_dict())
        if j.passed:
            return self.write(rec, lambda reg, r: ([], judged))
        return self.refuse(rec, j.reason(), judged)

    def refuse(self, rec: DeploymentRecord, reason: str, via: DeploymentRecord | None = None) -> DeploymentRecord:
        """Refused: shadow scoring of the candidate stops; the incumbent keeps serving."""
        def make(reg, r):
            out = []
            sh = reg.shadows.get(self.intent)
            if sh is not None and sh.version == rec.candidate:
                out.append((shadow_key(self.intent), dump(ShadowRecord(intent=self.intent, version=None,
                                                                       set_at=now_ms()))))
            return out, dr.advanced(via or rec, "refused", reason)
        return self.write(rec, make)

    def abort(self) -> DeploymentRecord:
        """End the intent's open deployment by hand (its model file gone, or not wanted): before activation it
        is refused; after, rolled back by event time, as a broken guard would. Shadow scoring stops either way
        and the incumbent serves. A deploy process still running it finds it moved on and stops."""
        cur = read_models(self.s).latest_deployment(self.intent)
        if cur is None or cur.final:
            raise ModelError(f"intent {self.intent} has no open deployment to abort"
                             + (f" (its latest, {cur.name}, is {cur.state})" if cur is not None else ""))
        reason = "aborted by the user"
        if cur.state not in ("activated", "watched"):
            return self.refuse(cur, reason)
        from_time = effective_time(self.s)

        def make(reg, r):
            act = activation_record(reg, self.intent, cur.incumbent, from_time)
            off = [] if (sh := reg.shadows.get(self.intent)) is None or sh.version is None else [
                (shadow_key(self.intent), dump(ShadowRecord(intent=self.intent, version=None, set_at=now_ms())))]
            return [(active_key(self.intent), dump(act)), *off], dr.advanced(
                cur, "rolled back", f"{reason}; {self.intent}@{cur.incumbent} serves again from event time "
                                    f"{from_time}", {"from_event_time": from_time})
        return self.write(cur, make)

    # ---- activated -------------------------------------------------------------------------------

    def _activate(self, rec: DeploymentRecord) -> DeploymentRecord:
        from_time = effective_time(self.s)

        def make(reg, r):
            if reg.active_version(self.intent) != rec.incumbent:
                raise ModelError(f"{self.intent}@{reg.active_version(self.intent)} was activated during deployment "
                                 f"{rec.name}; nothing was activated")
            act = activation_record(reg, self.intent, rec.serving, from_time)
            old = ShadowRecord(intent=self.intent, version=rec.incumbent if self.g.watch_events else None,
                               set_at=now_ms())
            detail = (f"{self.intent}@{rec.serving} serves events from event time {from_time} (input watermark + "
                      f"{self.s.runtime.change_lead_ms} ms); {self.intent}@{rec.incumbent} "
                      + ("scores in shadow for the watch" if self.g.watch_events else "retired"))
            return [(active_key(self.intent), dump(act)), (shadow_key(self.intent), dump(old))], dr.advanced(
                rec, "activated", detail, {"from_event_time": from_time, "version": rec.serving})
        return self.write(rec, make)
