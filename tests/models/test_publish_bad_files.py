"""publish with a booster or calibration file that is binary junk: one line naming the file, exit 2 (a
MuseError), not a UnicodeDecodeError traceback. Broker-free: the files are read before Kafka is touched."""

from __future__ import annotations

import numpy as np
import pytest

from muse_stream.config import Settings
from muse_stream.errors import DataError, ModelError
from muse_stream.models.lifecycle import load_booster, publish_from_files
from muse_stream.models.tabular import read_table
from tests.fixtures.helpers import train_booster

# Bytes no UTF-8 decoder accepts (0xff never starts a character), as in a random or binary file.
JUNK = bytes(np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8)) + b"\xff\xfe"


def test_a_junk_booster_is_one_line_naming_it(tmp_path):
    b = tmp_path / "junk.ubj"
    b.write_bytes(JUNK)
    with pytest.raises(ModelError) as e:
        load_booster(b)
    assert str(e.value) == f"{b}: not an XGBoost model (neither UBJSON nor JSON that xgboost can read)"
    # The same through publish, before any cluster is asked (none listens at this address).
    s = Settings().with_overrides(kafka={"bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(ModelError, match="junk.ubj: not an XGBoost model"):
        publish_from_files(s, intent="card_fraud", booster_path=b, calibration_path=tmp_path / "cal.csv")


def test_a_binary_calibration_file_is_one_line_naming_it(tmp_path):
    model = tmp_path / "model.ubj"
    train_booster(1).save_model(str(model))
    s = Settings().with_overrides(kafka={"bootstrap_servers": "127.0.0.1:1"})
    # The user passed the model file as the calibration set too.
    with pytest.raises(DataError) as e:
        publish_from_files(s, intent="card_fraud", booster_path=model, calibration_path=model)
    assert str(e.value).startswith(f"{model}: not a UTF-8 text file; expected CSV")
    assert "\n" not in str(e.value)
    junk = tmp_path / "labels.csv"
    junk.write_bytes(JUNK)
    with pytest.raises(DataError, match="labels.csv: not a UTF-8 text file"):
        read_table(junk)


def test_a_file_the_csv_reader_refuses_is_a_data_error(tmp_path):
    p = tmp_path / "cal.csv"
    p.write_text("f0,f1\n1," + "9" * 200_000 + "\n")  # a field beyond the csv module's field limit
    with pytest.raises(DataError, match="cal.csv: not a CSV file: field larger than field limit"):
        read_table(p)
