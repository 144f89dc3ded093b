"""The backtest report without matplotlib (a plain `pip install`): json and md written, the picture skipped with
one note line, no traceback (broker-free: write_report on a small result)."""

from __future__ import annotations

import sys

import numpy as np
import orjson

from muse_stream.analysis import backtest
from muse_stream.analysis.backtest import PLOT_SKIPPED, write_report
from muse_stream.cli import main


def _result() -> dict:
    rate = {"alert_rate": 0.01, "ci95": [0.005, 0.02]}
    band = {"band": "review", "threshold": 0.9, "events": 100, "event_times": [0, 99], "ratio": 1.0,
            "incumbent": rate, "candidate": rate, "candidate_raw": rate}
    scores = np.linspace(0.0, 1.0, 50)
    return {"candidate": "m.ubj", "intent": "card_fraud", "events": 100, "calibration_events": 30,
            "evaluation_events": 70, "incumbent_versions": ["card_fraud@1"], "candidate_transform": "fitted",
            "distance": {"ks": 0.01, "psi": 0.02}, "tenants": [{"tenant_id": "acme", "bands": [band]}],
            "_arrays": {"incumbent": scores, "candidate": scores, "candidate_raw": scores}}


def test_without_matplotlib_the_picture_is_skipped_and_a_stale_one_removed(tmp_path, monkeypatch):
    (tmp_path / "backtest.png").write_bytes(b"an earlier run's picture")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    paths = write_report(_result(), tmp_path)
    assert paths == [tmp_path / "backtest.json", tmp_path / "backtest.md"]
    assert orjson.loads(paths[0].read_bytes())["intent"] == "card_fraud" and "_arrays" not in paths[0].read_text()
    assert "| acme | review |" in paths[1].read_text()
    assert not (tmp_path / "backtest.png").exists()


def test_with_matplotlib_the_picture_is_written(tmp_path):
    paths = write_report(_result(), tmp_path)
    assert paths[2] == tmp_path / "backtest.png" and paths[2].read_bytes()[:4] == b"\x89PNG"


def test_the_command_prints_one_note_line_and_succeeds(tmp_path, monkeypatch, capsys):
    # The range is not read here (the report is the subject); the backtest itself is tested against a broker.
    monkeypatch.setattr(backtest, "run_backtest", lambda *a, **k: _result())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["backtest", "--intent", "card_fraud", "--candidate", "m.ubj", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == PLOT_SKIPPED and PLOT_SKIPPED == (
        "backtest.png skipped: install muse-stream[plots] for the picture")
    assert out.err == "" and (tmp_path / "backtest.md").exists()
