"""`models` and `topics list` for scripts: one line naming the address and exit 2 when no cluster answers (before
any producer, transaction or reader logs librdkafka's errors), and `--json` with the text form's content."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest

from muse_stream.cli import main
from muse_stream.config import TenantConfig
from muse_stream.kafka.local import free_port
from muse_stream.models.feature_contract import FeatureContract
from muse_stream.models.store import publish, read_models
from muse_stream.models.transform import fit_score_transform
from muse_stream.tenants import put_tenants
from tests.fixtures.helpers import FEATURES, publish_model, synthetic, train_booster, write_config


def test_models_commands_against_a_dead_address_print_one_line_and_exit_2_within_20s():
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    commands = [["models", "shadow", "card_fraud@2"], ["models", "shadow", "card_fraud", "--off"],
                ["models", "activate", "card_fraud@2"], ["models", "rollback", "card_fraud"],
                ["models", "list", "--json"]]
    t0 = time.monotonic()
    # Subprocesses, run side by side: librdkafka's own log would reach the process's stderr, not capsys.
    procs = [subprocess.Popen([sys.executable, "-m", "muse_stream", *argv, "--bootstrap", dead],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in commands]
    results = [p.communicate(timeout=120) for p in procs]
    elapsed = time.monotonic() - t0
    for argv, p, (out, err) in zip(commands, procs, results):
        lines = err.decode().splitlines()
        assert (p.returncode, out) == (2, b""), (argv, p.returncode, out, lines)
        assert len(lines) == 1 and lines[0].startswith(f"muse-stream: error: cannot reach Kafka at {dead}"), \
            (argv, lines)
    assert elapsed < 20, elapsed


def _publish_with_contract(settings, seed: int):
    """A version with a feature contract (publish_model records none), not active."""
    booster = train_booster(seed)
    x, _ = synthetic(2000, seed + 1000)
    st, ref = fit_score_transform(booster.inplace_predict(x))
    return publish(settings, intent="card_fraud", booster_bytes=bytes(booster.save_raw("ubj")), features=FEATURES,
                   transform=st.to_dict(), reference=ref.to_dict(),
                   metadata={"aligned_to": None, "calibration_events": 2000, "calibration_file": "cal.csv"},
                   feature_contract=FeatureContract.from_matrix(FEATURES, x).to_dict())


def _json(argv: list[str], capsys):
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return orjson.loads(out)


@pytest.mark.kafka
def test_models_json_has_the_text_forms_content(stack, tmp_path, capsys):
    publish_model(stack, "card_fraud", seed=1)
    _publish_with_contract(stack, seed=2)
    cfg = ["--config", write_config(stack, tmp_path / "muse.toml")]
    assert _json(["models", "shadow", "card_fraud@2", "--json", *cfg], capsys) == {"intent": "card_fraud",
                                                                                   "shadow": 2}

    rows = _json(["models", "list", "--json", *cfg], capsys)
    assert [(r["name"], r["active"], r["shadow"], r["features"]) for r in rows] == [
        ("card_fraud@1", True, False, 5), ("card_fraud@2", False, True, 5)]
    assert main(["models", "list", *cfg]) == 0
    text = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in text] == ["card_fraud@1", "card_fraud@2"]
    assert text[0].endswith("active") and text[1].endswith("shadow")

    doc = _json(["models", "show", "card_fraud@2", "--json", *cfg], capsys)
    assert (doc["name"], doc["active"], doc["shadow"], doc["features"]) == ("card_fraud@2", False, True, FEATURES)
    assert doc["contract"]["rows"] == 2000 and list(doc["contract"]["features"]) == FEATURES
    assert doc["timeline"] == [{"version": 1, "from_time": None}]
    assert main(["models", "show", "card_fraud@2", *cfg]) == 0
    shown = capsys.readouterr().out
    f0 = doc["contract"]["features"]["f0"]
    assert "  active      no\n  shadow      yes\n" in shown
    assert "contract    5 features over 2000 calibration events" in shown
    # Metadata as --json writes its values (null, not Python's None), its keys aligned on the longest.
    assert ("  metadata\n    aligned_to          null\n    calibration_events  2000\n"
            "    calibration_file    cal.csv\n") in shown
    assert f"[{f0['min']:.6g}, {f0['max']:.6g}]" in shown

    act = _json(["models", "activate", "card_fraud@2", "--json", *cfg], capsys)
    assert (act["intent"], act["version"], act["previous"], act["changed"]) == ("card_fraud", 2, 1, True)


@pytest.mark.kafka
def test_activating_the_active_version_writes_nothing_and_rollback_still_goes_back(stack, tmp_path, capsys):
    publish_model(stack, "card_fraud", seed=1)
    publish_model(stack, "card_fraud", seed=2)  # card_fraud@2 active, replacing @1 (input topics empty)
    cfg = ["--config", write_config(stack, tmp_path / "muse.toml")]
    before = read_models(stack).activations["card_fraud"]
    assert (before.version, before.previous) == (2, 1)

    # Twice more, and with a time at which it is in force anyway: one line each, nothing written.
    assert main(["models", "activate", "card_fraud@2", *cfg]) == 0
    assert capsys.readouterr().out == "card_fraud@2 is already active; nothing written\n"
    doc = _json(["models", "activate", "card_fraud@2", "--at", "5000", "--json", *cfg], capsys)
    assert (doc["version"], doc["previous"], doc["changed"]) == (2, 1, False)
    assert read_models(stack).activations["card_fraud"] == before

    assert main(["models", "rollback", "card_fraud", *cfg]) == 0
    assert capsys.readouterr().out.startswith("rolled back card_fraud to version 1")
    assert read_models(stack).active_version("card_fraud") == 1

    # A scheduled switch moved earlier is written, and still names what it replaces, not itself.
    _json(["models", "activate", "card_fraud@2", "--at", "10000", "--json", *cfg], capsys)
    doc = _json(["models", "activate", "card_fraud@2", "--at", "6000", "--json", *cfg], capsys)
    assert (doc["from_time"], doc["previous"], doc["changed"]) == (6000, 1, True)
    # --at reads an ISO-8601 time as tenants set --from does (5 s after the epoch: earlier again, so written).
    doc = _json(["models", "activate", "card_fraud@2", "--at", "1970-01-01T00:00:05Z", "--json", *cfg], capsys)
    assert (doc["from_time"], doc["changed"]) == (5000, True)
    assert main(["models", "activate", "card_fraud@2", "--at", "soon", *cfg]) == 2
    assert "--at 'soon': expected an event time (epoch ms or ISO-8601)" in capsys.readouterr().err
    assert main(["models", "activate", "card_fraud@2", "--at", "99999999999999999999999", *cfg]) == 2
    assert "an event time is from 0 to 4611686018427387904" in capsys.readouterr().err
    act = read_models(stack).activations["card_fraud"]
    assert [(e.version, e.from_time) for e in act.timeline] == [(1, None), (2, 5000)] and act.previous == 1


@pytest.mark.kafka
def test_topics_list_names_a_tenants_own_decision_topic_and_create_makes_it(stack, unique, tmp_path, capsys):
    own = f"t{unique}.newco-decisions"
    put_tenants(stack, [TenantConfig(tenant_id="newco", intents=("card_fraud",), output_topic=own)])
    cfg = ["--config", write_config(stack, tmp_path / "muse.toml")]

    rows = {r["name"]: r for r in _json(["topics", "list", "--json", *cfg], capsys)}
    assert rows[own]["state"] == "missing" and rows[own]["partitions"] == stack.topics.decisions_partitions
    assert rows[stack.topics.models]["state"] == "exists"
    assert rows[stack.topics.models]["config"]["cleanup.policy"] == "compact"
    assert main(["topics", "list", *cfg]) == 0
    text = capsys.readouterr().out
    models_line = next(line for line in text.splitlines() if line.startswith(f"{stack.topics.models}\t"))
    assert models_line.split("\t")[-1].startswith("cleanup.policy=compact,") and "{" not in text
    assert f"{own}\tmissing\t" in text and len(text.splitlines()) == len(rows)

    assert main(["topics", "create", *cfg]) == 0
    assert f"created  {own}\n" in capsys.readouterr().out
    assert _json(["topics", "list", "--json", *cfg], capsys)[-1] == {**rows[own], "state": "exists"}
