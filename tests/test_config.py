from pathlib import Path

import pytest
from pydantic import ValidationError

from muse_stream.config import DEFAULT_CONFIG, TenantConfig, load_settings
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
    with pytest.raises(ValueError, match="outside"):
        TenantConfig(tenant_id="a", intents=("x",), bands={"review": 1.5})
    with pytest.raises(ValueError, match="default_intent"):
        TenantConfig(tenant_id="a", intents=("x",), default_intent="y")
    with pytest.raises(ValueError, match="tenant_id"):
        TenantConfig(tenant_id="a b", intents=("x",))
    t = TenantConfig(tenant_id="a", intents=("x", "y"))
    assert t.resolve_intent(None) is None and t.resolve_intent("y") == "y"
    assert TenantConfig(tenant_id="a", intents=("x",)).resolve_intent(None) == "x"


def test_duplicate_tenants_refused(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text("[[tenants]]\ntenant_id='a'\nintents=['x']\n[[tenants]]\ntenant_id='a'\nintents=['x']\n")
    with pytest.raises(ConfigError, match="repeated"):
        load_settings(p)


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
