"""`deploy` operations that need the models topic but no worker or traffic: a candidate whose features the
events cannot carry, aborting an open deployment, and a shadow turned off under an open deployment."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from muse_stream.cli import main
from muse_stream.config import Settings, dump_toml, load_settings
from muse_stream.deploy.controller import Deployer, Interrupted
from muse_stream.errors import ModelError
from muse_stream.kafka.topics import ensure_all
from muse_stream.models.store import read_models, set_shadow
from muse_stream.tenants import seed_tenants
from tests.fixtures.helpers import FEATURES, publish_model

pytestmark = pytest.mark.kafka
# intent -> its unknown_features policy
INTENTS = {"o_reject": "reject", "o_ignore": "ignore", "o_resume": "reject"}


@pytest.fixture(scope="module")
def ops_stack(bootstrap: str) -> Settings:
    u = uuid.uuid4().hex[:8]
    data = load_settings(Path(__file__).parents[1] / "data" / "test.toml", bootstrap=bootstrap).model_dump()
    data["topics"].update(events=f"t{u}.events", models=f"t{u}.models", tenants=f"t{u}.tenants",
                          deadletter=f"t{u}.deadletter", decisions_prefix=f"t{u}.decisions.",
                          shadow_prefix=f"t{u}.shadow.", labels=f"t{u}.labels")
    data["runtime"].update(group_id=f"g{u}", transactional_id_prefix=f"tx{u}")
    data["intents"] = [{"name": i, "unknown_features": p} for i, p in INTENTS.items()]
    data["tenants"] = [{"tenant_id": f"t_{i}", "intents": [i], "bands": {"review": {"rate": 0.05}}}
                       for i in INTENTS]
    data["deploy"] = {"shadow_events": 1000, "watch_events": 0, "shadow_timeout_s": 60, "poll_s": 0.2}
    s = Settings.model_validate(data)
    ensure_all(s)
    seed_tenants(s)
    return s


def booster_file(tmp_path: Path, features: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, len(features))).astype(np.float32)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 3.0)))).astype(np.int8)
    b = xgb.train({"max_depth": 2, "objective": "binary:logistic", "nthread": 1},
                  xgb.DMatrix(x, label=y, feature_names=features), 5)
    path = tmp_path / f"cand{seed}.ubj"
    b.save_model(path)
    return path


def wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition never held")
        time.sleep(0.1)


def start(s: Settings, intent: str, model: Path, lines: list[str]):
    """A deploy in a thread, stopped (Interrupted) by the returned event; join the thread to end it."""
    stop = threading.Event()

    def run():
        try:
            Deployer(s, intent, out=lines.append, stop=stop).deploy(model)
        except Interrupted:
            pass

    t = threading.Thread(target=run)
    t.start()
    return stop, t


def test_a_candidate_reading_features_the_events_cannot_carry_is_refused_at_registration(ops_stack, tmp_path):
    s, intent = ops_stack, "o_reject"
    publish_model(s, intent, seed=1)
    model = booster_file(tmp_path, [*FEATURES[:3], "g7", "g8"])
    with pytest.raises(ModelError) as e:
        Deployer(s, intent, out=lambda line: None).deploy(model)
    msg = str(e.value)
    assert "\n" not in msg and "reads g7, g8, which o_reject@1 does not" in msg and '"reject"' in msg
    reg = read_models(s)
    assert [v.version for v in reg.versions_of(intent)] == [1] and reg.latest_deployment(intent) is None


def test_under_ignore_a_candidate_reading_other_features_is_registered_with_a_warning_and_can_be_aborted(
        ops_stack, tmp_path, capsys):
    s, intent = ops_stack, "o_ignore"
    publish_model(s, intent, seed=2)
    model = booster_file(tmp_path, [*FEATURES[:4], "g9"], seed=1)
    lines: list[str] = []
    stop, t = start(s, intent, model, lines)
    wait_for(lambda: (d := read_models(s).latest_deployment(intent)) is not None and d.state == "shadow")
    stop.set()
    t.join(30)
    warned = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warned) == 1 and "reads g9, which o_ignore@1 does not" in warned[0], lines
    assert read_models(s).shadows[intent].version == 2
    # Stuck in shadow (as when its model file is gone): `deploy --abort` ends it; the incumbent keeps serving.
    cfg = tmp_path / "muse.toml"
    cfg.write_text(dump_toml(s))
    assert main(["deploy", "--abort", "--intent", intent, "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"deployment {intent}#1: refused (aborted by the user)"
    reg = read_models(s)
    assert reg.latest_deployment(intent).state == "refused" and reg.shadows[intent].version is None
    assert reg.active_version(intent) == 1
    assert main(["deploy", "--abort", "--intent", intent, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"intent {intent} has no open deployment to abort (its latest, {intent}#1, is refused)")


def test_a_shadow_turned_off_under_an_open_deployment_is_set_again(ops_stack, tmp_path):
    s, intent = ops_stack, "o_resume"
    publish_model(s, intent, seed=3)
    model = booster_file(tmp_path, FEATURES, seed=2)

    def shadow():
        return read_models(s).shadows.get(intent)

    lines: list[str] = []
    stop, t = start(s, intent, model, lines)
    try:
        # While the deploy collects its window (no traffic here: it waits).
        wait_for(lambda: (sh := shadow()) is not None and sh.version == 2)
        set_shadow(s, intent, None)  # what `models shadow o_resume --off` does
        wait_for(lambda: shadow().version == 2)
    finally:
        stop.set()
        t.join(30)
    assert sum("the shadow of o_resume was off, not o_resume@2: set again" in ln for ln in lines) == 1, lines
    # Turned off while no deploy runs: the resumed deploy sets it again before it collects.
    set_shadow(s, intent, None)
    resumed: list[str] = []
    stop, t = start(s, intent, model, resumed)
    try:
        wait_for(lambda: shadow().version == 2)
    finally:
        stop.set()
        t.join(30)
    assert resumed[0] == f"resuming deployment {intent}#1 of {model.name} at shadow"
    assert "the shadow of o_resume was off, not o_resume@2: set again" in resumed[1], resumed
