"""muse-stream installs as a package: the wheel carries its default config and broker files, building it prints
no deprecation warning, and the installed copy runs from another folder (help, topics create, run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, str]:
    """The project built into a wheel and installed (without dependencies: they are this venv's) into a folder
    of its own, outside the source tree."""
    tmp = tmp_path_factory.mktemp("pkg")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"), str(ROOT)],
                           check=False, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "dist").glob("muse_stream-*.whl"))
    site = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return wheel, build.stdout + build.stderr + inst.stdout + inst.stderr


def _env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MUSE_BOOTSTRAP"}
    env["PYTHONPATH"] = str(site)  # the installed copy, not the source tree
    return env


def test_the_wheel_carries_the_default_config_and_the_broker_files(installed):
    wheel, output = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "muse_stream/defaults/muse.toml" in names
    assert "muse_stream/kafka/broker-pom.xml" in names and "muse_stream/kafka/log4j2.properties" in names
    assert "deprecat" not in output.lower(), output[-3000:]


def test_the_installed_package_runs_from_another_folder(installed, tmp_path, settings_for, unique):
    wheel, _ = installed
    site = wheel.parent.parent / "site"
    env = _env(site)
    where = subprocess.run([sys.executable, "-c", ("import muse_stream, muse_stream.config as c; "
                            "print(muse_stream.__file__); print(c.DEFAULT_CONFIG.is_file())")],
                           cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    path, found = where.stdout.split()
    assert Path(path).is_relative_to(site) and found == "True"
    cli = [sys.executable, "-m", "muse_stream"]
    helped = subprocess.run([*cli, "--help"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True,
                            timeout=60)
    assert "topics" in helped.stdout
    s = settings_for(unique)
    from muse_stream.config import dump_toml

    (tmp_path / "muse.toml").write_text(dump_toml(s))
    made = subprocess.run([*cli, "topics", "create", "--config", "muse.toml"], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    run = subprocess.Popen([*cli, "run", "--config", "muse.toml", "--workers", "1"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = run.stdout.readline()
            lines.append(line)
            if " assigned " in line:
                break
        assert any(" assigned " in ln for ln in lines), "".join(lines)[-3000:]
    finally:
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=40)[0]
    assert run.returncode == 0, rest[-3000:]
