"""`muse-stream publish` refuses, in one line and before writing anything, what it cannot publish."""

from __future__ import annotations

import sys

import pytest

from muse_stream.cli import main
from muse_stream.models.store import read_models
from tests.fixtures.helpers import FEATURES, synthetic, train_booster, write_config

pytestmark = pytest.mark.kafka


@pytest.fixture
def files(tmp_path):
    booster = tmp_path / "model.ubj"
    booster.write_bytes(bytes(train_booster(seed=0, rounds=3).save_raw("ubj")))
    x, _ = synthetic(300, 5)
    calib = tmp_path / "calibration.csv"
    calib.write_text(",".join(FEATURES) + "\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in x) + "\n")
    return booster, calib


def _one_line(capsys) -> str:
    _, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_publish_refuses_an_intent_the_config_does_not_name(stack, tmp_path, files, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    booster, calib = files
    assert main(["publish", "--config", cfg, "--intent", "nosuch", "--booster", str(booster),
                 "--calibration", str(calib), "--activate"]) == 2
    err = _one_line(capsys)
    assert "'nosuch' is not in the configuration's [[intents]] (card_fraud, account_takeover)" in err
    reg = read_models(stack)
    assert not reg.versions and "nosuch" not in reg.references  # no version, no permanent reference


def test_publish_refuses_a_calibration_file_it_cannot_read(stack, tmp_path, files, capsys, monkeypatch):
    cfg = write_config(stack, tmp_path / "muse.toml")
    booster, _ = files
    # The booster (binary UBJSON) given as the calibration set.
    assert main(["publish", "--config", cfg, "--intent", "card_fraud", "--booster", str(booster),
                 "--calibration", str(booster)]) == 2
    assert str(booster) in _one_line(capsys)
    assert main(["publish", "--config", cfg, "--intent", "card_fraud", "--booster", str(booster),
                 "--calibration", str(tmp_path / "missing.csv")]) == 2
    assert "--calibration" in _one_line(capsys)
    assert main(["publish", "--config", cfg, "--intent", "card_fraud", "--booster", str(booster),
                 "--calibration", str(tmp_path)]) == 2
    assert "is a directory" in _one_line(capsys)
    # Parquet is the [parquet] extra: without pyarrow, one line naming it.
    parquet = tmp_path / "calibration.parquet"
    parquet.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on an install without the extra
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["publish", "--config", cfg, "--intent", "card_fraud", "--booster", str(booster),
                 "--calibration", str(parquet)]) == 2
    assert "pip install 'muse-stream[parquet]'" in _one_line(capsys)
    assert not read_models(stack).versions
