"""The bench's pure helpers (percentiles, checks, report), the scorer's batched decision dump, and one small
end-to-end `muse-stream bench` against the test broker."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from muse_stream.bench.figures import bins_percentile, loop_figures
from muse_stream.bench.load import FEATURES, EventFactory, seq_of_key
from muse_stream.bench.readers import _source_of
from muse_stream.bench.report import add_ratios, evaluate_targets, format_report, telemetry_ab
from muse_stream.bench.report_table import table
from muse_stream.bench.stats import latency_summary, per_thousand, percentile, versions_never_go_back
from muse_stream.models.records import Event
from muse_stream.scoring.contract import feature_matrix as _feature_matrix


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99.9) == 7.0
    assert percentile([3, 1, 2], 50) == 2  # unsorted input
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_latency_summary_counts_unseen_apart():
    ms = np.array([1.0, 2.0, 3.0, np.nan, 10.0])
    s = latency_summary(ms)
    assert s["count"] == 4 and s["unseen"] == 1
    assert s["p50"] == 2.0 and s["p99"] == 10.0 and s["max"] == 10.0 and s["mean"] == 4.0
    empty = latency_summary(np.array([np.nan]))
    assert empty["count"] == 0 and empty["p99"] is None and empty["max"] is None


def test_per_thousand():
    assert per_thousand(2.0, 4000) == 0.5
    assert per_thousand(None, 10) is None
    assert per_thousand(1.0, 0) is None


def test_versions_never_go_back():
    rows = [(0, 1, 1), (0, 2, 2), (0, 3, 2), (1, 1, 1), (1, 2, 1), (1, 3, 2)]
    assert versions_never_go_back(rows) == 0
    assert versions_never_go_back([(0, 5, 1), (0, 1, 1), (0, 3, 2)]) == 1  # offset 5 went back to v1
    assert versions_never_go_back([]) == 0


def test_events_have_the_production_shape():
    f = EventFactory()
    raw = f.event(123, 1_764_331_200_000)
    ev = Event.model_validate(orjson.loads(raw))
    assert ev.event_id == "e-123" and ev.event_time == 1_764_331_200_000
    assert list(ev.features) == FEATURES and len(FEATURES) == 30
    assert 350 <= f.mean_size() <= 480
    tenants = {orjson.loads(f.event(i, 0))["tenant_id"] for i in range(2000)}
    assert len(tenants) == 4
    intents = {orjson.loads(f.event(i, 0)).get("intent") for i in range(2000)}
    assert {"card_fraud", "account_takeover", None} <= intents
    assert seq_of_key(b"e-123") == 123


def test_source_of_decision_and_dead_letter():
    d = orjson.dumps({"event_id": "e-1", "score": 0.5,
                      "source": {"topic": "in", "partition": 3, "offset": 77, "timestamp": 5}})
    assert _source_of(d, None) == ("in", 3, 77)
    headers = [("muse.source.topic", b"in"), ("muse.source.partition", b"1"), ("muse.source.offset", b"9")]
    assert _source_of(b"not json", headers) == ("in", 1, 9)
    assert _source_of(b'{"no": "source"}', None) is None


def test_feature_matrix_fast_path_and_missing_features():
    names = ("a", "b", "c")
    rows = [{"c": 3, "a": 1.5, "b": -2.0, "extra": 9}, {"a": 0.0, "b": 1e10, "c": math.nan}]
    x = _feature_matrix(rows, names)
    assert x.dtype == np.float64 and x.shape == (2, 3)
    assert x[0].tolist() == [1.5, -2.0, 3.0] and x[1, 1] == 1e10 and math.isnan(x[1, 2])
    y = _feature_matrix([{"a": 1}, {"b": 2}], names)  # missing -> NaN
    assert y[0, 0] == 1 and math.isnan(y[0, 1]) and y[1, 1] == 2 and math.isnan(y[1, 0])
    one = _feature_matrix([{"a": 4}, {}], ("a",))
    assert one[0, 0] == 4 and math.isnan(one[1, 0])


def _report(**over) -> dict:
    tp = [
        {"run": "ceiling", "kind": "ceiling", "workers": 1, "guarantee": "exactly-once", "events_per_s": 100_000,
         "peak_rss_mb_max": 250.0, "check": {"exactly_once": True, "outputs": 10, "inputs": 10}},
        {"run": "runtime-eos-1", "kind": "runtime", "workers": 1, "guarantee": "exactly-once",
         "events_per_s": 60_000, "peak_rss_mb_max": 280.0, "cpu_s_per_1k_events": 0.016,
         "check": {"exactly_once": True, "outputs": 10, "inputs": 10}},
        {"run": "runtime-eos-2", "kind": "runtime", "workers": 2, "guarantee": "exactly-once",
         "events_per_s": 90_000, "peak_rss_mb_max": 310.0,
         "check": {"exactly_once": False, "outputs": 11, "inputs": 10, "missing": 0, "duplicated": 1,
                   "foreign": 0}},
    ]
    lat = [{"run": "floor-eos", "kind": "ceiling", "guarantee": "exactly-once", "offered_events_per_s": 5000,
            "latency_ms": {"p50": 9.0, "p99": 20.0, "p99.9": 30.0, "max": 31.0},
            "loop": {"in_worker": {"p50_us": 40.0, "p99_us": 90.0}},
            "check": {"exactly_once": True, "outputs": 5, "inputs": 5}},
           {"run": "latency-eos", "kind": "runtime", "guarantee": "exactly-once", "offered_events_per_s": 5000,
            "latency_ms": {"p50": 16.0, "p99": 40.0, "p99.9": 60.0, "max": 70.0},
            "loop": {"in_worker": {"p50_us": 400.0, "p99_us": 1200.0}},
            "check": {"exactly_once": True, "outputs": 5, "inputs": 5}},
           {"run": "latency-alo", "kind": "runtime", "guarantee": "at-least-once", "offered_events_per_s": 5000,
            "latency_ms": {"p50": 5.0, "p99": 12.0, "p99.9": 20.0, "max": 30.0},
            "loop": {"in_worker": {"p50_us": 300.0, "p99_us": 800.0}},
            "check": {"exactly_once": True, "outputs": 5, "inputs": 5}}]
    swap = {"run": "swap", "guarantee": "exactly-once", "check": {"exactly_once": True, "outputs": 5, "inputs": 5},
            "latency_ms": {"p99": 150.0},
            "swap": {"model": "card_fraud@2", "activation_to_first_new_decision_ms": 120,
                     "activation_to_first_new_decision_visible_ms": 200.0, "older_version_after_newer": 0}}
    r = {"run_id": "x", "machine": {"cores": 2, "cpu_model": "test"}, "versions": {"kafka_broker": "4.0"},
         "parameters": {"commit_interval_ms": 100, "offered_rate": 5000.0, "bootstrap": "b:1", "events": 10,
                        "partitions": 8, "batch_max_events": 2000, "batch_max_wait_ms": 50, "warmup_s": 2.0,
                        "models": [{"model": "card_fraud@1", "trees": 200, "depth": 6}]},
         "load": {"mean_event_bytes": 430.0}, "throughput": tp, "latency": lat, "swap": swap, "errors": []}
    r.update(over)
    return r


def test_ratios_and_targets():
    r = _report()
    add_ratios(r["throughput"])
    assert r["throughput"][1]["ratio_to_ceiling"] == 0.6
    assert r["throughput"][2]["ratio_to_ceiling"] == 0.9  # no 2-worker ceiling: against the 1-worker one
    assert "ratio_to_ceiling" not in r["throughput"][0]
    met = {t["target"].split(":")[0].split(" p99")[0]: t["met"] for t in evaluate_targets(r)}
    assert met["exactly-once, 1 worker"] is True  # 60,000 >= 50,000
    assert met["exactly-once, 1 worker / ceiling"] is True
    assert met["at-least-once"] is False  # 12 ms > 10 ms
    assert met["exactly-once"] is True  # 40 <= 50
    assert met["in-worker consume -> produce"] is False  # exactly-once's 1,200 us > 1,000 us
    assert met["swap"] is True
    assert met["telemetry cost"] is None  # no run without telemetry
    assert met["peak RSS per worker MB (two intents loaded)"] is False  # 310 > 300
    assert met["every run"] is False  # one duplicate
    # A pinned run (the worker on its own core) is reported beside the others, never taken for a target.
    pinned = _report()
    add_ratios(pinned["throughput"])
    pinned["throughput"].insert(0, {"run": "runtime-eos-1-pinned", "kind": "runtime", "workers": 1,
                                    "guarantee": "exactly-once", "events_per_s": 10, "ratio_to_ceiling": 0.01,
                                    "pinned_cores": [1]})
    pinned["latency"].insert(0, {"run": "latency-alo-pinned", "kind": "runtime", "guarantee": "at-least-once",
                                 "latency_ms": {"p50": 1.0, "p99": 2.0}, "pinned_cores": [1],
                                 "loop": {"in_worker": {"p50_us": 10.0, "p99_us": 20.0}}})
    assert [t["value"] for t in evaluate_targets(pinned)] == [t["value"] for t in evaluate_targets(r)]
    # At another offered rate the latency figures are reported, never judged (the targets are at 5,000/s).
    slow = _report()
    slow["parameters"]["offered_rate"] = 500.0
    by_rate = {t["target"]: t for t in evaluate_targets(slow)}
    lat_rows = [t for name, t in by_rate.items() if "(targets are at 5000)" in name]
    assert len(lat_rows) == 3 and all(t["met"] is None and t["value"] is not None for t in lat_rows)
    unmeasured = evaluate_targets(_report(throughput=[], latency=[], swap=None))
    assert all(t["met"] is None for t in unmeasured[:7])
    assert unmeasured[-1]["met"] is None  # no run, no verdict (a --state-only report once said NO)
    state_only = evaluate_targets(_report(throughput=[], latency=[], swap=None, state={"runs": [
        {"run": "state-on", "check": {"exactly_once": True}}, {"run": "state-off", "check": {"exactly_once": False}}]}))
    assert state_only[-1]["target"].startswith("every run") and state_only[-1]["met"] is False  # the state runs count


def test_telemetry_cost_from_interleaved_pairs():
    """Medians of the A (with) and B (without) runs; the CPU-per-event figure is the one the target reads."""
    def run(name, tel, rate, cpu):
        return {"run": name, "kind": "runtime", "workers": 1, "guarantee": "exactly-once", "telemetry": tel,
                "events_per_s": rate, "cpu_s_per_1k_events": cpu,
                "loop": {"us_per_event": {"consume": 2.0, "process": 17.0, "commit": 1.0, "telemetry": 0.4}}}

    tp = [run("runtime-eos-1", True, 40_000, 0.0200), run("runtime-eos-1-no-telemetry", False, 44_000, 0.0196),
          run("runtime-eos-1-no-telemetry.ab2", False, 36_000, 0.0194), run("runtime-eos-1.ab2", True, 38_000, 0.0202)]
    ab = telemetry_ab(tp)
    assert ab["events_per_s_with"] == 39_000 and ab["events_per_s_without"] == 40_000
    assert ab["cost_by_rate"] == 0.025
    assert ab["cost_by_cpu"] == round(1 - 0.0195 / 0.0201, 3)
    assert ab["timed_share_of_loop"] == 0.02
    met = {t["target"].split(":")[0]: t["met"] for t in evaluate_targets(_report(throughput=tp))}
    assert met["telemetry cost"] is True


def test_report_table_shows_every_figure():
    r = _report()
    add_ratios(r["throughput"])
    r["targets"] = evaluate_targets(r)
    text = format_report(r)
    for needle in ("runtime-eos-1", "60,000", "0.6", "FAIL missing 0 dup 1", "latency-alo", "12.0",
                   "card_fraud@2", "120 ms", "Targets", "NO", "ok 10/10", "floor-eos", "muse-stream adds 7.0 / 20.0 ms",
                   "1200.0"):
        assert needle in text, needle
    t = table(["a", "n"], [["x", 1], ["yy", None]])
    lines = t.splitlines()
    assert lines[0].split() == ["a", "n"] and lines[2].split() == ["x", "1"] and lines[3].split() == ["yy", "-"]


@pytest.mark.kafka
def test_bench_end_to_end_small(bootstrap, tmp_path):
    """A small bench against the test broker: every run completes and every count check passes (40,000
    events, so even the ceiling spans several commits and can be timed)."""
    from muse_stream.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--bootstrap", bootstrap, "--events", "40000", "--trees", "20", "--rate", "1000",
                 "--latency-seconds", "2", "--warmup", "0.5", "--skip", "runtime-w,no-telemetry,pinned,runtime-alo",
                 "--stage-events", "2000", "--json", str(out)])
    report = orjson.loads(out.read_bytes())
    assert report["errors"] == []
    runs = [*report["throughput"], *report["latency"], report["swap"]]
    assert [r["run"] for r in runs] == ["ceiling", "runtime-eos-1", "floor-eos", "latency-eos", "floor-alo",
                                        "latency-alo", "swap"]
    # the workers' own timers came back, and the in-process stage breakdown ran
    for r in runs[2:6]:
        # 2,000 events offered; the in-worker figure leaves out the first 0.5 s, as the end-to-end one does
        assert 1000 <= r["loop"]["in_worker"]["events"] < 2000 and r["loop"]["in_worker"]["p99_us"] > 0, r["run"]
    assert report["throughput"][1]["loop"]["us_per_event"]["score"] > 0
    assert set(report["stages"]["by_batch_size"]) == {"2000", "25"}
    for r in runs:
        assert r["check"]["exactly_once"] is True, r
    assert report["throughput"][0]["check"]["inputs"] == 40000
    assert report["swap"]["swap"]["older_version_after_newer"] == 0
    assert report["swap"]["swap"]["activation_to_first_new_decision_ms"] is not None
    assert report["machine"]["cores"] and report["versions"]["librdkafka"]
    assert code == 0


def test_in_worker_histogram_percentiles_err_high_never_low():
    from muse_stream.kafka.loop import InWorkerLatency

    h = InWorkerLatency()
    h.add(0, 150_000, 98)  # 98 events 150 us inside the worker
    h.add(0, 2_000_000, 2)  # 2 events 2 ms
    p50, p99 = bins_percentile(h.counts, 50), bins_percentile(h.counts, 99)
    assert 150 <= p50 <= 150 * 1.13 and 2000 <= p99 <= 2000 * 1.13
    assert bins_percentile([0] * len(h.counts), 50) is None
    figs = loop_figures([{"events_in": 100, "batches": 4, "commits": 2, "early_commits": 1, "consume_ns": 100_000,
                          "process_ns": 1_000_000, "commit_ns": 4_000_000, "in_worker_counts": h.counts}])
    assert figs["us_per_event"] == {"consume": 1.0, "process": 10.0, "commit": 40.0}
    assert figs["events_per_batch"] == 25.0 and figs["events_per_commit"] == 50.0 and figs["commit_ms_mean"] == 2.0
    assert figs["in_worker"]["events"] == 100 and figs["in_worker"]["p99_us"] == p99


def test_bad_arguments_stop_the_bench_before_any_run(tmp_path, capsys):
    """One line and exit 2, before the models are trained or the broker is asked anything: a report path that
    cannot be written (it used to fail after the whole run, losing the report), a negative warm-up (it used to
    count the last second only), an unknown run to skip, every run skipped (it used to exit 1 unexplained)."""
    from muse_stream.cli import main
    from muse_stream.commands.bench import RUNS

    blocker = tmp_path / "afile"
    blocker.write_text("")
    dead = ["--bootstrap", "127.0.0.1:1"]
    for argv, needle in (
            (["--json", str(blocker / "x.json")], f"--json: cannot write {blocker / 'x.json'}"),
            (["--warmup", "-1"], "--warmup must be at least 0"),
            (["--skip", "latency-eos-pinned"], "--skip: unknown run(s) ['latency-eos-pinned']"),
            (["--skip", ",".join(RUNS)], "--skip leaves no run to make"),
            # These ended in a ZeroDivisionError, a numpy ValueError, a StatisticsError, a pydantic dump.
            (["--state-only", "--state-events", "-1"], "--state-events, --state-entities, --state-pairs and"),
            (["--state-only", "--state-entities", "0"], "--state-events, --state-entities, --state-pairs and"),
            (["--reasons-only", "--reasons-rounds", "0"], "--state-events, --state-entities, --state-pairs and"),
            (["--batch-max-events", "0"], "bench settings: batch.max_events: Input should be greater than"),
            (["--rate", "nan"], "--trees must be positive (and finite)"),
            (["--trees", "0"], "--trees must be positive (and finite)")):
        assert main(["bench", *dead, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    # --state-only alone is a run to make (it skips every other run): it goes on, here to the dead broker.
    assert main(["bench", *dead, "--state-only"]) == 2
    err = capsys.readouterr().err
    assert "no Kafka broker answers at 127.0.0.1:1" in err and "--skip" not in err, err


def test_telemetry_section_without_a_run_without_telemetry_says_so_not_none():
    from muse_stream.bench.report_sections import telemetry_section

    tp = [{"run": "runtime-eos-1", "kind": "runtime", "workers": 1, "guarantee": "exactly-once", "telemetry": True,
           "events_per_s": 40_000, "cpu_s_per_1k_events": 0.02,
           "loop": {"us_per_event": {"consume": 2.0, "process": 17.0, "commit": 1.0, "telemetry": 0.4}}}]
    text = "\n".join(telemetry_section({"telemetry_ab": telemetry_ab(tp)}))
    assert "no run without telemetry (skipped)" in text and "None" not in text
