"""ProgressWatch's rule, on a clock and lag readings of the test's making: a worker that takes no events is
reported only when an input partition has events waiting and its committed offset stood still between two
reads, both made after `after_s` without an event."""

from __future__ import annotations

from muse_stream.worker.progress import ProgressWatch


class Fake:
    def __init__(self) -> None:
        self.t = 0.0
        self.reads = 0
        self.rows = {0: (10, 50), 1: (20, 20)}  # partition -> (committed, end)
        self.error = None

    def clock(self) -> float:
        return self.t

    def lag(self, settings, timeout: float) -> dict:
        self.reads += 1
        if self.error:
            return {"error": self.error, "partitions": [], "total": None}
        rows = [{"partition": p, "committed": c, "end": e, "lag": e - c} for p, (c, e) in self.rows.items()]
        return {"partitions": rows, "total": sum(r["lag"] for r in rows)}


def _watch(f: Fake) -> ProgressWatch:
    return ProgressWatch(None, after_s=60.0, every_s=10.0, clock=f.clock, lag=f.lag)


def test_a_partition_waiting_with_its_offset_still_is_reported_on_the_second_read():
    f = Fake()
    w = _watch(f)
    f.t = 59.0
    assert w.check() == [] and f.reads == 0  # not idle long enough: the group is not even read
    f.t = 60.0
    assert w.check() == [] and f.reads == 1  # one read proves nothing
    f.t = 65.0
    assert w.check() == [] and f.reads == 1  # not before every_s
    f.t = 70.0
    assert w.check() == [0]  # 1 has nothing waiting


def test_an_offset_that_moves_or_an_event_taken_clears_it():
    f = Fake()
    w = _watch(f)
    f.t = 60.0
    w.check()
    f.rows[0] = (11, 50)  # another member made progress
    f.t = 70.0
    assert w.check() == []
    w.consumed()  # this worker took events: idle again from now
    f.t = 125.0
    assert w.check() == [] and f.reads == 2
    f.t = 130.0
    w.check()
    f.t = 140.0
    assert w.check() == [0]


def test_nothing_is_decided_while_the_group_cannot_be_read():
    f = Fake()
    w = _watch(f)
    f.t = 60.0
    w.check()
    f.error = "cannot reach Kafka"
    f.t = 70.0
    assert w.check() == []
    f.error = None
    f.t = 80.0
    assert w.check() == []  # the read before the error does not count
    f.t = 90.0
    assert w.check() == [0]
