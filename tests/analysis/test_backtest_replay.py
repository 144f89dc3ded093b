"""Backtests and replays against the real broker."""

from __future__ import annotations

import time
import warnings

import numpy as np
import orjson
import pytest

from muse_stream.analysis.backtest import run_backtest, served, summary_markdown
from muse_stream.analysis.replay import run_replay
from muse_stream.cli import main
from muse_stream.errors import MuseError
from muse_stream.kafka.ranges import Bound
from muse_stream.models.registry import load_version
from muse_stream.models.store import read_models
from muse_stream.scoring.contract import model_matrix
from tests.fixtures.helpers import (
    TopicReader,
    decision_topics,
    event,
    produce,
    publish_model,
    train_booster,
    write_config,
)
from tests.fixtures.workers import ThreadWorker

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000


def test_backtest_rates_match_rates_computed_from_the_events(stack, tmp_path):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    evs = [event(i, ["acme", "globex"][i % 2], t0=T0) for i in range(4000)]
    produce(s, evs)
    cand_path = tmp_path / "cand.ubj"
    train_booster(9, shift=1.0, depth=4).save_model(str(cand_path))
    res = run_backtest(s, intent="card_fraud", candidate=str(cand_path), start=Bound("start"), end=Bound("end"),
                       calibration_fraction=0.25)
    assert res["events"] == 4000 and res["calibration_events"] == 1000
    assert res["dead_letters"] == {} and res["other_intent_events"] == 0 and res["candidate_value_too_large"] == 0
    # The same numbers straight from the events: the last 75% by event time, scored by the incumbent.
    inc = load_version(read_models(s).versions[("card_fraud", 1)])
    tail = sorted(evs, key=lambda e: e["event_time"])[1000:]
    tids = np.array([e["tenant_id"] for e in tail], dtype=object)
    x, _, _ = model_matrix([e["features"] for e in tail], inc.features, s.runtime.max_abs_feature)
    _, inc_served = served(inc, x, tids)
    cand = train_booster(9, shift=1.0, depth=4)
    cand_raw = cand.inplace_predict(x)
    bands = {t.tenant_id: t.bands for t in s.tenants}
    for t in res["tenants"]:
        mask = tids == t["tenant_id"]
        assert t["events"] == int(mask.sum())
        for b in t["bands"]:
            want = float(np.mean(inc_served[mask] >= bands[t["tenant_id"]][b["band"]]))
            assert b["incumbent"]["alert_rate"] == pytest.approx(want, abs=1e-12)
            assert b["candidate_raw"]["alert_rate"] == pytest.approx(float(np.mean(cand_raw[mask] >= b["threshold"])))
            lo, hi = b["candidate"]["ci95"]
            assert lo <= b["candidate"]["alert_rate"] <= hi
            # Fitted aligned to the incumbent on the first quarter: close to the incumbent's rate.
            assert abs(b["candidate"]["alert_rate"] - want) < 0.03
    # Same inputs, same numbers.
    again = run_backtest(s, intent="card_fraud", candidate=str(cand_path), start=Bound("start"), end=Bound("end"),
                         calibration_fraction=0.25)
    strip = lambda r: {k: v for k, v in r.items() if k != "_arrays"}
    assert orjson.dumps(strip(again), option=orjson.OPT_SERIALIZE_NUMPY) == \
        orjson.dumps(strip(res), option=orjson.OPT_SERIALIZE_NUMPY)


def test_backtest_with_labels_and_a_published_candidate(stack, tmp_path):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "card_fraud", seed=2, activate=False)
    evs = [event(i, "acme", t0=T0) for i in range(1500)]
    produce(s, evs)
    labels = tmp_path / "labels.csv"
    labels.write_text("event_id,label\n" + "\n".join(f"{e['event_id']},{int(e['features']['f0'] > 1.2)}"
                                                      for e in evs) + "\n")
    out = tmp_path / "bt"
    cfg = write_config(s, tmp_path / "muse.toml")
    assert main(["backtest", "--config", cfg, "--intent", "card_fraud", "--candidate", "card_fraud@2",
                 "--labels", str(labels), "--out", str(out)]) == 0
    data = orjson.loads((out / "backtest.json").read_bytes())
    assert data["candidate_transform"] == "its own" and data["evaluation_events"] == 1500
    lab = data["tenants"][0]["bands"][0]["labels"]
    assert lab["labelled"] == 1500 and 0 <= lab["candidate"]["recall"] <= 1
    assert (out / "backtest.png").stat().st_size > 5000 and "| acme |" in (out / "backtest.md").read_text()


def test_backtest_scores_the_events_live_scores_and_counts_its_dead_letters(stack):
    """A regression: the backtest used to score strings, booleans and 1e300 that live dead-letters."""
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "card_fraud", seed=2, activate=False)
    good = [event(i, "acme", t0=T0) for i in range(600)]
    odd = []
    for k, value in enumerate(["12.5", True, 1e300, None, {"a": 1}]):
        ev = event(1000 + k, "acme", t0=T0)
        ev["features"]["f0"] = value
        odd.append(ev)
    produce(s, good + odd + [b"{bad", event(2000, "nobody", t0=T0), event(2001, "acme", intent="nope", t0=T0)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_backtest(s, intent="card_fraud", candidate="card_fraud@2", start=Bound("start"), end=Bound("end"))
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    rep = run_replay(s, start=Bound("start"), end=Bound("end"), run_id="bt", prefix=f"{s.topics.events}.replay.")
    assert res["events"] == rep.decisions == 601  # the null feature is a missing value, scored
    assert res["dead_letters"] == {"intent_not_allowed": 1, "malformed_json": 1, "unknown_tenant": 1,
                                   "value_too_large": 1, "wrong_type": 3}
    assert sum(res["dead_letters"].values()) == rep.dead_letters and res["skipped_events"] == 7
    assert "wrong_type 3" in summary_markdown(res)


@pytest.mark.parametrize("case", ["empty_range", "unknown_intent", "unknown_version", "labels_match_nothing",
                                  "feature_mismatch"])
def test_backtest_bad_input_one_line_nothing_written(stack, tmp_path, capsys, case):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme", t0=T0) for i in range(300)])
    cfg = write_config(s, tmp_path / "muse.toml")
    out = tmp_path / "bt"
    args = ["backtest", "--config", cfg, "--intent", "card_fraud", "--candidate", "card_fraud@1", "--out", str(out)]
    if case == "empty_range":
        args += ["--from", str(int(time.time() * 1000) + 86_400_000)]  # record timestamps: all before
    elif case == "unknown_intent":
        args[args.index("--intent") + 1] = "nope"
        args[args.index("--candidate") + 1] = "nope@1"
    elif case == "unknown_version":
        args[args.index("--candidate") + 1] = "card_fraud@7"
    elif case == "labels_match_nothing":
        (tmp_path / "l.csv").write_text("event_id,label\nzzz,1\n")
        args += ["--labels", str(tmp_path / "l.csv")]
    else:
        import xgboost as xgb

        x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
        d = xgb.DMatrix(x, label=(x[:, 0] > 0).astype(int), feature_names=["a", "b", "c"])
        xgb.train({"objective": "binary:logistic"}, d, 3).save_model(str(tmp_path / "other.ubj"))
        args[args.index("--candidate") + 1] = str(tmp_path / "other.ubj")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("muse-stream: error:"), err
    assert not out.exists()


def test_replay_equals_live_decisions_event_by_event(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    publish_model(s, "card_fraud", seed=3, shift=1.0, activate=False, activate_at=T0 + 1500)
    n = 3000
    produce(s, [event(i, ["acme", "globex", "initech"][i % 3], t0=T0) for i in range(n)] + [b"{bad"])
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        live = reader.until(lambda r: len(r) >= n)
    finally:
        w.close()
        reader.close()
    res = run_replay(s, start=Bound("start"), end=Bound("end"), run_id="r1", prefix=f"{s.topics.events}.replay.")
    assert (res.events, res.decisions, res.dead_letters) == (n + 1, n, 1)
    reader = TopicReader(s, [t for t in res.topics if "decisions" in t])
    replayed = reader.until(lambda r: len(r) >= n)
    reader.close()
    key = lambda m: orjson.loads(m.value())
    a = {d["event_id"]: d for d in map(key, live)}
    b = {d["event_id"]: d for d in map(key, replayed)}
    assert a.keys() == b.keys()
    versions = set()
    for eid, d in a.items():
        r = b[eid]
        for f in ("tenant_id", "intent", "score", "raw_score", "band", "model_version", "transform_version",
                  "event_time", "source"):
            assert d[f] == r[f], (eid, f)
        versions.add(d["model_version"])
    assert {"card_fraud@1", "card_fraud@2", "account_takeover@1"} <= versions


def test_replay_refuses_live_topics(stack):
    s = stack
    with pytest.raises(MuseError, match="refusing to replay into live topics"):
        run_replay(s, start=Bound("start"), end=Bound("end"), run_id="x",
                   prefix=s.topics.decisions_prefix)
    with pytest.raises(MuseError, match="run-id"):
        run_replay(s, start=Bound("start"), end=Bound("end"), run_id="bad id")


def test_backtest_of_a_stateful_intent_points_to_replay(stack, tmp_path):
    """A backtest reads features from the events; an intent's entity state (its features, duplicates, missing
    entities) is the workers' to compute, so a backtest of such an intent is refused, pointing to replay: it
    used to score the incumbent without its state features and count other dead letters than live's."""
    from muse_stream.config import Settings
    from muse_stream.errors import DataError

    data = stack.model_dump()
    data["intents"] = [{"name": "card_fraud", "state": {"entity": ["card_id"], "windows": ["10m"],
                                                        "aggregates": ["count"]}}, {"name": "account_takeover"}]
    s = Settings.model_validate(data)
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme", t0=T0) for i in range(50)])
    path = tmp_path / "cand.ubj"
    train_booster(9, shift=1.0, depth=4).save_model(str(path))  # reads no state feature: refused all the same
    with pytest.raises(DataError, match=r"intent 'card_fraud' keeps entity state, which a backtest does not "
                                        r"compute: replay a range"):
        run_backtest(s, intent="card_fraud", candidate=str(path), start=Bound("start"), end=Bound("end"))
