"""`status` under a closed pipe (`muse-stream status | head -1`) must not exit 1, its "unhealthy" code: rich's
own handling of a broken pipe is SystemExit(1), so the screen hands it to the command line's (exit 141)."""

from __future__ import annotations

import os

import pytest

from muse_stream.telemetry.status_screen import make_console


def test_a_closed_pipe_is_a_broken_pipe_not_exit_1():
    r, w = os.pipe()
    os.close(r)
    out = open(w, "w")  # noqa: SIM115 - closed by hand below: its last flush meets the same closed pipe
    console = make_console(out)
    with pytest.raises(BrokenPipeError):
        for _ in range(1000):
            console.print("x" * 200)
    with pytest.raises(BrokenPipeError):
        out.close()
