"""Exact path-dependent TreeSHAP as tables, built once per booster, so a flagged row costs a few table reads per
leaf (the idea of "Fast TreeSHAP v2", Yang 2021; this is our own derivation and code).

For one leaf with value v whose root-to-leaf path splits on the unique features D = {1..d} (a feature met twice
on a path is one player: its zero fractions multiply, its one fractions AND), path-dependent TreeSHAP is the
Shapley value of the game

    val(S) = v * prod_{j in S} o_j * prod_{j not in S} z_j

where z_j is the product of the path's cover ratios (child cover / parent cover, XGBoost's sum_hessian) at
the nodes of feature j and o_j is 1 when the row takes the path's branch at every one of them, else 0. With
H the row's hot features (o_j = 1) and w(k) = k! (d-1-k)! / d!, the Shapley value of feature i is

    phi_i = v * (o_i - z_i) * sum_{S subset of H - {i}} w(|S|) * prod_{j in D - S - {i}} z_j.

Let T(A) = v * prod_{j not in A} z_j * sum_{S subset of A} w(|S|) * prod_{j in A - S} z_j, one number per subset
A of D. The sum above is T(A) / (v z_i) with A = H - {i}, which gives

    phi_i = (1 - z_i) / z_i * T(H - {i})   for a hot feature i,
    phi_i = -T(H)                           for a cold one (the same for every cold feature).

So each leaf keeps 2^d values T and d ratios (1 - z_i) / z_i, and a row's contributions are, per leaf, its
pattern H and d reads of T (scoring/_treeshap.c). T(A) is built as sum_k w(k) [t^k] prod_{j in A} (z_j + t)
prod_{j not in A} z_j, a polynomial multiplied out one feature at a time for all patterns at once.

Supported: gbtree boosters with one output (binary:logistic and other single-target objectives), numerical
splits. read_trees says why anything else is not, and the caller falls back to XGBoost's pred_contribs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numpy as np
import orjson

MAX_PATH_FEATURES = 16  # a pattern is a uint32 bit set; 2^d values per leaf bound d long before that
CHUNK_CELLS = 1 << 20  # leaves per numpy step are capped so a step's temporaries stay near 8 MB

# The C loop's records (scoring/_treeshap.c declares the same structs; align=True gives C's layout).
# A tree: where its internal nodes and its leaves start (one record more marks the ends).
TREE = np.dtype([("inner_lo", "<i8"), ("leaf_lo", "<i8")], align=True)
# An internal node: its number and its children's within the tree (parents before children), the split, and
# the index of its feature among the unique features of the path down to it.
INNER = np.dtype([("node", "<i4"), ("left", "<i4"), ("right", "<i4"), ("feature", "<i4"), ("threshold", "<f4"),
                  ("default_left", "u1"), ("uidx", "u1"), ("pad", "u1", (2,))], align=True)
# A leaf: where its unique features (and their ratios) and its 2^d values start, its node number, d.
LEAF = np.dtype([("fptr", "<i8"), ("toff", "<i8"), ("node", "<i4"), ("d", "<i4")], align=True)


class Unsupported(ValueError):
    """The booster is outside the fast path (its kind, or its tables would be too large): use pred_contribs."""


@dataclass(frozen=True)
class Tables:
    """What the C evaluator reads: trees, internal nodes and leaves as records (TREE, INNER, LEAF), each
    leaf's unique path features with their ratios (1 - z) / z, and its values T over the 2^d patterns."""

    n_features: int
    max_nodes: int  # nodes in the largest tree: the per-row scratch of patterns
    trees: np.ndarray  # TREE, n_trees + 1
    inner: np.ndarray  # INNER
    leaves: np.ndarray  # LEAF
    leaf_features: np.ndarray  # int32
    leaf_ratios: np.ndarray  # float64 pairs (-1, (1 - z) / z), beside leaf_features: the cold and hot factors
    values: np.ndarray  # float32: computed in float64, kept as XGBoost's own TreeSHAP computes, in float

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in ("trees", "inner", "leaves", "leaf_features", "leaf_ratios",
                                                     "values"))


def read_trees(raw_json: bytes, n_features: int) -> list[dict]:
    """The trees of a booster's JSON model (booster.save_raw("json")), checked to be within the fast path."""
    try:
        learner = orjson.loads(raw_json)["learner"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise Unsupported(f"the model JSON does not parse as an XGBoost learner ({type(e).__name__}: {e})") from None
    return learner_trees(learner, n_features)


def learner_trees(learner: dict, n_features: int) -> list[dict]:
    """read_trees for a model JSON's "learner" object already parsed."""
    try:
        gb = learner["gradient_booster"]
        params = learner["learner_model_param"]
    except (KeyError, TypeError) as e:
        raise Unsupported(f"the model JSON does not parse as an XGBoost learner ({type(e).__name__}: {e})") from None
    if gb.get("name") != "gbtree":
        raise Unsupported(f"booster {gb.get('name')!r}: only gbtree (dart weighs its trees, gblinear has none)")
    if int(params.get("num_class", 0)) > 1 or int(params.get("num_target", 1)) > 1:
        raise Unsupported("more than one output per row")
    model = gb["model"]
    trees = model["trees"]
    if any(int(g) != 0 for g in model.get("tree_info", [])):
        raise Unsupported("trees of more than one output group")
    for t in trees:
        if int(t["tree_param"].get("size_leaf_vector", 1)) > 1:
            raise Unsupported("vector leaves (multi-target trees)")
        if any(int(s) != 0 for s in t.get("split_type", ())) or t.get("categories_nodes"):
            raise Unsupported("categorical splits")
        # Only the splits that are nodes: pruning (the exact method with gamma) leaves deleted nodes in the
        # arrays as unreachable leaves whose split index is 2^31 - 1.
        if any((int(f) >= n_features or int(f) < 0) and int(lc) != -1
               for f, lc in zip(t["split_indices"], t["left_children"])):
            raise Unsupported(f"a split on a feature index beyond the model's {n_features} features")
    return trees


def _walk(tree: dict, inner: list, leaves: list) -> int:
    """Number the tree's reachable nodes (a node before its children), append its internal nodes as INNER
    tuples and its leaves as (node, value, unique features, their zero fractions); return the node count."""
    left, right = tree["left_children"], tree["right_children"]
    cover, feat, cond, dleft = tree["sum_hessian"], tree["split_indices"], tree["split_conditions"], tree["default_left"]
    stack = [(0, 0, {}, [])]  # (node id, its number, unique path features -> index, their zero fractions)
    count = 1
    while stack:
        node, num, uniq, z = stack.pop()
        if left[node] == -1:
            if uniq:  # a one-leaf tree moves only the bias column
                leaves.append((num, float(np.float32(cond[node])), list(uniq), z))  # a leaf's condition is its value
            continue
        parent = float(np.float32(cover[node]))
        f = int(feat[node])
        u = uniq.get(f, len(uniq))
        if u >= MAX_PATH_FEATURES:
            raise Unsupported(f"a path with more than {MAX_PATH_FEATURES} distinct features")
        inner.append((num, count, count + 1, f, cond[node], int(dleft[node]), u, (0, 0)))
        for child, child_num in ((right[node], count + 1), (left[node], count)):
            zf = float(np.float32(cover[child])) / parent if parent > 0.0 else 0.0
            if not zf > 0.0:  # an empty child: (1 - z) / z has no value, XGBoost's own call decides
                raise Unsupported(f"a split whose cover ratio is {zf}")
            cz = z + [zf] if u == len(z) else [*z[:u], z[u] * zf, *z[u + 1:]]
            stack.append((child, child_num, {**uniq, f: u}, cz))
        count += 2
    return count


def build_tables(trees: list[dict], n_features: int, max_bytes: int) -> Tables:
    """The evaluator's arrays for trees read by read_trees; Unsupported if they would pass max_bytes."""
    tree_recs, inner, leaves = [], [], []
    max_nodes = 1
    for tree in trees:
        tree_recs.append((len(inner), len(leaves)))
        max_nodes = max(max_nodes, _walk(tree, inner, leaves))
    tree_recs.append((len(inner), len(leaves)))
    d = np.array([len(f) for _, _, f, _ in leaves], dtype=np.int64)
    sizes = np.int64(1) << d
    nbytes = int(sizes.sum()) * 4 + int(d.sum()) * 20 + len(leaves) * LEAF.itemsize + len(inner) * INNER.itemsize
    if nbytes > max_bytes:
        raise Unsupported(f"tables of {nbytes / 1e6:.0f} MB, above the {max_bytes / 1e6:.0f} MB cap")
    toff = np.zeros(len(d), dtype=np.int64)
    np.cumsum(sizes[:-1], out=toff[1:])
    fptr = np.zeros(len(d), dtype=np.int64)
    np.cumsum(d[:-1], out=fptr[1:])
    values = np.empty(int(sizes.sum()), dtype=np.float32)
    ratios = np.full((int(d.sum()), 2), -1.0)
    for k in np.unique(d).tolist():
        members = np.flatnonzero(d == k)
        z = np.array([leaves[i][3] for i in members.tolist()], dtype=np.float64).reshape(len(members), k)
        v = np.array([leaves[i][1] for i in members.tolist()], dtype=np.float64)
        ratios[fptr[members][:, None] + np.arange(k), 1] = (1.0 - z) / z
        step = max(1, CHUNK_CELLS // ((1 << k) * (k + 1)))
        for lo in range(0, len(members), step):
            values[toff[members[lo:lo + step]][:, None] + np.arange(1 << k)] = leaf_values(z[lo:lo + step],
                                                                                          v[lo:lo + step])
    leaf_arr = np.zeros(len(leaves), dtype=LEAF)
    leaf_arr["fptr"], leaf_arr["toff"], leaf_arr["d"] = fptr, toff, d
    leaf_arr["node"] = [num for num, _, _, _ in leaves]
    inner_arr = np.array(inner, dtype=INNER)  # thresholds: float32, as XGBoost compares them
    return Tables(n_features=n_features, max_nodes=max_nodes, trees=np.array(tree_recs, dtype=TREE),
                  inner=inner_arr, leaves=leaf_arr,
                  leaf_features=np.array([f for _, _, fs, _ in leaves for f in fs], dtype=np.int32),
                  leaf_ratios=ratios.ravel(), values=values)


def leaf_values(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """T[leaf, pattern] for leaves of d unique path features: z (leaves x d) their zero fractions, v the leaf
    values; bit j of the pattern says feature j is in A."""
    n, d = z.shape
    hot = ((np.arange(1 << d)[:, None] >> np.arange(d)) & 1).astype(bool)  # (patterns, d)
    w = np.array([factorial(k) * factorial(d - 1 - k) / factorial(d) for k in range(d)])
    # c[..., k]: the coefficient of t^k in prod_{j in A} (z_j + t) * prod_{j not in A} z_j, one feature at a time.
    c = np.zeros((n, 1 << d, d + 1))
    c[:, :, 0] = 1.0
    for j in range(d):
        shifted = np.zeros_like(c)
        shifted[:, hot[:, j], 1:] = c[:, hot[:, j], :-1]
        c = z[:, j, None, None] * c + shifted
    return v[:, None] * (c[:, :, :d] @ w)  # the pattern of all d features is never read (i is not in A)
