"""`muse-stream validate` and `models show` against the real broker: the worked example of docs/producers.md
(a version published from files, so it carries its feature contract), its counts per reason and exit codes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import xgboost as xgb

from muse_stream.cli import main
from muse_stream.kafka.local import free_port
from muse_stream.models.lifecycle import publish_from_files
from tests.fixtures.helpers import write_config

pytestmark = pytest.mark.kafka
DOC = Path(__file__).resolve().parents[2] / "docs" / "producers.md"
TEST_TOML = Path(__file__).resolve().parents[1] / "data" / "test.toml"
FEATURES = ["Amount", "V1", "V2", "V3"]


def _doc_block(marker: str) -> list[str]:
    """The lines of the fenced block after `<!-- validate-example: {marker}`."""
    text = DOC.read_text()
    m = re.search(r"<!-- validate-example: " + re.escape(marker) + r".*?-->\n```\w*\n(.*?)```", text, re.DOTALL)
    assert m, f"no validate example {marker!r} in {DOC}"
    return m.group(1).splitlines()


def _publish(settings, tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.exponential(50.0, 1500), rng.normal(size=(1500, 3))])
    y = (rng.random(1500) < 1 / (1 + np.exp(-(x[:, 1] * 2 - 3)))).astype(int)
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(x, label=y, feature_names=FEATURES), 8)
    booster.save_model(tmp_path / "model.ubj")
    x[:300, 3] = np.nan  # V3 is missing in a fifth of the calibration rows
    rows = ["Amount,V1,V2,V3"] + [",".join("" if np.isnan(v) else repr(float(v)) for v in r) for r in x]
    (tmp_path / "cal.csv").write_text("\n".join(rows) + "\n")
    publish_from_files(settings, intent="card_fraud", booster_path=tmp_path / "model.ubj",
                       calibration_path=tmp_path / "cal.csv", activate=True)
    return x


def test_validate_counts_what_the_workers_would_dead_letter_and_models_show_prints_the_contract(
        stack, tmp_path, capsys, monkeypatch):
    x = _publish(stack, tmp_path)
    cfg = write_config(stack, tmp_path / "muse.toml")

    assert main(["models", "show", "card_fraud", "--config", cfg]) == 0
    shown = capsys.readouterr().out
    assert "contract    4 features over 1500 calibration events" in shown
    v3 = next(line for line in shown.splitlines() if line.strip().startswith("V3 "))
    lo, hi = float(np.float32(np.nanmin(x[:, 3]))), float(np.float32(np.nanmax(x[:, 3])))
    assert f"[{lo:.6g}, {hi:.6g}]" in v3 and v3.endswith("missing 20.00%")
    # docs/models.md shows this version's contract.
    doc_lines = [line for line in (DOC.parent / "models.md").read_text().splitlines()
                 if re.match(r"    (Amount|V[123]) ", line)]
    assert len(doc_lines) == 4 and set(doc_lines) <= set(shown.splitlines())

    # The worked example of docs/producers.md, as the doc shows it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.jsonl").write_text("\n".join(_doc_block("events.jsonl")) + "\n")
    doc = _doc_block("output")
    assert doc[0] == "$ muse-stream validate events.jsonl --intent card_fraud" and doc[-2:] == ["$ echo $?", "1"]
    assert main(["validate", "events.jsonl", "--intent", "card_fraud", "--config", cfg]) == 1
    assert capsys.readouterr().out.splitlines() == doc[1:-2]

    assert main(["validate", "events.jsonl", "--intent", "card_fraud", "--config", cfg, "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["events"] == 6 and report["scored"] == 2 and report["versions"] == {"card_fraud@1": 2}
    assert report["dead_letters"] == {"unknown_feature": 1, "value_too_large": 1, "unknown_tenant": 1,
                                      "wrong_type": 1}
    assert report["examples"]["unknown_feature"]["line"] == 3

    (tmp_path / "good.jsonl").write_text("\n".join(_doc_block("events.jsonl")[:2]) + "\n\n")
    assert main(["validate", "good.jsonl", "--intent", "card_fraud", "--config", cfg]) == 0
    capsys.readouterr()
    # `-` is standard input, as Unix tools read it: the doc's events piped in give the same report.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO((tmp_path / "events.jsonl").read_bytes())))
    assert main(["validate", "-", "--intent", "card_fraud", "--config", cfg, "--json"]) == 1
    assert {**orjson.loads(capsys.readouterr().out), "file": "events.jsonl"} == report
    assert main(["validate", "nosuch.jsonl", "--intent", "card_fraud", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["muse-stream: error: nosuch.jsonl: file not found"]


def test_validate_names_an_intent_the_config_does_not_before_asking_kafka(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: an answer proves Kafka was not asked
    (tmp_path / "events.jsonl").write_text('{"event_id": "e1"}\n')
    p = subprocess.run([sys.executable, "-m", "muse_stream", "validate", str(tmp_path / "events.jsonl"), "--intent",
                        "nosuch", "--config", str(TEST_TOML), "--bootstrap", dead],
                       check=False, capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.splitlines() == [("muse-stream: error: intent 'nosuch' is not in the config "
                                      "(intents: card_fraud, account_takeover)")]


@pytest.mark.kafka
def test_validate_of_a_stateful_intent_finds_missing_entities_and_repeated_ids(stack, tmp_path, capsys):
    """With entity state, the workers dead-letter an event without an entity value (missing_field), with one of
    the wrong type (wrong_type) and a repeated event id (duplicate_event) before scoring; validate used to call
    them all scored."""
    from muse_stream.config import Settings

    data = stack.model_dump()
    data["intents"] = [{"name": "card_fraud", "unknown_features": "ignore", "state": {
        "entity": ["card_id"], "windows": ["10m"], "aggregates": ["count"]}}, {"name": "account_takeover"}]
    s = Settings.model_validate(data)
    _publish(s, tmp_path)
    cfg = write_config(s, tmp_path / "muse.toml")

    def ev(eid, amount=5.0, **extra):
        return orjson.dumps({"event_id": eid, "tenant_id": "acme", "event_time": 1_700_000_000_000,
                             "features": {"Amount": amount, "V1": 0.1, "V2": 0.2, "V3": 0.3}, **extra}).decode()

    # "f" is refused by the matrix (value_too_large), so it never reaches the state: its corrected resend is
    # scored, as the workers score it, not a duplicate.
    lines = [ev("a", card_id="c1"), ev("b"), ev("c", card_id=None), ev("d", card_id=1.5), ev("a", card_id="c1"),
             ev("e", card_id=7), ev("f", amount=1e31, card_id="c2"), ev("f", card_id="c2")]
    (tmp_path / "ev.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["validate", str(tmp_path / "ev.jsonl"), "--intent", "card_fraud", "--config", cfg, "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["scored"] == 3
    assert report["dead_letters"] == {"missing_field": 2, "wrong_type": 1, "duplicate_event": 1, "value_too_large": 1}
    assert report["examples"]["duplicate_event"]["line"] == 5
