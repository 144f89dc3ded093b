"""Reading small tabular files (calibration sets, labels): CSV, JSON lines or Parquet, into numpy columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import orjson

from muse_stream.errors import DataError


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a CSV (header row), JSON-lines or Parquet file. Numeric columns become float64 arrays."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        cols = _read_parquet(p)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        cols = _read_jsonl(p)
    else:
        cols = _read_csv(p)
    if not cols:
        raise DataError(f"{p}: no columns")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise DataError(f"{p}: columns have different lengths")
    return {k: _numeric_or_text(v) for k, v in cols.items()}


def _numeric_or_text(values) -> np.ndarray:
    try:
        return np.asarray([np.nan if v in (None, "") else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(["" if v is None else str(v) for v in values], dtype=object)


def _read_csv(p: Path) -> dict[str, list]:
    try:
        return _csv_columns(p)
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a UTF-8 text file; expected CSV, JSON lines (.jsonl) or "
                        "Parquet (.parquet)") from None
    except csv.Error as e:
        raise DataError(f"{p}: not a CSV file: {e}") from None


def _csv_columns(p: Path) -> dict[str, list]:
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{p}: empty file") from None
        cols: dict[str, list] = {h.strip(): [] for h in header}
        names = list(cols)
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(names):
                raise DataError(f"{p}:{lineno}: {len(row)} fields, header has {len(names)}")
            for name, v in zip(names, row):
                cols[name].append(v)
    return cols


def _read_jsonl(p: Path) -> dict[str, list]:
    rows = []
    with p.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(orjson.loads(line))
                except orjson.JSONDecodeError as e:
                    raise DataError(f"{p}:{lineno}: not JSON: {e}") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{p}: expected one JSON object per line")
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {n: [r.get(n) for r in rows] for n in names}


def _read_parquet(p: Path) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        # An optional extra, not a core dependency: CSV and JSON lines need nothing more.
        raise DataError(f"{p}: reading Parquet needs the parquet extra: pip install 'muse-stream[parquet]'") from None
    try:
        return pq.read_table(p).to_pydict()
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own kinds (ArrowInvalid, OSError...) for bad files
        raise DataError(f"{p}: not a Parquet file pyarrow can read: {e}") from None
