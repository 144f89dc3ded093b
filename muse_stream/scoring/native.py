"""Which implementation of the scorer's per-event work runs: the compiled one (_native.c: the batch scanner
and the decision writer) when it was built and is not switched off, else the pure-Python one.

Both give the same decisions and dead letters, byte for byte (tests/scoring/test_native_equivalence.py):
the scanner takes only the plain shape of an event and leaves every other event to the Python contract.
MUSE_PURE_PYTHON=1 in the environment forces the pure path (for tests and A/B benchmarks); a machine that
could not compile the extension at install time runs the pure path without being told.
"""

from __future__ import annotations

import os
from types import ModuleType

ENV_SWITCH = "MUSE_PURE_PYTHON"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV_SWITCH, "").strip() not in ("", "0"):
        return None, f"python ({ENV_SWITCH}=1)"
    try:
        from muse_stream.scoring import _native
    except ImportError:
        return None, "python (the C extension is not built)"
    return _native, "native (C extension)"


NATIVE, ACTIVE = _load()


def module(native: bool | None = None) -> ModuleType | None:
    """The compiled module to use: the process's choice for None, none for False; True insists on it."""
    if native is None:
        return NATIVE
    if not native:
        return None
    from muse_stream.scoring import _native  # an ImportError here says the extension is not built

    return _native


def active_path() -> str:
    """The active path in words, for `--version`, the worker's start line and the benchmark report."""
    return ACTIVE
