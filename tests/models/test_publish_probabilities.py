"""Publish refuses, against the real broker, a booster whose outputs are not probabilities: from files (the
command line) and from a shadow window. Nothing reaches the models topic."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from muse_stream.cli import main
from muse_stream.errors import ModelError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec, create_topics
from muse_stream.models.lifecycle import publish_from_shadow
from muse_stream.models.records import dump, version_key
from muse_stream.models.store import read_models
from tests.fixtures.boosters import hand_written_version, regression_booster
from tests.fixtures.helpers import FEATURES, publish_model, train_booster, write_config

pytestmark = pytest.mark.kafka


def _central_csv(path, n: int = 2000) -> tuple[str, np.ndarray]:
    """Calibration rows from the middle of the feature space, where the regression booster stays in [0, 1]."""
    x = np.random.default_rng(5).uniform(-0.3, 0.3, size=(n, len(FEATURES))).astype(np.float32)
    path.write_text("\n".join([",".join(FEATURES)] + [",".join(map(str, row)) for row in x.tolist()]) + "\n")
    return str(path), x


def test_publish_activate_refuses_a_regression_booster_and_takes_a_logistic_one(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    cal, x = _central_csv(tmp_path / "cal.csv")
    reg_path, logistic_path = tmp_path / "reg.ubj", tmp_path / "logistic.ubj"
    regression_booster().save_model(str(reg_path))
    train_booster(1).save_model(str(logistic_path))
    raw = regression_booster().inplace_predict(x)
    assert raw.min() >= 0 and raw.max() <= 1  # its calibration rows lie in [0, 1]: the case once accepted

    rc = main(["publish", "--config", cfg, "--intent", "card_fraud", "--booster", str(reg_path),
               "--calibration", cal, "--activate"])
    err = capsys.readouterr().err
    assert rc == 2
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]  # one line
    assert err.startswith(f"muse-stream: error: {reg_path}: the booster's outputs are not probabilities: ")
    assert "probe outputs are outside [0, 1] (e.g. " in err and "objective reg:squarederror" in err
    reg = read_models(stack)
    assert not reg.versions and not reg.activations

    assert main(["publish", "--config", cfg, "--intent", "card_fraud", "--booster", str(logistic_path),
                 "--calibration", cal, "--activate"]) == 0
    assert read_models(stack).active_version("card_fraud") == 1


def test_publish_from_shadow_refuses_a_regression_booster(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)  # the incumbent and the intent's reference
    shadow = hand_written_version("card_fraud", 2, regression_booster())  # on the topic without the check
    p = OutputProducer(producer_config(s), name="test models writer")
    p.produce(s.topics.models, dump(shadow), version_key("card_fraud", 2))
    p.flush(10)
    # A shadow window whose raw scores all lie in [0, 1], as the regression booster gives in the middle of
    # the feature space: only the probe can tell.
    topic = s.topics.shadow_topic("card_fraud")
    create_topics(s, [TopicSpec(topic, 1)])
    raw = regression_booster().inplace_predict(
        np.random.default_rng(5).uniform(-0.3, 0.3, size=(1200, len(FEATURES))).astype(np.float32))
    assert raw.min() >= 0 and raw.max() <= 1
    for i, r in enumerate(raw.tolist()):
        p.produce(topic, orjson.dumps({"event_id": f"e-{i}", "tenant_id": "acme", "intent": "card_fraud",
                                       "event_time": i, "incumbent_version": "card_fraud@1",
                                       "incumbent_score": r / 2, "incumbent_raw": r / 2,
                                       "shadow_version": "card_fraud@2", "shadow_raw": r}), f"e-{i}".encode())
    p.flush(10)
    with pytest.raises(ModelError, match=r"^card_fraud@2: the booster's outputs are not probabilities: "
                                         r"[0-9]+ of [0-9]+ probe outputs are outside \[0, 1\]"):
        publish_from_shadow(s, intent="card_fraud", version=2, window_ms=3_600_000, activate=True)
    reg = read_models(s)
    assert sorted(reg.versions) == [("card_fraud", 1), ("card_fraud", 2)]
    assert reg.active_version("card_fraud") == 1
