"""`muse-stream deploy` refuses a model or calibration path that is a directory as publish does (one check), in one
line and before Kafka is asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from muse_stream.kafka.local import free_port
from tests.fixtures.helpers import train_booster

TEST_TOML = Path(__file__).resolve().parents[1] / "data" / "test.toml"


def test_deploy_says_a_directory_is_a_directory(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: an answer proves Kafka was not asked
    model = tmp_path / "model.ubj"
    train_booster(seed=0, rounds=3).save_model(str(model))
    cases = {"model": [str(tmp_path)], "--calibration": [str(model), "--calibration", str(tmp_path)]}
    procs = {flag: subprocess.Popen([sys.executable, "-m", "muse_stream", "deploy", *argv, "--intent", "card_fraud",
                                     "--config", str(TEST_TOML), "--bootstrap", dead],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for flag, argv in cases.items()}
    for flag, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out) == (2, ""), (flag, err)
        assert err.splitlines() == [f"muse-stream: error: {flag} {tmp_path}: is a directory, not a file"]
