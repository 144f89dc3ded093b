"""Does a Kafka version keep every transaction's markers across unclean restarts of a single-node broker?

Three transactional producers commit to three topics in a loop while the broker is killed with SIGKILL and
started again, CYCLES times. Then the broker log is searched for the line Kafka writes when it drops a
completing transaction's markers ("... likely deleted already and hence can be skipped"). A dropped marker
leaves that transaction open on its partitions: read_committed readers stop there, and a consumer group whose
offsets were in it cannot read its committed offsets. (Here each producer's next transaction closes the open
one, whatever its outcome was; a muse-stream worker cannot, because it waits for those offsets first.)

    MUSE_KAFKA_VERSION=4.4.0 python scripts/broker_markers.py [--cycles 5] [--port N]

Prints the version, the number of restarts and the number of dropped-marker lines. Exits 0 when none, 1 when
any, and 2 when the measurement itself failed (the broker did not start, a topic could not be made): 1 is
always a finding about the broker, never a crash of this script.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from muse_stream.kafka.local import LocalBroker, free_port

DROPPED = "likely deleted already and hence can be skipped"
TOPICS = ("m1", "m2", "m3")


def _commit_forever(bootstrap: str, n: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"markers-{n}",
                          "transaction.timeout.ms": 20000, "linger.ms": 0})
            p.init_transactions(30)
            while not stop.is_set():
                p.begin_transaction()
                for t in TOPICS:
                    p.produce(t, b"x")
                p.commit_transaction(10)
        except KafkaException:
            time.sleep(0.5)  # the broker is down: a new producer once it is back


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--port", type=int, default=0, help="the throwaway broker's port (default: a free one)")
    args = ap.parse_args()
    try:
        return _measure(args.cycles, args.port or free_port())
    except Exception as e:  # noqa: BLE001 - any failure of the measurement itself: exit 2, not 1
        print(f"broker_markers: the measurement failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def _measure(cycles: int, port: int) -> int:
    with tempfile.TemporaryDirectory(prefix="muse-markers-") as home:
        broker = LocalBroker(port, home=Path(home), heap="384m")
        broker.start()
        try:
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            for f in admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS]).values():
                f.result()
            stop = threading.Event()
            threads = [threading.Thread(target=_commit_forever, args=(broker.bootstrap, n, stop), daemon=True)
                       for n in range(3)]
            for t in threads:
                t.start()
            for _ in range(cycles):
                time.sleep(4.0)  # transactions committing
                broker.kill(signal.SIGKILL, timeout=10)
                time.sleep(1.0)
                broker.start(timeout=90)
                time.sleep(10.0)  # the restarted broker re-sends pending markers (or drops them)
            stop.set()
            dropped = broker.log_file.read_text(errors="replace").count(DROPPED)
            version = broker.status().version
        finally:
            broker.kill(signal.SIGKILL, timeout=10)
    print(f"Kafka {version}: {cycles} unclean restarts, {dropped} dropped-marker line(s)")
    return 1 if dropped else 0


if __name__ == "__main__":
    sys.exit(main())
