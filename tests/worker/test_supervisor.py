"""`muse-stream run` as an operator runs it: a subprocess supervising worker processes on the real broker.

Each test kills, stops or breaks a worker the way production does (SIGKILL, SIGSTOP as a stand-in for a call
stuck inside librdkafka, a setting that makes every start fail) and checks what the supervisor does about it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from muse_stream.cli import main
from tests.fixtures.helpers import (
    TopicReader,
    decision_topics,
    event,
    produce,
    publish_model,
    source_of,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]
TENANTS = ["acme", "globex", "initech"]


class RunCommand:
    """`muse-stream run` in a subprocess; its log goes to a file the test reads (a pipe could fill and block)."""

    def __init__(self, settings, tmp_path: Path, *, workers: int) -> None:
        config = write_config(settings, tmp_path / "muse.toml")
        self.log_path = tmp_path / "run.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "muse_stream", "run", "--config", config,
                                          "--workers", str(workers)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, *, count: int = 1, timeout: float = 60.0) -> list[re.Match]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = list(re.finditer(pattern, self.log()))
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {count} x {pattern!r} in the run log (exit {self.proc.poll()}):\n{self.log()[-4000:]}")

    def pids(self) -> dict[int, list[int]]:
        """Every worker process started, by slot, oldest first."""
        out: dict[int, list[int]] = {}
        for m in re.finditer(r"worker slot (\d+) started \(pid (\d+)\)", self.log()):
            out.setdefault(int(m[1]), []).append(int(m[2]))
        return out

    def wait_assigned(self, slots: list[int], timeout: float = 90.0) -> None:
        for slot in slots:
            self.wait_log(rf"worker {slot} assigned \S", timeout=timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit code: `run` must be gone within `timeout` (30 s is its promise)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run did not exit within {timeout}s of SIGTERM:\n{self.log()[-4000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pids in self.pids().values():
            for pid in pids:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _check_exactly_once(recs, n_inputs: int) -> None:
    sources = Counter(source_of(m) for m in recs)
    dupes = [k for k, v in sources.items() if v > 1]
    assert not dupes, f"{len(dupes)} inputs have more than one output, e.g. {dupes[:3]}"
    assert len(sources) == n_inputs


def _scoring_stack(stack, **runtime):
    s = stack.with_overrides(batch={"max_events": 200}, runtime=runtime)
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    return s


def _events(start: int, n: int) -> list[dict]:
    return [event(i, TENANTS[i % 3]) for i in range(start, start + n)]


@pytest.mark.kafka
def test_sigkilled_worker_is_restarted_and_its_partitions_scored_again_exactly_once(stack, tmp_path):
    s = _scoring_stack(stack)
    n1, n2 = 4000, 4000
    produce(s, _events(0, n1))
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    run = RunCommand(s, tmp_path, workers=2)
    try:
        run.wait_assigned([0, 1])
        reader.until(lambda r: len(r) >= n1, timeout=90)
        victim = run.pids()[1][-1]
        os.kill(victim, signal.SIGKILL)
        # Every partition gets new events, so all of them are only decided once slot 1 has its partitions back
        # (slot 0 would get them only after the dead member's 45 s session timeout).
        produce(s, _events(n1, n2))
        recs = reader.until(lambda r: len(r) >= n1 + n2, timeout=30)
        reader.poll_for(2.0)  # anything extra would be a duplicate
        run.wait_log(r"worker slot 1 killed by SIGKILL; restart 1 \(1 in the last minute\)", timeout=1)
        assert len(run.pids()[1]) == 2 and len(run.pids()[0]) == 1  # slot 0 kept running throughout
        # Static membership: the restarted slot took back exactly its partitions, and slot 0 was not rebalanced.
        before, after = run.log().split("worker slot 1 killed by SIGKILL", 1)
        assert "worker 0 revoked" not in after and "worker 0 lost" not in after
        held = re.findall(r"worker 1 assigned (.+)", before)[-1]
        assert re.findall(r"worker 1 assigned (.+)", after) == [held]
        assert run.terminate() == 0
        assert not any(_alive(p) for pids in run.pids().values() for p in pids)
    finally:
        run.close()
        reader.close()
    _check_exactly_once(recs, n1 + n2)


@pytest.mark.kafka
def test_stalled_single_worker_is_killed_and_restarted(stack, tmp_path):
    """SIGSTOP stands in for a worker stuck inside a librdkafka call: alive, but its loop never turns."""
    s = _scoring_stack(stack, stall_after_s=8.0)
    n1, n2 = 2000, 2000
    produce(s, _events(0, n1))
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    run = RunCommand(s, tmp_path, workers=1)  # one worker is supervised too
    try:
        reader.until(lambda r: len(r) >= n1, timeout=90)
        first = run.pids()[0][-1]
        os.kill(first, signal.SIGSTOP)
        produce(s, _events(n1, n2))
        run.wait_log(r"worker slot 0 \(pid \d+\) has not turned its loop for \d+s; killing it", timeout=30)
        run.wait_log(r"worker slot 0 killed by SIGKILL after a stall \(no heartbeat for \d+s\); restart 1",
                     timeout=10)
        recs = reader.until(lambda r: len(r) >= n1 + n2, timeout=60)
        reader.poll_for(2.0)
        assert not _alive(first) and len(run.pids()[0]) == 2
        assert run.terminate() == 0
    finally:
        run.close()
        reader.close()
    _check_exactly_once(recs, n1 + n2)


@pytest.mark.kafka
def test_sigterm_ends_run_even_when_a_worker_ignores_it(stack, tmp_path):
    """One worker is stopped (deaf to SIGTERM, as one blocked in librdkafka would be): after the shutdown grace
    the supervisor kills it, and run exits non-zero, within 30 s, leaving no process behind."""
    s = _scoring_stack(stack, shutdown_grace_s=3.0)
    produce(s, _events(0, 1000))
    run = RunCommand(s, tmp_path, workers=2)
    try:
        run.wait_assigned([0, 1])
        stuck = run.pids()[0][-1]
        os.kill(stuck, signal.SIGSTOP)
        assert run.terminate(timeout=30) == 1
        log = run.log()
        assert re.search(r"muse-worker-0 \(pid \d+\) did not stop within 3s; killing it", log)
        assert re.search(r"worker 1: signal 15, finishing", log)  # the other one stopped by itself
        assert not any(_alive(p) for pids in run.pids().values() for p in pids)
    finally:
        run.close()


@pytest.mark.kafka
def test_worker_failing_at_every_start_makes_run_give_up(settings_for, unique, tmp_path):
    # Its topics were never created: every worker fails during start-up, however often it is restarted (an
    # invalid client setting would not get that far: `run` refuses it before starting any worker).
    s = settings_for(unique, runtime={"max_restarts_per_minute": 2})
    run = RunCommand(s, tmp_path, workers=2)
    try:
        code = run.proc.wait(90)
        log = run.log()
        assert code == 1, log[-4000:]
        gave_up = re.search(r"giving up: worker slot (\d) failed 3 times within a minute \(last: exit code \d+\)", log)
        assert gave_up, log[-4000:]
        slot = gave_up[1]
        assert re.search(rf"worker slot {slot} exit code \d+; restart 1 \(1 in the last minute\)", log)
        assert re.search(rf"worker slot {slot} exit code \d+; restart 2 \(2 in the last minute\)", log)
        assert f"worker slot {slot} exit code" in log and len(run.pids()[int(slot)]) == 3
        assert not any(_alive(p) for pids in run.pids().values() for p in pids)
    finally:
        run.close()


@pytest.mark.parametrize("count", ["0", "-1"])
def test_run_refuses_fewer_than_one_worker(count, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--workers", count])
    assert exc.value.code == 2
    assert f"--workers: must be at least 1, got {count}" in capsys.readouterr().err


def test_run_with_no_cluster_at_the_address_stops_with_one_line(tmp_path):
    """A wrong address must not restart workers for ever: `run` gives up before starting any."""
    from muse_stream.kafka.local import free_port

    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "muse_stream", "run", "--workers", "1", "--bootstrap",
                          f"127.0.0.1:{free_port()}"], cwd=tmp_path, capture_output=True, text=True, timeout=90,
                         check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.monotonic() - t0 < 45
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("muse-stream: error: cannot reach Kafka at 127.0.0.1:"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_run_whose_metrics_port_is_taken_stops_with_one_line_before_any_worker(tmp_path, capsys):
    """A port held by something else (another run of the same slots, most often) is one line and exit 2, not
    workers failing at every start until run gives up."""
    import socket

    from muse_stream.config import Settings
    from muse_stream.kafka.local import free_port

    def slot_zero_free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port - 1))
                return True
            except OSError:
                return False

    # A free port whose neighbour below (slot 0's) is free too: another test's client can hold that one.
    port = next(p for p in (free_port() for _ in range(100)) if slot_zero_free(p))
    cfg = write_config(Settings().with_overrides(telemetry={"metrics_port": port - 1}), tmp_path / "muse.toml")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        # slot 0's port is free, slot 1's is held; no cluster is asked (nothing answers at 127.0.0.1:1)
        assert main(["run", "--workers", "2", "--config", cfg, "--bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"muse-stream: error: telemetry.metrics_port: 127.0.0.1:{port} (metrics_port + worker slot 1) "
                   "is in use (Address already in use): another `muse-stream run` of these slots? Give this run "
                   "another metrics_port or --slot")]


@pytest.mark.kafka
def test_a_second_run_of_the_same_slot_ends_the_first_without_a_restart_war(stack, tmp_path):
    """The newer run's worker fences the older one's; the older run names the reason, does not restart that slot
    (a restart would fence the newer one in turn), and exits with FENCED_EXIT; the newer run keeps scoring."""
    from muse_stream.worker.exits import FENCED_EXIT

    s = _scoring_stack(stack)
    produce(s, _events(0, 300))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = RunCommand(s, tmp_path / "a", workers=1)
    second = None
    try:
        first.wait_assigned([0])
        second = RunCommand(s, tmp_path / "b", workers=1)
        code = first.proc.wait(120)
        log = first.log()
        assert code == FENCED_EXIT, log[-4000:]
        assert "worker slot 0 was fenced: another worker holds slot 0" in log
        assert len(first.pids()[0]) == 1, "the fenced slot was restarted"
        assert second.proc.poll() is None, second.log()[-4000:]
        second.wait_assigned([0])
    finally:
        first.close()
        if second is not None:
            second.close()
