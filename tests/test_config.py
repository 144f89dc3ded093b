from pathlib import Path

import pytest
from pydantic import ValidationError

from muse_stream.config import DEFAULT_CONFIG, Settings, TenantConfig, error_text, load_settings
from muse_stream.errors import ConfigError


def test_default_config_loads_and_is_frozen():
    s = load_settings(DEFAULT_CONFIG)
    assert s.topics.models == "muse.models"
    assert {t.tenant_id for t in s.tenants} >= {"cautious_bank", "lenient_shop"}
    with pytest.raises(ValidationError):
        s.batch.max_events = 3  # type: ignore[misc]


def test_bad_field_names_field_and_file(tmp_path: Path):
    p = tmp_path / "bad.toml"
    p.write_text("[batch]\nmax_events = -5\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert str(p) in str(e.value) and "batch.max_events" in str(e.value)


def test_unknown_field_is_refused(tmp_path: Path):
    p = tmp_path / "bad.toml"
    p.write_text("[runtime]\nprocesing_guarantee = 'exactly-once'\n")
    with pytest.raises(ConfigError, match="runtime.procesing_guarantee"):
        load_settings(p)


def test_not_toml_and_missing_file(tmp_path: Path):
    p = tmp_path / "x.toml"
    p.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(p)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_bootstrap_override(tmp_path: Path, monkeypatch):
    p = tmp_path / "c.toml"
    p.write_text("")
    monkeypatch.setenv("MUSE_BOOTSTRAP", "h:1")
    assert load_settings(p).kafka.bootstrap_servers == "h:1"
    assert load_settings(p, bootstrap="h:2").kafka.bootstrap_servers == "h:2"


def test_tenant_validation():
    with pytest.raises(ValueError, match="bands.review.threshold"):
        TenantConfig(tenant_id="a", intents=("x",), bands={"review": 1.5})
    with pytest.raises(ValueError, match="default_intent"):
        TenantConfig(tenant_id="a", intents=("x",), default_intent="y")
    for tid in ("a b", "a\n", "\na", ""):  # a trailing newline too (a regex's "$" would let it through)
        with pytest.raises(ValueError, match="tenant_id"):
            TenantConfig(tenant_id=tid, intents=("x",))
    with pytest.raises(ValueError, match="intent"):
        TenantConfig(tenant_id="a", intents=("x\n",))
    for field, value in (("events", "muse.events\n"), ("decisions_prefix", "muse.decisions.\n")):
        with pytest.raises(ValueError, match=field):
            Settings.model_validate({"topics": {field: value}})
    # A threshold written in a rate's shape is a threshold; a refusal says what is wrong with the one meant.
    written = TenantConfig(tenant_id="a", intents=("x",), bands={"review": {"threshold": 0.9}})
    assert written.bands == {"review": 0.9}
    for band, needle in (({"threshold": -0.1}, "bands.review.threshold: Input should be greater than or equal to 0"),
                         (float("nan"), "threshold: a threshold is a number from 0 to 1 on the intent's"),
                         ({"rate": float("nan")}, "a rate band is at least 0.0001% (1e-6) and below 100%, got rate nan\n"),
                         ({"thresh": 0.9}, "a band is a threshold (0.9 or { threshold = 0.9 }) or an alert rate")):
        with pytest.raises(ValueError) as e:
            TenantConfig(tenant_id="a", intents=("x",), bands={"review": band})
        assert e.value.error_count() == 1 and needle in error_text(e.value) + "\n", str(e.value)
    t = TenantConfig(tenant_id="a", intents=("x", "y"))
    assert t.resolve_intent(None) is None and t.resolve_intent("y") == "y"
    assert TenantConfig(tenant_id="a", intents=("x",)).resolve_intent(None) == "x"


def test_duplicate_tenants_refused(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text("[[tenants]]\ntenant_id='a'\nintents=['x']\n[[tenants]]\ntenant_id='a'\nintents=['x']\n")
    with pytest.raises(ConfigError, match="repeated"):
        load_settings(p)


def test_duplicate_intents_refused(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text("[[intents]]\nname='card'\n[[intents]]\nname='card'\nunknown_features='ignore'\n")
    with pytest.raises(ConfigError, match=r"intent names repeated: \['card'\]"):
        load_settings(p)


@pytest.mark.parametrize("text, needle", [
    ("[batch]\nmax_events = true", "batch.max_events: must be a number, not bool True"),
    ("[batch]\nmax_wait_ms = '50'", "batch.max_wait_ms: must be a number, not str '50'"),
    ("[runtime]\nworkers = true", "runtime.workers: must be a number"),
    ("[topics]\nreplication_factor = '3'", "topics.replication_factor: must be a number"),
    ("[telemetry]\nenabled = 1", "telemetry.enabled: must be true or false, not int 1"),
    # The same rule in every settings model: deployment guards, entity state, pins and bands.
    ("[deploy]\nrefresh = 1", "deploy.refresh: must be true or false"),
    ("[deploy]\nshadow_events = '500'", "deploy.shadow_events: must be a number"),
    ("[[intents]]\nname = 'cf'\n[intents.state]\nentity = ['card_id']\ndebug = 1", "state.debug: must be true"),
    ("[[tenants]]\ntenant_id = 'a'\nintents = ['x']\npinned_versions = { x = '3' }",
     "pinned_versions: values must be whole numbers, not str '3'"),
    ("[[tenants]]\ntenant_id = 'a'\nintents = ['x']\nbands = { review = '0.9' }",
     "a threshold is a number from 0 to 1, not str '0.9'"),
    ("[[tenants]]\ntenant_id = 'a'\nintents = ['x']\nbands = { review = { rate = true } }",
     "rate.rate: must be a number, not bool True"),
])
def test_a_setting_of_the_wrong_type_is_refused_not_coerced(tmp_path: Path, text, needle):
    p = tmp_path / "c.toml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert needle in str(e.value)
    p.write_text("[runtime]\nmax_abs_feature = 5\n[telemetry]\nenabled = false\n")  # an int for a float is fine
    assert load_settings(p).runtime.max_abs_feature == 5.0


def test_dump_toml_round_trips(tmp_path: Path):
    from muse_stream.config import dump_toml

    s = load_settings(DEFAULT_CONFIG).with_overrides(kafka={"client": {"socket.timeout.ms": 5000}},
                                                     runtime={"workers": 3})
    p = tmp_path / "out.toml"
    p.write_text(dump_toml(s))
    assert load_settings(p) == s


def test_no_cluster_is_one_clear_line(tmp_path: Path, capsys):
    from muse_stream.cli import main
    from muse_stream.kafka.local import free_port

    dead = f"127.0.0.1:{free_port()}"
    assert main(["topics", "create", "--bootstrap", dead]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"muse-stream: error: cannot reach Kafka at {dead}: ")


def _topics_error(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    return str(e.value)


def test_one_topic_in_two_roles_is_one_line_naming_both_fields(tmp_path: Path):
    msg = _topics_error(tmp_path, '[topics]\nevents = "sf.events"\nmodels = "sf.events"\n')
    assert msg == f'{tmp_path / "c.toml"}: topics.models: "sf.events" is also topics.events'
    msg = _topics_error(tmp_path, '[topics]\nextra_inputs = ["a", "b", "a"]\n')
    assert 'topics.extra_inputs[2]: "a" is also topics.extra_inputs[0]' in msg
    msg = _topics_error(tmp_path, '[topics]\ntenants = "x"\ndeadletter = "x"\n')
    assert 'topics.deadletter: "x" is also topics.tenants' in msg


def test_a_tenant_output_topic_is_its_own(tmp_path: Path):
    tenant = "[[tenants]]\ntenant_id = '{}'\nintents = ['x']\n"
    # The dead-letter topic set to a tenant's (derived) decision topic.
    msg = _topics_error(tmp_path, '[topics]\ndeadletter = "muse.decisions.a"\n' + tenant.format("a"))
    assert ("the decision topic of tenant 'a' (topics.decisions_prefix): \"muse.decisions.a\" is also "
            "topics.deadletter") in msg
    msg = _topics_error(tmp_path, tenant.format("a") + "output_topic = 'muse.models'\n")
    assert 'tenants[0].output_topic: "muse.models" is also topics.models' in msg
    msg = _topics_error(tmp_path, tenant.format("a") + tenant.format("b") + "output_topic = 'muse.decisions.a'\n")
    assert 'tenants[1].output_topic: "muse.decisions.a" is also the decision topic of tenant \'a\'' in msg
    msg = _topics_error(tmp_path, tenant.format("a") + "output_topic = 'muse.shadow.x'\n")
    assert 'tenants[0].output_topic: "muse.shadow.x" starts with topics.shadow_prefix "muse.shadow."' in msg
    # Distinct topics load.
    p = tmp_path / "ok.toml"
    p.write_text(tenant.format("a") + "output_topic = 'a.out'\n" + tenant.format("b"))
    s = load_settings(p)
    assert [s.output_topic(t) for t in s.tenants] == ["a.out", "muse.decisions.b"]


def test_topics_create_refuses_a_collision_before_kafka(tmp_path: Path, capsys):
    from muse_stream.cli import main

    p = tmp_path / "c.toml"
    p.write_text('[topics]\nevents = "sf.events"\nmodels = "sf.events"\n')
    # An address nothing listens on: the config error must come first, without a connection attempt.
    assert main(["topics", "create", "--config", str(p), "--bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'muse-stream: error: {p}: topics.models: "sf.events" is also topics.events']


def test_kafka_start_refuses_ports_out_of_range_before_launching_anything(capsys):
    from muse_stream.cli import main

    for argv, needle in ((["--port", "99999"], "--port 99999: port 99999 not within 1..65535"),
                         (["--port", "65535", "--nodes", "3"], "ports 65535..65540 (the cluster's nodes) not within")):
        assert main(["kafka", "start", *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_a_config_that_is_not_utf8_or_is_a_folder_is_one_line(tmp_path: Path):
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"\xff\xfe[kafka]\n")
    with pytest.raises(ConfigError, match=r"c.toml: not valid TOML: not UTF-8 text \(byte 0\)"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_settings(tmp_path)
    with pytest.raises(ValueError, match="pinned_versions"):
        TenantConfig(tenant_id="a", intents=("x",), pinned_versions={"x": -1})


def test_a_group_id_that_would_name_a_path_or_a_bad_topic_is_refused_and_a_bom_is_read(tmp_path: Path):
    for gid in ("../../x", "a/b", "f40 g", "é", "g\x00", "..", ""):
        with pytest.raises(ValueError, match="group_id"):
            Settings.model_validate({"runtime": {"group_id": gid}})
    assert Settings.model_validate({"runtime": {"group_id": "bench.2026-11_29"}}).runtime.group_id == "bench.2026-11_29"
    with pytest.raises(ValueError, match="state_dir"):
        Settings.model_validate({"runtime": {"state_dir": ""}})
    bom = tmp_path / "c.toml"
    bom.write_bytes(b"\xef\xbb\xbf[runtime]\ngroup_id = \"g1\"\n")  # what some editors write first
    assert load_settings(bom).runtime.group_id == "g1"


def test_an_event_time_past_year_9999_prints_as_epoch_ms():
    from muse_stream.commands.tenant_edit import utc

    assert utc(0) == "1970-01-01T00:00:00Z" and utc(2**62) == f"epoch ms {2**62}"
