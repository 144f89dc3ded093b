"""Which implementation of the scorer's per-event work runs: the compiled one (_native.c: the batch scanner
and the decision writer) when it was built and is not switched off, else the pure-Python one.

Both give the same decisions and dead letters, byte for byte (tests/scoring/test_native_equivalence.py):
the scanner takes only the plain shape of an event and leaves every other event to the Python contract.
MUSE_PURE_PYTHON=1 in the environment forces the pure path (for tests and A/B benchmarks); a machine that
could not compile the extension at install time runs the pure path without being told.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

ENV_SWITCH = "MUSE_PURE_PYTHON"


def load_extension(name: str) -> tuple[ModuleType | None, str]:
    """(the compiled module muse_stream.scoring.<name>, "") or (None, why it is not used): the one rule for
    both extensions (this scanner and writer, and reason codes' _treeshap)."""
    if os.environ.get(ENV_SWITCH, "").strip() not in ("", "0"):
        return None, f"{ENV_SWITCH}=1"
    try:
        return importlib.import_module(f"muse_stream.scoring.{name}"), ""
    except ImportError:
        return None, "the C extension is not built"


def choose(default: ModuleType | None, name: str, native: bool | None) -> ModuleType | None:
    """The compiled module to use: the process's choice (`default`) for None, none for False; True insists on
    it (an ImportError then says the extension is not built)."""
    if native is None:
        return default
    return importlib.import_module(f"muse_stream.scoring.{name}") if native else None


NATIVE, _WHY = load_extension("_native")
ACTIVE = "native (C extension)" if NATIVE is not None else f"python ({_WHY})"


def module(native: bool | None = None) -> ModuleType | None:
    """The compiled scanner and writer to use: the process's choice for None, none for False; True insists."""
    return choose(NATIVE, "_native", native)


def active_path() -> str:
    """The active path in words, for `--version`, the worker's start line and the benchmark report."""
    return ACTIVE
