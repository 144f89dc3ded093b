"""Logging: librdkafka's repeated lines are held back to one per interval, with a count."""

from __future__ import annotations

import logging
import time

from muse_stream.logs import RepeatFilter


def _capture(interval: float):
    logger = logging.getLogger(f"test.repeat.{interval}")
    logger.propagate = False
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger.handlers = [Keep()]
    logger.filters = [RepeatFilter(interval)]
    return logger, lines


def test_a_burst_of_the_same_error_is_one_line_then_one_per_interval_with_a_count():
    log, lines = _capture(0.2)
    for i in range(2000):
        log.error("Connect to ipv4#127.0.0.1:%d failed: Connection refused (after %dms in state CONNECT)", 9092, i)
    assert len(lines) == 1 and "Connection refused" in lines[0]
    time.sleep(0.25)
    log.error("Connect to ipv4#127.0.0.1:%d failed: Connection refused (after %dms in state CONNECT)", 9092, 7)
    assert len(lines) == 2 and "(1999 more like it" in lines[1]


def test_different_errors_each_get_through():
    log, lines = _capture(60)
    log.error("Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    log.error("SASL authentication error: Authentication failed during authentication")
    log.error("Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    assert len(lines) == 2
