"""Against the real broker: the backtest judges each event against the tenant's bands in force at its event
time (a band change in the middle of the range gives two band sets), and refuses a candidate whose outputs
are not probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from muse_stream.analysis.backtest import run_backtest, summary_markdown
from muse_stream.config import TenantConfig
from muse_stream.errors import ModelError
from muse_stream.kafka.ranges import Bound
from muse_stream.models.registry import load_version
from muse_stream.models.store import read_models
from muse_stream.scoring.contract import model_matrix
from muse_stream.tenants import put_tenants
from tests.fixtures.boosters import regression_booster
from tests.fixtures.helpers import event, produce, publish_model

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000
OLD = {"review": 0.90, "decline": 0.99}  # acme's bands in tests/data/test.toml
NEW = {"review": 0.30, "decline": 0.60}


def test_each_event_is_judged_against_the_bands_in_force_at_its_event_time(stack, tmp_path):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    put_tenants(s, [TenantConfig(tenant_id="acme", intents=("card_fraud",), bands=NEW)], effective_at=T0 + 1000)
    evs = [event(i, ["acme", "globex"][i % 2], t0=T0) for i in range(2400)]
    produce(s, evs)
    res = run_backtest(s, intent="card_fraud", candidate="card_fraud@1", start=Bound("start"), end=Bound("end"))
    assert res["evaluation_events"] == 2400  # a candidate with its own transform: every event evaluated

    # The incumbent's served scores, straight from the events.
    inc = load_version(read_models(s).versions[("card_fraud", 1)])
    x, _, _ = model_matrix([e["features"] for e in evs], inc.features, s.runtime.max_abs_feature)
    tids = np.array([e["tenant_id"] for e in evs], dtype=object)
    times = np.array([e["event_time"] for e in evs])
    served = inc.transform.apply(np.asarray(inc.predict(x), dtype=np.float64), tids)
    acme = next(t for t in res["tenants"] if t["tenant_id"] == "acme")
    before, after = (tids == "acme") & (times < T0 + 1000), (tids == "acme") & (times >= T0 + 1000)
    want = [(band, thr, int(rows.sum()), [int(times[rows].min()), int(times[rows].max())])
            for bands, rows in ((OLD, before), (NEW, after)) for band, thr in bands.items()]
    assert [(b["band"], b["threshold"], b["events"], b["event_times"]) for b in acme["bands"]] == want
    for b, (bands, rows) in zip(acme["bands"], [(OLD, before)] * 2 + [(NEW, after)] * 2):
        rate = float(np.mean(served[rows] >= bands[b["band"]]))
        assert b["incumbent"]["alert_rate"] == pytest.approx(rate, abs=1e-12)
        assert b["candidate"]["alert_rate"] == b["incumbent"]["alert_rate"]  # the same version
    # The new bands alert on more events than the old would have: judging them by the old hides that.
    assert acme["bands"][2]["incumbent"]["alert_rate"] > float(np.mean(served[after] >= OLD["review"]))
    globex = next(t for t in res["tenants"] if t["tenant_id"] == "globex")
    assert [(b["band"], b["events"]) for b in globex["bands"]] == [("review", 1200)]  # no change: one set
    md = summary_markdown(res)
    assert f"| acme | review (event times {T0}-{T0 + 998}) | 0.9 | 500 |" in md
    assert f"| acme | review (event times {T0 + 1000}-{T0 + 2398}) | 0.3 | 700 |" in md
    assert "| globex | review | 0.5 | 1,200 |" in md


def test_a_candidate_whose_outputs_are_not_probabilities_is_refused(stack, tmp_path):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme", t0=T0) for i in range(600)])
    path = tmp_path / "reg.ubj"
    regression_booster().save_model(str(path))
    with pytest.raises(ModelError, match=r"^candidate reg.ubj: its outputs are not probabilities: [0-9]+ of 600 "
                                         r"are outside \[0, 1\] \(e\.g\. "):
        run_backtest(s, intent="card_fraud", candidate=str(path), start=Bound("start"), end=Bound("end"))
