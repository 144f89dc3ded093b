"""A booster's trees compiled for the scorer: predictions in C (_forest.c) that are XGBoost's own, bit for bit,
without XGBoost's fixed cost per call (about 0.2 ms for `inplace_predict`, which at a light load's small batches
was most of a batch's time).

Each tree becomes a complete binary tree of the forest's depth in heap order, so a row's walk is `depth` steps
of the same branch-free arithmetic, done for a block of rows at once. A version gets a Forest only when:
- the extension was built and MUSE_PURE_PYTHON is not set (native.load_extension, as for the other extensions);
- the booster is gbtree with one output, numerical splits and objective binary:logistic or reg:logistic
  (treeshap_tables.read_trees checks the first three);
- its depth is at most MAX_DEPTH and the layout under MAX_BYTES;
- on a probe of rows that meet every split's threshold exactly, just below it and missing, its outputs equal
  XGBoost's `inplace_predict` to the bit.

Otherwise the version scores through XGBoost, and the worker's log says why. A booster is compiled once, on
its first prediction (BatchScorer.warm_loaded makes that happen between batches), and kept as long as it lives.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass

import numpy as np
import orjson

from muse_stream.scoring.native import load_extension
from muse_stream.scoring.treeshap_tables import Unsupported, read_trees

logger = logging.getLogger(__name__)

MAX_DEPTH = 12  # 4,095 node slots per tree; deeper (lossguide) trees are XGBoost's to walk
MAX_BYTES = 64 * 1024 * 1024
LOGISTIC = ("binary:logistic", "reg:logistic")
PROBE_ROWS = 512

EXT, _WHY = load_extension("_forest")


@dataclass(frozen=True, eq=False)
class Forest:
    """The trees' arrays as _forest.predict reads them."""

    n_features: int
    depth: int
    nodes: np.ndarray  # uint32, n_trees x (2^depth - 1): feature | missing-goes-left << 31
    thresholds: np.ndarray  # float32, same shape
    leaves: np.ndarray  # float32, n_trees x 2^depth
    base_prob: float  # learner_model_param.base_score: the margin starts at its logit

    @property
    def n_trees(self) -> int:
        return len(self.nodes)

    @property
    def nbytes(self) -> int:
        return self.nodes.nbytes + self.thresholds.nbytes + self.leaves.nbytes

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 probabilities for a C-ordered float32 matrix of n_features columns."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(len(x), dtype=np.float32)
        if len(x):
            EXT.predict(x, self.n_features, self.depth, self.nodes, self.thresholds, self.leaves, self.base_prob,
                        True, out)
        return out


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # booster -> (Forest or None, why not)


def raw_scores(model, x: np.ndarray) -> np.ndarray:
    """A loaded version's raw scores for a float32 matrix in its feature order: one call, to its compiled trees
    when it has them (the same bits), else to XGBoost (LoadedModel.predict)."""
    forest, _ = compiled(model)
    if forest is None:
        return model.predict(x)
    return forest.predict(x)


def compiled(model) -> tuple[Forest | None, str]:
    """The version's booster compiled, cached per booster object: (Forest, "") or (None, why not)."""
    booster = model.booster
    try:
        return _compiled[booster]
    except (KeyError, TypeError):
        pass
    t0 = time.perf_counter()
    entry = compile_booster(booster, len(model.features))
    try:
        _compiled[booster] = entry
    except TypeError:  # a stand-in that takes no weak reference: compiled per call, which only tests do
        return entry
    if entry[0] is not None:
        logger.info("%s: predictions by compiled trees (%d trees, depth %d, %.1f MB, %.0f ms to build and check)",
                    model.name, entry[0].n_trees, entry[0].depth, entry[0].nbytes / 1e6,
                    1000 * (time.perf_counter() - t0))
    else:
        logger.info("%s: predictions by XGBoost (%s)", model.name, entry[1])
    return entry


def compile_booster(booster, n_features: int) -> tuple[Forest | None, str]:
    """(the booster's Forest, "") or (None, why it scores through XGBoost)."""
    if EXT is None:
        return None, _WHY
    try:
        forest = layout(bytes(booster.save_raw("json")), n_features)
    except MemoryError:
        raise
    except Unsupported as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - not a model we can read: XGBoost's own call decides
        return None, f"its model does not read as trees: {type(e).__name__}: {str(e)[:200]}"
    mismatch = check(forest, booster)
    if mismatch:
        return None, mismatch
    return forest, ""


def layout(raw_json: bytes, n_features: int) -> Forest:
    """The Forest of a booster's JSON model; Unsupported says why a model is outside it. Every tree counts, as in
    the workers' inplace_predict calls, which give no iteration range: XGBoost 2 and later predict with the
    whole model even when training stopped early and recorded a best_iteration."""
    trees = read_trees(raw_json, n_features)
    learner = orjson.loads(raw_json)["learner"]
    objective = learner.get("objective", {}).get("name")
    if objective not in LOGISTIC:
        raise Unsupported(f"objective {objective!r}: only {' and '.join(LOGISTIC)}")
    base = str(learner["learner_model_param"].get("base_score", "0.5")).strip("[]").split(",")
    if len(base) != 1:
        raise Unsupported("more than one base score")
    depths = [_depth(t) for t in trees]
    depth = max([1, *depths])
    if depth > MAX_DEPTH:
        raise Unsupported(f"trees {depth} deep, above the compiled path's {MAX_DEPTH}")
    n_inner, n_leaf = (1 << depth) - 1, 1 << depth
    if len(trees) * (n_inner + n_leaf) * 4 > MAX_BYTES:
        raise Unsupported(f"a layout above {MAX_BYTES >> 20} MB")
    nodes = np.zeros((len(trees), n_inner), dtype=np.uint32)
    thresholds = np.zeros((len(trees), n_inner), dtype=np.float32)
    leaves = np.zeros((len(trees), n_leaf), dtype=np.float32)
    for k, tree in enumerate(trees):
        _place(tree, depth, nodes[k], thresholds[k], leaves[k])
    return Forest(n_features, depth, nodes, thresholds, leaves, float(np.float32(base[0])))


def _depth(tree: dict) -> int:
    """The depth of the tree's deepest leaf (a one-leaf tree: 0)."""
    left, right = tree["left_children"], tree["right_children"]
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, d = stack.pop()
        if left[node] == -1:
            deepest = max(deepest, d)
        else:
            stack += [(left[node], d + 1), (right[node], d + 1)]
    return deepest


def _place(tree: dict, depth: int, nodes: np.ndarray, thresholds: np.ndarray, leaves: np.ndarray) -> None:
    """One tree into heap slots; a leaf above the last level fills every leaf slot under its own slot."""
    left, right = tree["left_children"], tree["right_children"]
    feat, cond, dleft = tree["split_indices"], tree["split_conditions"], tree["default_left"]
    n_inner = len(nodes)
    stack = [(0, 0, 0)]  # (XGBoost's node id, heap slot, level)
    while stack:
        node, slot, level = stack.pop()
        if left[node] == -1:
            span = 1 << (depth - level)
            first = (slot + 1) * span - 1 - n_inner  # the leftmost leaf slot below `slot`
            leaves[first:first + span] = cond[node]  # a leaf's condition is its value
            continue
        nodes[slot] = int(feat[node]) | (int(bool(dleft[node])) << 31)
        thresholds[slot] = cond[node]
        stack += [(left[node], 2 * slot + 1, level + 1), (right[node], 2 * slot + 2, level + 1)]


def probe_rows(forest: Forest, seed: int = 0) -> np.ndarray:
    """Rows that meet the forest's splits where they can go either way: each cell, at random, a threshold of
    its feature, the float just below one, a missing value or a value spread around the thresholds."""
    rng = np.random.default_rng(seed)
    n = forest.n_features
    x = np.zeros((PROBE_ROWS, n), dtype=np.float32)
    feats = (forest.nodes & np.uint32(0x7FFFFFFF)).ravel()
    thr = forest.thresholds.ravel()
    for f in range(n):
        t = thr[feats == f]
        if not t.size:
            t = np.zeros(1, dtype=np.float32)
        pick = t[rng.integers(0, t.size, PROBE_ROWS)]
        kind = rng.integers(0, 4, PROBE_ROWS)
        below = np.nextafter(pick, np.float32(-np.inf))
        spread = (rng.normal(size=PROBE_ROWS) * (float(t.std()) + 1.0) + float(t.mean())).astype(np.float32)
        x[:, f] = np.select([kind == 0, kind == 1, kind == 2], [pick, below, np.float32(np.nan)], spread)
    return x


def check(forest: Forest, booster) -> str:
    """"" when the forest's outputs on the probe are XGBoost's, bit for bit; else what differs."""
    x = probe_rows(forest)
    ours = forest.predict(x)
    theirs = np.asarray(booster.inplace_predict(x, validate_features=False), dtype=np.float32)
    if theirs.shape != ours.shape:
        return f"XGBoost gives shape {theirs.shape} for {len(x)} rows"
    differ = ours.view(np.uint32) != theirs.view(np.uint32)
    if differ.any():
        worst = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
        return f"{int(differ.sum())} of {len(x)} probe outputs differ from XGBoost's (by up to {worst:.3g})"
    return ""
