"""`muse-stream status` for scripts: exit codes (no cluster, unhealthy), JSON, plain text when piped, shadows
and bands. The healthy exit 0 with a live worker is checked by tests/telemetry/test_observability.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import orjson
import pytest

from muse_stream.cli import main
from muse_stream.config import TenantConfig
from muse_stream.kafka.local import free_port
from muse_stream.models.store import set_shadow
from muse_stream.tenants import put_tenants
from tests.commands.doc_examples import example
from tests.fixtures.helpers import event, produce, publish_model, write_config


def test_status_against_a_dead_address_is_one_line_and_non_zero_within_15s(capsys):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    (_, (argv, _)) = example("operations.md", "status", "unhealthy")  # docs/operations.md's second command
    assert argv == ["status", "--bootstrap", "127.0.0.1:1"]
    t0 = time.monotonic()
    assert main(["status", "--bootstrap", dead]) == 2
    assert time.monotonic() - t0 < 15
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and f"cannot reach Kafka at {dead}" in err


def test_status_refuses_bad_arguments_in_one_line_before_asking_anyone(capsys):
    """An endpoint that is not a URL used to end in a ValueError traceback; --workers 0 and a negative
    --lag-window used to be taken silently as the defaults."""
    dead = ["--bootstrap", "127.0.0.1:1"]
    for argv, needle in ((["--endpoint", "garbage"], "--endpoint 'garbage' is not an http(s) URL"),
                         (["--endpoint", "http://[::1"], "--endpoint 'http://[::1' is not an http(s) URL"),
                         (["--endpoint", "http://host:abc"], "--endpoint 'http://host:abc' is not an http(s) URL"),
                         (["--endpoint", "http://a b:1"], "--endpoint 'http://a b:1' is not an http(s) URL"),
                         (["--workers", "0"], "--workers must be >= 1"),
                         (["--lag-window", "-1"], "--lag-window must be >= 0 seconds")):
        t0 = time.monotonic()
        assert main(["status", *dead, *argv]) == 2, argv
        assert time.monotonic() - t0 < 5  # refused before any cluster is asked
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err


@pytest.mark.kafka
def test_status_is_unhealthy_when_no_worker_answers_and_the_input_is_stalled(stack, tmp_path, capsys):
    s = stack.with_overrides(telemetry={"metrics_port": free_port()})  # no worker listens there
    produce(s, [event(i, "acme") for i in range(5)])
    cfg = write_config(s, tmp_path / "muse.toml")
    ((argv, shown), _) = example("operations.md", "status", "unhealthy")
    assert main([*argv, "--config", cfg]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["health"]["healthy"] is False
    # The problems as docs/operations.md shows them, up to this test's own port and group.
    problems = [re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:9400", p).replace(s.runtime.group_id, "muse-stream")
                for p in report["health"]["problems"]]
    assert problems == re.findall(r'"((?:worker|input)[^"]+)"', "\n".join(shown))
    assert report["lag"]["stalled"] is True and report["lag"]["grew_by"] == 0
    # With telemetry off, workers serve no endpoint: status says so, not that a worker does not answer.
    off = write_config(s.with_overrides(telemetry={"enabled": False}), tmp_path / "off.toml")
    assert main(["status", "--json", "--lag-window", "0", "--config", off]) == 1
    problems = orjson.loads(capsys.readouterr().out)["health"]["problems"]
    assert problems[0].startswith("no worker endpoint to ask: set telemetry.metrics_port (with telemetry.enabled")
    assert not any("does not answer" in p for p in problems)


@pytest.mark.kafka
def test_status_piped_is_plain_and_whole_and_shows_shadows_and_bands(stack, tmp_path):
    long_id = "tenant-with-a-very-long-name-" + "x" * 34  # 63 characters: cut at 80 columns before
    put_tenants(stack, [TenantConfig(tenant_id=long_id, intents=("card_fraud",),
                                     bands={"review": {"rate": 0.01}, "decline": 0.999})])
    publish_model(stack, "card_fraud", seed=1)
    publish_model(stack, "card_fraud", seed=2, activate=False)
    set_shadow(stack, "card_fraud", 2)
    cfg = write_config(stack, tmp_path / "muse.toml")

    report = subprocess.run([sys.executable, "-m", "muse_stream", "status", "--config", cfg, "--json",
                             "--lag-window", "0"], capture_output=True, check=False)
    assert report.returncode == 1, report.stderr  # no worker answers
    doc = orjson.loads(report.stdout)
    assert doc["models"]["intents"]["card_fraud"]["version"] == 1
    assert doc["models"]["intents"]["card_fraud"]["shadow"] == 2
    (review,) = [b for b in doc["bands"]["tenants"][long_id]["intents"]["card_fraud"] if b["name"] == "review"]
    assert review["reference_rate"] == pytest.approx(0.01, rel=0.2) and 0 < review["threshold"] < 1

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    screen = subprocess.run([sys.executable, "-m", "muse_stream", "status", "--config", cfg, "--lag-window", "0"],
                            capture_output=True, check=False, env=env)
    assert screen.returncode == 1
    text = screen.stdout.decode()
    assert "\x1b[" not in text and "…" not in text  # no colour codes, no cell cut short
    assert any(long_id in line and "card_fraud" in line and "review" in line for line in text.splitlines())
    assert "card_fraud@2" in text  # the shadow, in the models table
    assert "UNHEALTHY: no worker endpoint to ask" in text  # the test config sets no metrics_port

    # A worker's feature drift (its /status "features") is on the screen as in the JSON.
    assert doc["feature_drift"] == []
    import io

    from muse_stream.telemetry.status_screen import make_console, render

    doc["feature_drift"] = [{"tenant": long_id, "intent": "card_fraud", "version": "card_fraud@1", "feature": "f3",
                             "kind": "missing_rate", "observed": 0.7143, "contract": 0.0097, "events": 1500,
                             "since": doc["generated_at"] - 30, "worker": 0}]
    out = io.StringIO()
    render(doc, make_console(out))
    (line,) = [ln for ln in out.getvalue().splitlines() if "f3" in ln]
    assert long_id in line and "missing rate" in line and "71.4%" in line and "0.97%" in line
    # A stateful worker's entity-state figures (its /status "state") are on the screen too, not only in JSON.
    doc["workers"] = [{"url": "http://127.0.0.1:9400", "up": True, "ready": True, "assignment": [], "lag": [],
                       "events_per_s": 0.0, "worker": {"slot": 3, "uptime_s": 60.0},
                       "totals": {"events_in": 0, "dead_letters": 0, "commits": 0, "aborts": 0},
                       "state": {"stores": 4, "late": 12, "duplicates": 7, "wrong_partition_key": 2,
                                 "restored_records": 120_500, "restore_seconds": 0.43, "swept": 9, "capped": 0,
                                 "step_seconds": 1.2}}]
    out = io.StringIO()
    render(doc, make_console(out))
    screen_lines = out.getvalue().splitlines()
    at = next(i for i, ln in enumerate(screen_lines) if ln.startswith("Entity state"))
    (row,) = [ln for ln in screen_lines[at:] if "120,500 in 0.4s" in ln]
    assert row.split() == ["3", "4", "120,500", "in", "0.4s", "12", "7", "2", "9", "0"]
