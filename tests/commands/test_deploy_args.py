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


def test_a_candidate_may_read_every_state_feature_the_intent_computes_and_none_it_does_not():
    """The workers compute an intent's entity-state features, so a retrained model may read one its incumbent
    did not (deploy used to refuse it as a feature events would carry); one the config does not compute is
    refused, saying so."""
    import pytest

    from muse_stream.config import Settings
    from muse_stream.deploy.controller import Deployer
    from muse_stream.errors import ModelError

    s = Settings.model_validate({"intents": [{"name": "cf", "state": {
        "entity": ["card_id"], "windows": ["10m", "1h"], "aggregates": ["count", "max:amount"]}}]})
    incumbent = type("V", (), {"features": ("amount", "card_id.count_10m"), "name": "cf@1"})()
    said = []
    d = Deployer(s, "cf", out=said.append)
    d._check_features(Path("m.ubj"), ["amount", "card_id.max_amount_1h"], incumbent, reject=True)
    assert said == []
    with pytest.raises(ModelError, match=r"reads card_id.count_5m, which intent cf's state does not compute"):
        d._check_features(Path("m.ubj"), ["amount", "card_id.count_5m"], incumbent, reject=True)
    with pytest.raises(ModelError, match=r"reads V9, which cf@1 does not"):
        d._check_features(Path("m.ubj"), ["amount", "V9"], incumbent, reject=True)
