"""A model version records the entity-feature definitions it was trained with; publish and the workers' model
registry refuse a version whose definitions differ from the intent's config, with one reason. No broker."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import xgboost as xgb

from muse_stream.config import Settings
from muse_stream.errors import ModelError
from muse_stream.featurespec import StateSpec
from muse_stream.models.records import VersionRecord, dump, parse_models_record, version_key
from muse_stream.models.registry import ModelRegistry
from muse_stream.models.store import build_version
from muse_stream.models.transform import fit_score_transform
from muse_stream.state.engine import check_state_dir

SPEC = {"entity": ["card_id"], "windows": ["10m", "1h"], "aggregates": ["count", "sum:amount"], "lateness": "5m"}
NAMES = ["f0", "card_id.count_10m", "card_id.sum_amount_1h"]


def _settings() -> Settings:
    return Settings.model_validate({
        "intents": [{"name": "card_fraud", "state": SPEC}],
        "tenants": [{"tenant_id": "acme", "intents": ["card_fraud"], "bands": {"review": 0.9}}]})


def _version(names: list[str], state_spec: dict | None, settings=None, version: int = 1, **kw) -> VersionRecord:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(names)))
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(x, label=(x[:, 0] > 0).astype(float), feature_names=names), 3)
    st, _ = fit_score_transform(booster.inplace_predict(x))
    return build_version(intent="card_fraud", version=version, booster_bytes=bytes(booster.save_raw("ubj")),
                         features=names, transform=st.to_dict(), state_spec=state_spec, settings=settings, **kw)


def test_publish_records_the_spec_and_refuses_another():
    s = _settings()
    ours = StateSpec.model_validate(SPEC).to_record()
    rec = _version(NAMES, ours, s)
    assert rec.state_spec == ours
    moved = _version(NAMES, None, s, metadata={"state_spec": ours})  # recorded the earlier way: taken over
    assert moved.state_spec == ours
    with pytest.raises(ModelError, match="trained with state definitions") as err:
        _version(NAMES, {**ours, "lateness": "1h"}, s)
    assert "\n" not in str(err.value) and "card_fraud@1" in str(err.value)
    with pytest.raises(ModelError, match="does not compute: card_id.count_5m"):
        _version(["f0", "card_id.count_5m"], None, s)
    # Published with no definitions (the CLI's publish, deploy) but reading state features: the configured
    # definitions are recorded, so workers whose config later changes them refuse the version on load.
    bare = _version(NAMES, None, s)
    assert bare.state_spec == ours
    changed = Settings.model_validate({**s.model_dump(), "intents": [{"name": "card_fraud",
                                                                      "state": {**SPEC, "lateness": "1h"}}]})
    reg = ModelRegistry(intents=changed.intents)
    reg.apply(version_key("card_fraud", 1), dump(bare))
    with pytest.raises(ModelError, match="trained with state definitions"):
        reg.get("card_fraud", 1)
    assert _version(["f0"], None, s).state_spec is None  # a version reading no state feature records none


def test_registry_refuses_a_differing_version_and_loads_old_records():
    s = _settings()
    ours = StateSpec.model_validate(SPEC).to_record()
    good = _version(NAMES, ours)
    bad = _version(NAMES, {**ours, "entity": ["merchant"]}, version=2)  # no settings: not checked at build
    # Windows and aggregates it does not read may differ (the config grew or shrank around what it reads).
    grown = _version(NAMES, {**ours, "windows": ["10m", "1h", "2h"], "aggregates": [*ours["aggregates"], "max:x"]},
                     version=4)
    old = orjson.loads(dump(_version(["f0"], None, version=3)))
    del old["state_spec"]  # a record written before the field existed still parses
    assert parse_models_record(orjson.dumps(old)).state_spec is None
    reg = ModelRegistry(intents=s.intents)
    for rec in (good, bad, grown):
        reg.apply(version_key(rec.intent, rec.version), dump(rec))
    reg.apply(version_key("card_fraud", 3), orjson.dumps(old))
    assert reg.get("card_fraud", 1).features == tuple(NAMES)
    assert reg.get("card_fraud", 4).features == tuple(NAMES)
    assert reg.get("card_fraud", 3).features == ("f0",)
    with pytest.raises(ModelError, match="trained with state definitions"):
        reg.get("card_fraud", 2)
    assert "card_fraud@2" in reg.refused[("card_fraud", 2)]
    plain = ModelRegistry()  # a registry without the intents' configs (tools) does not check
    plain.apply(version_key("card_fraud", 2), dump(bad))
    assert plain.get("card_fraud", 2).name == "card_fraud@2"


@pytest.mark.parametrize("change, needle", [
    ({"windows": [" 10m"]}, "' 10m' is not a duration"),  # it used to name a feature "card_id.count_ 10m"
    ({"windows": ["10m\n"]}, "is not a duration"),
    ({"windows": ["\uff110m"]}, "is not a duration"),  # a full-width digit
    ({"entity": ["card_id\n"]}, "entity fields must be distinct names"),
    ({"aggregates": ["count:"]}, "aggregate 'count:': takes no field"),
    ({"entity": ["features"]}, "entity field 'features' is a field of the event contract"),
    ({"entity": ["event_id"]}, "entity field 'event_id' is a field of the event contract"),
    ({"aggregates": ["sum:tenant_id"]}, "'tenant_id' is a field of the event contract, not a value to aggregate"),
])
def test_odd_state_specs_are_refused_naming_the_fault(change, needle):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=needle.replace("(", r"\(")):
        StateSpec.model_validate({**SPEC, **change})


def test_a_composite_entity_value_holding_the_separator_has_no_key():
    """("a|b", "c") and ("a", "b|c") would join to one key, one entity: such an event is refused
    (missing_field, saying why), never merged with another entity's state."""
    from muse_stream.featurespec import entity_key

    assert entity_key(["a", "c"]) == "a|c" and entity_key(["a|b"]) == "a|b"  # one field: its value is the key
    assert entity_key(["a|b", "c"]) is None and entity_key(["a", "b|c"]) is None


def test_a_refused_activation_is_named_in_the_dead_letters_detail():
    """With the only activation of an intent refused (its version's state definitions differ from the config),
    the events' no_active_model detail says so, not just that the intent has no active model."""
    from muse_stream.models.records import ActivationRecord, TimelineEntry, active_key
    from muse_stream.scoring.contract import Rejection, resolve_route

    s = _settings()
    ours = StateSpec.model_validate(SPEC).to_record()
    bad = _version(NAMES, {**ours, "lateness": "1h"})  # no settings at build: refused only on load
    reg = ModelRegistry(intents=s.intents)
    reg.apply(version_key("card_fraud", 1), dump(bad))
    reg.apply(active_key("card_fraud"), dump(ActivationRecord(intent="card_fraud", version=1, activated_at=0,
                                                              timeline=(TimelineEntry(version=1),))))
    got = resolve_route({t.tenant_id: t for t in s.tenants}, reg, "acme", "card_fraud")
    assert type(got) is Rejection and got.reason.value == "no_active_model"
    assert got.detail.startswith("intent 'card_fraud' has no active model: its activation of card_fraud@1 was "
                                 "refused (card_fraud@1: ") and "trained with state definitions" in got.detail


def test_a_state_folder_the_workers_cannot_write_is_one_line_before_any_worker_starts(tmp_path, capsys):
    from muse_stream.cli import main
    from muse_stream.config import dump_toml
    from muse_stream.kafka.local import free_port

    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    s = Settings.model_validate({"intents": [{"name": "card_fraud", "state": {
        "entity": ["card_id"], "windows": ["10m"], "aggregates": ["count"]}}],
        "runtime": {"state_dir": str(blocker / "sub")}})
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml(s))
    # No broker answers there: the folder is checked first, so the error is the folder's.
    assert main(["run", "--config", str(cfg), "--bootstrap", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime.state_dir" in err[0] and "Not a directory" in err[0], err
    # Fine once it can be made; a config without state makes no folder at all.
    check_state_dir(s.with_overrides(runtime={"state_dir": str(tmp_path / "ok")}))
    assert (tmp_path / "ok" / s.runtime.group_id).is_dir() and not list((tmp_path / "ok" / s.runtime.group_id).iterdir())
    check_state_dir(Settings.model_validate({"runtime": {"state_dir": str(tmp_path / "none")}}))
    assert not (tmp_path / "none").exists()
