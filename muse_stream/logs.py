"""Logging set-up: plain lines by default, JSON lines when asked; librdkafka's own log is kept quiet."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class RepeatFilter(logging.Filter):
    """Lets a repeated line through once per interval, with a count of what it held back. A broker outage
    makes librdkafka log the same `Connection refused` thousands of times; the first line says all of it.
    Lines count as the same when they differ only in numbers (ports, counts, milliseconds)."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[tuple[str, str], list] = {}  # key -> [last let through, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, re.sub(r"\d+", "#", str(record.msg) % record.args if record.args else str(record.msg)))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.getMessage()} ({seen[1]} more like it in the last {now - seen[0]:.0f}s)"
            record.args = None
        self._seen[key] = [now, 0]
        if len(self._seen) > 10_000:  # bounded: forget the oldest half
            for k in sorted(self._seen, key=lambda k: self._seen[k][0])[:5_000]:
                del self._seen[k]
        return True


def setup_logging(*, verbose: bool = False, fmt: str = "plain", level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else level)
    rd = logging.getLogger("muse_stream.librdkafka")
    rd.setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not any(isinstance(f, RepeatFilter) for f in rd.filters):
        rd.addFilter(RepeatFilter())
