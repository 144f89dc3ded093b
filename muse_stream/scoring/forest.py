"""A booster's trees compiled for the scorer: predictions in C (_forest.c) that are XGBoost's own, bit for bit,
without XGBoost's fixed cost per call (about 0.2 ms for `inplace_predict`, which at a light load's small batches
was most of a batch's time).

Each tree becomes a complete binary tree of the forest's depth in heap order, so a row's walk is `depth` steps
of the same branch-free arithmetic, done for a block of rows at once. A version gets a Forest only when:
- the extension was built and MUSE_PURE_PYTHON is not set (native.load_extension, as for the other extensions);
- the booster is gbtree with one output, numerical splits and objective binary:logistic or reg:logistic
  (treeshap_tables.learner_trees checks the first three);
- its depth is at most MAX_DEPTH, its JSON under MAX_JSON_BYTES, the layout under MAX_BYTES and not more than
  SPARSE slots per node of the model (trees far shallower than the deepest would make the walk slower than
  XGBoost's);
- on a probe of rows aimed at its splits (thresholds exactly, the float just below, missing), its outputs
  equal XGBoost's `inplace_predict` to the bit.

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
from muse_stream.scoring.treeshap_tables import Unsupported, learner_trees

logger = logging.getLogger(__name__)

MAX_DEPTH = 12  # 4,095 node slots per tree; deeper (lossguide) trees are XGBoost's to walk
MAX_BYTES = 8 * 1024 * 1024  # the layout's arrays: deeper layouts walk out of the caches, slower than XGBoost
MAX_JSON_BYTES = 64 * 1024 * 1024  # the model's JSON, parsed at load: a larger one keeps XGBoost's own walk
SPARSE = 64  # at most this many slots of the layout per node: beyond ~100 the walk was slower than XGBoost
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
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"rows of shape {x.shape} for a forest of {self.n_features} features")
        out = np.empty(len(x), dtype=np.float32)
        if len(x):
            EXT.predict(x, self.n_features, self.depth, self.nodes, self.thresholds, self.leaves, self.base_prob, out)
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
        mismatch = check(forest, booster)
    except MemoryError:
        raise
    except Unsupported as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - not a model we can read or run: XGBoost's own call decides
        return None, f"its model does not read as trees: {type(e).__name__}: {str(e)[:200]}"
    if mismatch:
        return None, mismatch
    return forest, ""


def layout(raw_json: bytes, n_features: int) -> Forest:
    """The Forest of a booster's JSON model; Unsupported says why a model is outside it. Every tree counts, as in
    the workers' inplace_predict calls, which give no iteration range: XGBoost 2 and later predict with the
    whole model even when training stopped early and recorded a best_iteration."""
    if len(raw_json) > MAX_JSON_BYTES:
        raise Unsupported(f"a model JSON of {len(raw_json) >> 20} MB, above the compiled path's "
                          f"{MAX_JSON_BYTES >> 20} MB")
    try:
        learner = orjson.loads(raw_json)["learner"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise Unsupported(f"the model JSON does not parse as an XGBoost learner ({type(e).__name__}: {e})") from None
    trees = learner_trees(learner, n_features)
    objective = learner.get("objective", {}).get("name")
    if objective not in LOGISTIC:
        raise Unsupported(f"objective {objective!r}: only {' and '.join(LOGISTIC)}")
    base = str(learner["learner_model_param"].get("base_score", "0.5")).strip("[]").split(",")
    if len(base) != 1:
        raise Unsupported("more than one base score")
    placed = [_slots(t) for t in trees]
    depth = max([1, *(int(level.max()) for _, level, _ in placed)])
    if depth > MAX_DEPTH:
        raise Unsupported(f"trees {depth} deep, above the compiled path's {MAX_DEPTH}")
    n_inner, n_leaf = (1 << depth) - 1, 1 << depth
    nbytes = len(trees) * (2 * n_inner + n_leaf) * 4  # nodes and thresholds per internal slot, a leaf value each
    if nbytes > MAX_BYTES:
        raise Unsupported(f"a layout of {nbytes:,} bytes, above the compiled path's {MAX_BYTES:,}")
    real = sum(len(slot) for slot, _, _ in placed)
    if len(trees) * (n_inner + n_leaf) > SPARSE * real:
        # Trees much shallower than the deepest (lossguide, chains) fill few of their slots: the walk would take
        # `depth` steps through mostly empty memory, slower than XGBoost's own.
        raise Unsupported(f"{real:,} nodes in {len(trees) * (n_inner + n_leaf):,} slots of a depth-{depth} layout: "
                          f"too sparse for the compiled path (more than {SPARSE} slots a node)")
    nodes = np.zeros((len(trees), n_inner), dtype=np.uint32)
    thresholds = np.zeros((len(trees), n_inner), dtype=np.float32)
    leaves = np.zeros((len(trees), n_leaf), dtype=np.float32)
    for k, (tree, (slot, level, ids)) in enumerate(zip(trees, placed)):
        _place(tree, depth, slot, level, ids, nodes[k], thresholds[k], leaves[k])
    # XGBoost clamps the base score into [1e-6, 1 - 1e-6] before taking its logit (a score of 0 or 1 would have
    # none); training never writes one outside, a hand-edited model may.
    p = np.float32(base[0])
    p = min(max(p, np.float32(1e-6)), np.float32(1.0) - np.float32(1e-6))
    return Forest(n_features, depth, nodes, thresholds, leaves, float(p))


def _slots(tree: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each reachable node's heap slot and level, and its id, breadth first (one numpy step per level)."""
    left = np.asarray(tree["left_children"], dtype=np.int64)
    right = np.asarray(tree["right_children"], dtype=np.int64)
    ids, slots, levels = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
    frontier, at, lv = ids[0], slots[0], 0
    while frontier.size and lv <= MAX_DEPTH:
        inner = left[frontier] != -1
        parents, pslot = frontier[inner], at[inner]
        frontier = np.concatenate([left[parents], right[parents]])
        at = np.concatenate([2 * pslot + 1, 2 * pslot + 2])
        lv += 1
        ids.append(frontier)
        slots.append(at)
        levels.append(np.full(frontier.size, lv, np.int64))
    return np.concatenate(slots), np.concatenate(levels), np.concatenate(ids)


def _place(tree: dict, depth: int, slot: np.ndarray, level: np.ndarray, ids: np.ndarray, nodes: np.ndarray,
           thresholds: np.ndarray, leaves: np.ndarray) -> None:
    """One tree into its heap slots; a leaf above the last level fills every leaf slot under its own slot."""
    left = np.asarray(tree["left_children"], dtype=np.int64)[ids]
    cond = np.asarray(tree["split_conditions"], dtype=np.float64)[ids].astype(np.float32)
    is_leaf = left == -1
    inner = ~is_leaf
    feat = np.asarray(tree["split_indices"], dtype=np.uint32)[ids[inner]]
    dleft = np.asarray(tree["default_left"], dtype=np.uint32)[ids[inner]] != 0
    nodes[slot[inner]] = feat | (dleft.astype(np.uint32) << np.uint32(31))
    thresholds[slot[inner]] = cond[inner]  # a split in float32, as XGBoost compares it
    span = np.int64(1) << (depth - level[is_leaf])
    first = (slot[is_leaf] + 1) * span - 1 - len(nodes)  # the leftmost leaf slot below each leaf's slot
    offsets = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    leaves[np.repeat(first, span) + offsets] = np.repeat(cond[is_leaf], span)  # a leaf's condition is its value


def probe_rows(forest: Forest, seed: int = 0) -> np.ndarray:
    """Rows aimed at the forest's splits where they can go either way: each cell, at random, one of its
    feature's thresholds, the float just below one, a missing value or a value spread around the thresholds
    (a sample of the splits, not all of them: the arithmetic is the same at every split, and the tests compare
    whole data sets)."""
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
        t64 = t.astype(np.float64)
        with np.errstate(over="ignore"):  # thresholds near float32's limit: a spread value may round to inf
            spread = (rng.normal(size=PROBE_ROWS) * (float(t64.std()) + 1.0) + float(t64.mean())).astype(np.float32)
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
