"""`deploy` on the real broker, one worker shared by every scenario (each scenario its own intent and tenant):
a deployment that passes and refreshes its map in the watch; one refused by its guards; a deploy process
stopped mid-shadow and resumed from the models topic; a rollback by event time during the watch; a tied
threshold that keeps its alert rate; the command itself; `deploy --watch DIR`."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np
import orjson
import pytest
import xgboost as xgb

from muse_stream.cli import main
from muse_stream.commands.deploy import watch_dir
from muse_stream.config import Settings, dump_toml, load_settings
from muse_stream.deploy.controller import Deployer, Interrupted
from muse_stream.errors import ModelError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec, create_topics, ensure_all
from muse_stream.models.bands import resolve_bands
from muse_stream.models.registry import load_version
from muse_stream.models.store import publish, read_models
from muse_stream.models.transform import fit_score_transform
from muse_stream.telemetry.status import active_models
from muse_stream.tenants import seed_tenants
from tests.fixtures.helpers import FEATURES, TopicReader, publish_model

pytestmark = pytest.mark.kafka
INTENTS = ["d_pass", "d_refuse", "d_recall", "d_restart", "d_rollback", "d_tie", "d_cli", "d_dir"]
BANDS = {"review": {"rate": 0.10}, "decline": {"rate": 0.04}}


@pytest.fixture(scope="module")
def deploy_stack(bootstrap: str):
    u = uuid.uuid4().hex[:8]
    base = load_settings(Path(__file__).parents[1] / "data" / "test.toml", bootstrap=bootstrap)
    data = base.model_dump()
    data["topics"].update(events=f"t{u}.events", models=f"t{u}.models", tenants=f"t{u}.tenants",
                          deadletter=f"t{u}.deadletter", decisions_prefix=f"t{u}.decisions.",
                          shadow_prefix=f"t{u}.shadow.", labels=f"t{u}.labels")
    # A change made now takes effect 6 s of event time past the watermark: about 1 s of the traffic below, enough
    # for the worker to read it before the first event it governs.
    data["runtime"].update(group_id=f"g{u}", transactional_id_prefix=f"tx{u}", change_lead_ms=6000)
    data["intents"] = [{"name": i} for i in INTENTS]
    data["tenants"] = [{"tenant_id": f"t_{i}", "intents": [i], "bands": BANDS} for i in INTENTS]
    data["deploy"] = {"shadow_events": 4000, "watch_events": 0, "shadow_timeout_s": 60, "watch_timeout_s": 60,
                      "min_alerts": 15, "poll_s": 0.2, "min_tenant_events": 1000,
                      "intents": {"d_pass": {"watch_events": 4000}, "d_rollback": {"watch_events": 8000},
                                  # A four-valued incumbent against a continuous candidate: its subject is the
                                  # fitted map at a tie (checked in-sample below), not the guards' noise on
                                  # 1,200 held-out events of a tied score.
                                  "d_tie": {"psi_max": 10.0, "min_rank_correlation": -1.0,
                                            "ratio_tolerance": 0.5}}}
    s = Settings.model_validate(data)
    ensure_all(s)
    create_topics(s, [TopicSpec(s.topics.labels, 1)])
    seed_tenants(s)
    from tests.fixtures.workers import ThreadWorker

    w = ThreadWorker(s)
    yield s
    w.close()


class Traffic:
    """Live events for one tenant at about `rate` events/s, event times increasing across every scenario;
    `shift` adds to feature f3 from when it is set. With `labels`, each event's label (fraud driven by f0 and
    f1, the incumbent's signal) goes to the labels topic too."""

    clock: ClassVar[list[int]] = [1_700_000_000_000]

    def __init__(self, settings: Settings, tenant: str, rate: int = 6000, labels: bool = False,
                 shift_after: int | None = None) -> None:
        self.s, self.tenant, self.rate, self.labels = settings, tenant, rate, labels
        self.shift, self.shift_after = 0.0, shift_after
        self.sent: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rng = np.random.default_rng(len(tenant))
        self.p = OutputProducer(producer_config(settings, **{"linger.ms": 5}), name="traffic")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            x = self.rng.normal(size=(600, len(FEATURES)))
            if self.shift_after is not None and len(self.sent) >= self.shift_after:
                self.shift = 2.5
            x[:, 3] += self.shift
            t0 = Traffic.clock[0]
            Traffic.clock[0] += 600
            evs = [{"event_id": f"{self.tenant}-{t0 + j}", "tenant_id": self.tenant, "event_time": t0 + j,
                    "features": dict(zip(FEATURES, row.tolist()))} for j, row in enumerate(x)]
            for e in evs:
                self.p.produce(self.s.topics.events, orjson.dumps(e), e["event_id"].encode())
            if self.labels:
                y = self.rng.random(len(x)) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.5 * x[:, 1] - 3.0)))
                for e, v in zip(evs, y.tolist()):
                    self.p.produce(self.s.topics.labels, orjson.dumps(
                        {"event_id": e["event_id"], "label": int(v), "label_time": e["event_time"]}), None)
            self.p.flush(30)
            self.sent += [e["event_id"] for e in evs]
            self.stop.wait(600 / self.rate)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def booster_file(tmp_path: Path, name: str, weights: tuple[float, ...], seed: int, depth: int = 3,
                 rounds: int = 20) -> Path:
    """A booster on synthetic rows whose fraud logit weighs f0..f4 by `weights`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5000, len(FEATURES))).astype(np.float32)
    logit = x @ np.asarray(weights, dtype=np.float32) - 3.0
    y = (rng.random(5000) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    b = xgb.train({"max_depth": depth, "eta": 0.3, "objective": "binary:logistic", "nthread": 1},
                  xgb.DMatrix(x, label=y, feature_names=FEATURES), rounds)
    path = tmp_path / f"{name}.ubj"
    b.save_model(path)
    return path


def deploy(settings: Settings, intent: str, model: Path, traffic: Traffic, lines: list[str], **kw):
    try:
        return Deployer(settings, intent, out=lines.append, **kw).deploy(model)
    finally:
        traffic.close()


def test_a_deployment_passes_its_guards_and_refreshes_its_map_in_the_watch(deploy_stack, tmp_path):
    s, intent = deploy_stack, "d_pass"
    publish_model(s, intent, seed=1)
    model = booster_file(tmp_path, "retrained", (2.0, -1.5, 0.5, 0.0, 0.0), seed=11)
    lines: list[str] = []
    traffic = Traffic(s, f"t_{intent}")
    try:
        rec = Deployer(s, intent, out=lines.append).deploy(model)
        # The refresh serves from 6 s of event time past the watermark, which `done` may come before: traffic
        # runs on until events on both sides of it are sent.
        refreshed_from = max(st.figures.get("from_event_time", 0) for st in rec.steps)
        while Traffic.clock[0] < refreshed_from + 3000 and traffic.thread.is_alive():
            time.sleep(0.1)
    finally:
        traffic.close()
    assert [st.state for st in rec.steps][:7] == ["registered", "shadow", "fitted", "judged", "activated",
                                                  "watched", "watched"]
    assert rec.state == "done", lines
    judged = rec.step("judged").figures
    assert judged["passed"] and {r["guard"] for r in judged["rows"]} == {"alert rate", "rank", "psi"}
    assert any(r["ok"] is True for r in judged["rows"] if r["guard"] == "alert rate")
    reg = read_models(s)
    # The refresh is a new version of the same booster, active; the replaced version scores in shadow no more.
    assert len(rec.refreshes) == 1 and reg.active_version(intent) == rec.serving == rec.refreshes[0]
    fitted = reg.versions[(intent, rec.step("activated").figures["version"])]
    refreshed = reg.versions[(intent, rec.serving)]
    assert refreshed.booster_sha256 == fitted.booster_sha256 == rec.booster_sha256
    assert refreshed.metadata["reuses_booster_of"] == f"{intent}@{rec.candidate}"
    assert reg.shadows[intent].version is None
    assert any("first live decision" in line for line in lines) and any("FAIL" not in ln for ln in lines)
    # Every event decided exactly once, each decision naming the version that scored it.
    reader = TopicReader(s, [s.topics.decisions_topic(f"t_{intent}")])
    recs = [orjson.loads(m.value()) for m in reader.until(lambda r: len(r) >= len(traffic.sent))]
    reader.poll_for(0.5)
    reader.close()
    recs = [orjson.loads(m.value()) for m in reader.records]
    assert sorted(r["event_id"] for r in recs) == sorted(traffic.sent)
    assert {r["model_version"] for r in recs} >= {f"{intent}@1", f"{intent}@{rec.serving}"}


@pytest.mark.parametrize(("intent", "shift_after", "failing"), [
    # f3 moves in the held-out tail: the candidate's alert rates leave the tolerance and its mapped scores move.
    ("d_refuse", 2900, {"alert rate", "psi", "rank"}),
    # No move: aligned, its alert rates and scores match the incumbent's, but it misses the labelled frauds.
    ("d_recall", None, {"recall", "rank"}),
])
def test_a_shifted_model_is_refused_by_its_guards_and_the_incumbent_keeps_serving(deploy_stack, tmp_path, intent,
                                                                                  shift_after, failing):
    s = deploy_stack
    publish_model(s, intent, seed=2)
    # The candidate reads only f3, which the incumbent ignores, so it ranks events unlike the incumbent and
    # misses the frauds the labels (driven by f0 and f1, the incumbent's signal) name.
    model = booster_file(tmp_path, "shifted", (0.0, 0.0, 0.0, 3.0, 0.0), seed=12)
    lines: list[str] = []
    result = []
    t = threading.Thread(target=lambda: result.append(Deployer(s, intent, out=lines.append).deploy(model)))
    t.start()
    # Traffic from when the candidate shadows; with shift_after, f3 moves after the first 2,900 events, so the
    # held-out tail (the window's last 1,200 events by event time) is all moved and the fit saw none of it.
    _wait_state(s, intent, "shadow")
    traffic = Traffic(s, f"t_{intent}", labels=True, shift_after=shift_after)
    t.join(60)
    traffic.close()
    rec = result[0]
    assert rec.state == "refused", lines
    rows = rec.step("judged").figures["rows"]
    assert {r["guard"] for r in rows if r["ok"] is False} == failing, rows
    assert all(f"{g} " in rec.steps[-1].detail for g in failing)
    reg = read_models(s)
    assert reg.active_version(intent) == 1 and reg.shadows[intent].version is None
    assert any("FAIL" in line for line in lines)


def _wait_state(s: Settings, intent: str, state: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        d = read_models(s).latest_deployment(intent)
        if d is not None and d.state == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{intent} never reached {state}")


def test_a_deploy_stopped_mid_shadow_resumes_from_the_models_topic(deploy_stack, tmp_path):
    s, intent = deploy_stack, "d_restart"
    publish_model(s, intent, seed=3)
    model = booster_file(tmp_path, "retrained", (2.0, -1.5, 0.5, 0.0, 0.0), seed=13)
    stop, first_lines, stopped = threading.Event(), [], []

    def first_process():
        try:
            Deployer(s, intent, out=first_lines.append, stop=stop).deploy(model)
        except Interrupted as e:
            stopped.append(str(e))

    t = threading.Thread(target=first_process)
    t.start()
    _wait_state(s, intent, "shadow")  # no traffic yet: it waits for its shadow window
    stop.set()
    t.join(30)
    assert stopped == [f"deploy stopped; deployment {intent}#1 stays shadow"]
    shown = active_models(read_models(s))["intents"][intent]["deployment"]  # what `status` and its JSON show
    assert (shown["id"], shown["state"], [st["state"] for st in shown["steps"]]) == (
        f"{intent}#1", "shadow", ["registered", "shadow"])
    # Another model cannot start while this deployment is open.
    other = booster_file(tmp_path, "other", (1.0, -1.0, 0.0, 0.0, 0.0), seed=14)
    with pytest.raises(ModelError, match="one deployment at a time per intent"):
        Deployer(s, intent, out=first_lines.append).deploy(other)
    lines: list[str] = []
    rec = deploy(s, intent, model, Traffic(s, f"t_{intent}"), lines)
    assert lines[0] == f"resuming deployment {intent}#1 of retrained.ubj at shadow"
    assert rec.deployment == 1 and rec.state == "done", lines
    assert [st.state for st in rec.steps] == ["registered", "shadow", "fitted", "judged", "activated", "done"]
    reg = read_models(s)
    assert [v.version for v in reg.versions_of(intent)] == [1, 2, 3]  # registered once, fitted once
    assert reg.active_version(intent) == 3 and len([k for k in reg.deployments if k[0] == intent]) == 1


def test_a_guard_broken_in_the_watch_rolls_back_by_event_time(deploy_stack, tmp_path):
    s, intent = deploy_stack, "d_rollback"
    publish_model(s, intent, seed=4)
    # It reads f3 as well; once the watch has begun, f3 moves and the new version alerts far more often.
    model = booster_file(tmp_path, "retrained", (2.0, -1.5, 0.5, 1.0, 0.0), seed=15)
    traffic = Traffic(s, f"t_{intent}")

    def shift_in_watch():
        _wait_state(s, intent, "watched", 60)
        traffic.shift = 3.0

    threading.Thread(target=shift_in_watch, daemon=True).start()
    lines: list[str] = []
    rec = Deployer(s, intent, out=lines.append).deploy(model)
    back_from = rec.steps[-1].figures.get("from_event_time", 0)
    while Traffic.clock[0] < back_from + 3000:  # events on both sides of the rollback
        time.sleep(0.1)
    traffic.close()
    assert rec.state == "rolled back", lines
    assert "broke a guard: alert rate t_d_rollback/" in rec.steps[-1].detail
    reg = read_models(s)
    act = reg.activations[intent]
    assert act.version == 1 and act.timeline[-1].from_time == back_from and reg.shadows[intent].version is None
    reader = TopicReader(s, [s.topics.decisions_topic(f"t_{intent}")])
    reader.until(lambda r: len(r) >= len(traffic.sent))
    reader.close()
    recs = [orjson.loads(m.value()) for m in reader.records]
    assert sorted(r["event_id"] for r in recs) == sorted(traffic.sent)
    after = {r["model_version"] for r in recs if r["event_time"] >= back_from}
    assert after == {f"{intent}@1"}
    assert f"{intent}@{rec.serving}" in {r["model_version"] for r in recs if r["event_time"] < back_from}


def test_a_tied_threshold_keeps_its_alert_rate_through_a_deployment(deploy_stack, tmp_path):
    s, intent = deploy_stack, "d_tie"
    # An incumbent of two stumps: four distinct scores, so its bands sit on tied groups of events.
    stumps = booster_file(tmp_path, "stumps", (2.0, -1.5, 0.0, 0.0, 0.0), seed=16, depth=1, rounds=2)
    b = xgb.Booster()
    b.load_model(stumps)
    rng = np.random.default_rng(6)
    raw = b.inplace_predict(rng.normal(size=(4000, len(FEATURES))).astype(np.float32))
    st, ref = fit_score_transform(raw)
    publish(s, intent=intent, booster_bytes=bytes(b.save_raw("ubj")), features=FEATURES, transform=st.to_dict(),
            reference=ref.to_dict(), activate=True)
    model = booster_file(tmp_path, "continuous", (2.0, -1.5, 0.5, 0.0, 0.0), seed=17)
    lines: list[str] = []
    rec = deploy(s, intent, model, Traffic(s, f"t_{intent}"), lines)
    assert rec.state == "done", rec.steps[-1].detail
    reg = read_models(s)
    fitted = load_version(reg.versions[(intent, rec.serving)]).transform
    # Judged on the map's own knots, not on a re-read of the shadow topic (whose arrival order across
    # partitions, and so the window the deployer took, can differ): the level from which mapped new scores
    # reach a threshold must be the level from which the incumbent's scores do, the tied group's lowest.
    qm = fitted.map_for(f"t_{intent}")
    lv, tk = qm.levels_, qm.target_knots_
    mapped = qm.transform(qm.model_knots_)
    thresholds = resolve_bands(next(t for t in s.tenants if t.tenant_id == f"t_{intent}").bands, ref)
    tied = 0
    for thr in thresholds.values():
        on_tie = lv[tk == thr]
        tied += int(on_tie.size >= 2 and on_tie[-1] - on_tie[0] > 0.05)
        ulps = 4 * np.spacing(thr)  # a quantile read at a tie's first level can land a few ulps beside it
        i0 = int(np.argmax(tk >= thr - ulps))  # the incumbent alerts 1 - lv[i0] at this threshold
        at = int(np.argmax(mapped >= thr))  # the mapped new scores reach it from level lv[at]
        # Unless the candidate's own scores tie across lv[i0] (a mass point, all of whose events alert
        # together, or none), that is the same level; tied, it is the tie's first level or the one after it.
        run = np.flatnonzero(np.abs(qm.model_knots_ - qm.model_knots_[i0]) <= 4 * np.spacing(qm.model_knots_[i0]))
        assert at == i0 if run.size == 1 else at in (run[0], run[-1] + 1), (thr, i0, at, run)
    assert tied >= 1  # at least one band sits on a tied group of the incumbent's scores


def test_the_deploy_command_takes_a_model_file_live_and_prints_each_step(deploy_stack, tmp_path, capsys):
    s, intent = deploy_stack, "d_cli"
    publish_model(s, intent, seed=5)
    model = booster_file(tmp_path, "retrained", (2.0, -1.5, 0.5, 0.0, 0.0), seed=18)
    cfg = tmp_path / "muse.toml"
    cfg.write_text(dump_toml(s))
    assert main(["deploy", str(model), "--config", str(cfg)]) == 2
    assert "deploy needs MODEL and --intent" in capsys.readouterr().err
    traffic = Traffic(s, f"t_{intent}")
    try:
        code = main(["deploy", str(model), "--intent", intent, "--config", str(cfg)])
    finally:
        traffic.close()
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    states = [ln.split()[2] for ln in out if ln.startswith(tuple("0123456789")) and f"{intent}#1" in ln]
    assert states == ["registered", "shadow", "fitted", "judged", "activated", "done"], out
    assert any(ln.split()[:2] == ["guard", "tenant"] for ln in out) and out[-1] == f"deployment {intent}#1: done"
    reg = read_models(s)
    rec = reg.latest_deployment(intent)
    assert rec.state == "done" and reg.active_version(intent) == rec.serving == 3


def reg_sha(s: Settings, intent: str) -> str:
    return read_models(s).latest_deployment(intent).booster_sha256


def test_deploy_watch_deploys_a_model_file_dropped_in_its_folder_once(deploy_stack, tmp_path, capsys):
    s, intent = deploy_stack, "d_dir"
    publish_model(s, intent, seed=6)
    drop = tmp_path / "models"
    (drop / intent).mkdir(parents=True)  # DIR/<intent>/: the folder names the intent
    stop, result = threading.Event(), []
    watcher = threading.Thread(target=lambda: result.append(watch_dir(s, drop, None, stop=stop, poll_s=0.2)))
    watcher.start()
    traffic = Traffic(s, f"t_{intent}")
    try:
        # Written elsewhere and moved in whole, its time a few seconds back: a file finished writing (the watch
        # leaves a file modified in the last second for the next round).
        model = booster_file(tmp_path, "retrained", (2.0, -1.5, 0.5, 0.0, 0.0), seed=19)
        dropped = drop / intent / "retrained.ubj"
        shutil.move(model, dropped)
        os.utime(dropped, (time.time() - 5, time.time() - 5))
        _wait_state(s, intent, "done", 60)
        # The same booster under another name, written in pieces over a second as a slow copy would: never read
        # half-way (no error), and once whole, skipped with one line (its intent has deployed it).
        again = drop / intent / "again.ubj"
        data = dropped.read_bytes()
        with again.open("wb") as f:
            for k in range(6):
                f.write(data[k * len(data) // 6:(k + 1) * len(data) // 6])
                f.flush()
                time.sleep(0.2)
        junk = drop / intent / "junk.ubj"
        junk.write_bytes(b"not a booster")
        os.utime(junk, (time.time() - 5, time.time() - 5))
        time.sleep(1.8)  # the copy a second old, then two rounds
    finally:
        stop.set()
        watcher.join(30)
        traffic.close()
    assert result == [0]
    out = capsys.readouterr().out
    assert f"new model file {dropped} for {intent}" in out and f"deployment {intent}#1: done" in out
    assert [ln for ln in out.splitlines() if "again.ubj" in ln] == [
        (f"{again}: skipped: {intent} has deployed this booster before ({intent}#1 of retrained.ubj, done; "
         f"sha256 {reg_sha(s, intent)[:12]})")], out
    junk_lines = [ln for ln in out.splitlines() if "junk.ubj" in ln]
    assert len(junk_lines) == 1 and junk_lines[0].count(str(junk)) == 1 and "not an XGBoost model" in junk_lines[0]
    reg = read_models(s)
    assert [k for k in reg.deployments if k[0] == intent] == [(intent, 1)]
    assert reg.active_version(intent) == reg.latest_deployment(intent).serving
