/* The boosters' predictions without a call into XGBoost: a gbtree model's trees as complete binary trees of
 * one depth, walked branch-free for a block of rows at a time (muse_stream/scoring/forest.py lays them out,
 * checks them against XGBoost and loads this).
 *
 * predict(x, n_cols, depth, nodes, thresholds, leaves, base_prob, out) -> None
 *
 * x: float32 rows (n_rows x n_cols, C order), NaN = missing; out: float32 (n_rows). A tree is 2^depth - 1
 * internal nodes in heap order (node i's children are 2i + 1 and 2i + 2) and 2^depth leaves; a leaf of XGBoost's
 * that is shallower than depth fills every leaf slot below it, so the nodes under it may route anywhere. nodes
 * (uint32) holds a node's feature in its low 31 bits and "missing goes left" in the top bit, thresholds (float32)
 * its split; leaves (float32) the leaf values.
 *
 * The arithmetic is XGBoost's own (CPU predictor, 3.x): x < threshold goes left, compared in float32, NaN takes
 * the default; a row's margin starts at the base margin and adds each tree's leaf in float32, in tree order;
 * binary:logistic's base margin is -logf(1/p - 1) and its output 1 / (expf(min(-margin, 88.7)) + 1), in
 * float. Not reproduced: XGBoost's clamp of a base score outside [1e-6, 1 - 1e-6], which training never
 * writes; forest.py refuses any model whose outputs on a probe differ from XGBoost's by a single bit, such a
 * hand-edited one included.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define B 32 /* rows per block; block_avx2 shifts a feature index by 5 to find its column */
#define MAX_DEPTH 16


/* The block's rows column-major (a feature's B values side by side); rows past nb are zeros, walked and never
 * written out. */
static void load_block(const float *x, Py_ssize_t nb, Py_ssize_t n_cols, float *xb) {
    for (Py_ssize_t f = 0; f < n_cols; f++)
        for (Py_ssize_t r = 0; r < B; r++) xb[f * B + r] = r < nb ? x[r * n_cols + f] : 0.0f;
}

/* One block through every tree, the block's rows in step level by level (their loads overlap): a step is
 * branch-free, "right" being x >= the threshold, or missing with the node's default to the right. */
static void block_plain(Py_ssize_t nb, Py_ssize_t n_trees, int depth, const uint32_t *nodes, const float *thr,
                        const float *leaves, float base, float *acc, const float *xb) {
    const Py_ssize_t n_inner = ((Py_ssize_t)1 << depth) - 1, n_leaf = (Py_ssize_t)1 << depth;
    int32_t idx[B];
    for (Py_ssize_t r = 0; r < nb; r++) acc[r] = base;
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        const uint32_t *nd = nodes + t * n_inner;
        const float *th = thr + t * n_inner;
        const float *lv = leaves + t * n_leaf;
        for (Py_ssize_t r = 0; r < nb; r++) idx[r] = 0;
        for (int level = 0; level < depth; level++)
            for (Py_ssize_t r = 0; r < nb; r++) {
                const int32_t i = idx[r];
                const uint32_t n = nd[i];
                const float v = xb[(Py_ssize_t)(n & 0x7FFFFFFFu) * B + r];
                const int32_t nan = v != v;
                const int32_t right = (int32_t)(!(v < th[i]) & !nan) | (nan & (int32_t)(~n >> 31));
                idx[r] = 2 * i + 1 + right;
            }
        for (Py_ssize_t r = 0; r < nb; r++) acc[r] += lv[idx[r] - n_inner];
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__INTEL_COMPILER)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* The same walk for the block's rows eight at a time with AVX2 gathers (node, split, feature value, leaf), the
 * block's vectors (as many as its rows need, up to four) in step so their gathers overlap. The comparisons and additions are the same float32
 * operations as block_plain's, in the same order per row, so both give the same bits. */
__attribute__((target("avx2")))
static void block_avx2(Py_ssize_t nb, Py_ssize_t n_trees, int depth, const uint32_t *nodes, const float *thr,
                       const float *leaves, float base, float *acc, const float *xb) {
    enum { V = B / 8 };
    const int nv = (int)((nb + 7) / 8);
    const Py_ssize_t n_inner = ((Py_ssize_t)1 << depth) - 1, n_leaf = (Py_ssize_t)1 << depth;
    const __m256i low31 = _mm256_set1_epi32(0x7FFFFFFF), one = _mm256_set1_epi32(1);
    const __m256i n_in = _mm256_set1_epi32((int32_t)n_inner);
    __m256i lane[V];
    __m256 sum[V];
    for (int k = 0; k < V; k++) {
        lane[k] = _mm256_setr_epi32(8 * k, 8 * k + 1, 8 * k + 2, 8 * k + 3, 8 * k + 4, 8 * k + 5, 8 * k + 6,
                                    8 * k + 7);
        sum[k] = _mm256_set1_ps(base);
    }
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        const int *nd = (const int *)(nodes + t * n_inner);
        const float *th = thr + t * n_inner;
        const float *lv = leaves + t * n_leaf;
        __m256i idx[V];
        for (int k = 0; k < nv; k++) idx[k] = _mm256_setzero_si256();
        for (int level = 0; level < depth; level++) {
            /* A level of at most 32 nodes (the first six) is one to four registers: its nodes and splits are
             * permuted into place (from the registers' eight-node quarters, blended by the index's bits 3 and
             * 4), not gathered. */
            const int first = (1 << level) - 1, width = level <= 3 ? 8 : 1 << level;
            const int few = level <= 5 && first + width <= n_inner;
            __m256i q_n[4];
            __m256 q_s[4];
            for (int h = 0; h < 4; h++) {
                const int from = few && 8 * h < width ? first + 8 * h : first;  /* unused quarters repeat the first */
                q_n[h] = few ? _mm256_loadu_si256((const __m256i *)(nd + from)) : _mm256_setzero_si256();
                q_s[h] = few ? _mm256_loadu_ps(th + from) : _mm256_setzero_ps();
            }
            const __m256i at = _mm256_set1_epi32(first), eight = _mm256_set1_epi32(8);
            const __m256i sixteen = _mm256_set1_epi32(16);
            for (int k = 0; k < nv; k++) {
                __m256i n;
                __m256 s;
                if (few) {
                    /* the permutes read the low three bits of rel; bit 3 picks within a pair, bit 4 the pair */
                    const __m256i rel = _mm256_sub_epi32(idx[k], at);
                    const __m256i b3 = _mm256_cmpeq_epi32(_mm256_and_si256(rel, eight), eight);
                    const __m256i b4 = _mm256_cmpeq_epi32(_mm256_and_si256(rel, sixteen), sixteen);
                    const __m256i n01 = _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(q_n[0], rel),
                                                           _mm256_permutevar8x32_epi32(q_n[1], rel), b3);
                    const __m256 s01 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(q_s[0], rel),
                                                        _mm256_permutevar8x32_ps(q_s[1], rel),
                                                        _mm256_castsi256_ps(b3));
                    if (width > 16) {
                        const __m256i n23 = _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(q_n[2], rel),
                                                               _mm256_permutevar8x32_epi32(q_n[3], rel), b3);
                        const __m256 s23 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(q_s[2], rel),
                                                            _mm256_permutevar8x32_ps(q_s[3], rel),
                                                            _mm256_castsi256_ps(b3));
                        n = _mm256_blendv_epi8(n01, n23, b4);
                        s = _mm256_blendv_ps(s01, s23, _mm256_castsi256_ps(b4));
                    } else {
                        n = n01;
                        s = s01;
                    }
                } else {
                    n = _mm256_i32gather_epi32(nd, idx[k], 4);
                    s = _mm256_i32gather_ps(th, idx[k], 4);
                }
                _Static_assert(B == 32, "a feature's column starts at feature * 32");
                const __m256i col = _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(n, low31), 5), lane[k]);
                const __m256 v = _mm256_i32gather_ps(xb, col, 4);
                const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(v, s, _CMP_LT_OQ));
                const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                const __m256i dleft = _mm256_srai_epi32(n, 31);
                /* right (all ones) = not (lt or nan), or nan and not default-left */
                const __m256i right = _mm256_or_si256(
                    _mm256_andnot_si256(_mm256_or_si256(lt, nan), _mm256_set1_epi32(-1)),
                    _mm256_andnot_si256(dleft, nan));
                /* 2i + 1 + right, where right is -1 or 0 */
                idx[k] = _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32(idx[k], 1), one), right);
            }
        }
        for (int k = 0; k < nv; k++)
            sum[k] = _mm256_add_ps(sum[k], _mm256_i32gather_ps(lv, _mm256_sub_epi32(idx[k], n_in), 4));
    }
    float all[B];
    for (int k = 0; k < nv; k++) _mm256_storeu_ps(all + 8 * k, sum[k]);
    for (Py_ssize_t r = 0; r < nb; r++) acc[r] = all[r];
}
#endif

typedef void (*block_fn)(Py_ssize_t, Py_ssize_t, int, const uint32_t *, const float *, const float *, float,
                         float *, const float *);
static block_fn walk = block_plain;

static PyObject *predict(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer bx = {0}, bn = {0}, bt = {0}, bl = {0}, bo = {0};
    Py_ssize_t n_cols;
    int depth;
    double base_prob;
    if (!PyArg_ParseTuple(args, "y*niy*y*y*dw*", &bx, &n_cols, &depth, &bn, &bt, &bl, &base_prob, &bo))
        return NULL;
    PyObject *result = NULL;
    float *xb = NULL;
    const Py_ssize_t n_rows = n_cols > 0 ? bx.len / 4 / n_cols : 0;
    const Py_ssize_t n_inner = depth >= 0 && depth <= MAX_DEPTH ? ((Py_ssize_t)1 << depth) - 1 : -1;
    const Py_ssize_t n_trees = n_inner > 0 ? bn.len / 4 / n_inner : 0;
    if (n_cols <= 0 || n_inner <= 0 || bx.len != n_rows * n_cols * 4 || bn.len != n_trees * n_inner * 4 ||
        bt.len != bn.len || bl.len != n_trees * (n_inner + 1) * 4 || bo.len != n_rows * 4) {
        PyErr_SetString(PyExc_ValueError, "predict: buffer sizes do not match");
        goto done;
    }
    const uint32_t *nodes = bn.buf;
    for (Py_ssize_t k = 0; k < n_trees * n_inner; k++)
        if ((Py_ssize_t)(nodes[k] & 0x7FFFFFFFu) >= n_cols) {
            PyErr_SetString(PyExc_ValueError, "predict: a node's feature is beyond the row's columns");
            goto done;
        }
    xb = PyMem_Malloc((size_t)n_cols * B * sizeof *xb);
    if (!xb) {
        PyErr_NoMemory();
        goto done;
    }
    const float p = (float)base_prob;
    const float base = -logf(1.0f / p - 1.0f);
    const float *x = bx.buf;
    float *out = bo.buf;
    Py_BEGIN_ALLOW_THREADS
    float acc[B];
    for (Py_ssize_t r0 = 0; r0 < n_rows; r0 += B) {
        const Py_ssize_t nb = n_rows - r0 < B ? n_rows - r0 : B;
        load_block(x + r0 * n_cols, nb, n_cols, xb);
        walk(nb, n_trees, depth, nodes, bt.buf, bl.buf, base, acc, xb);
        for (Py_ssize_t r = 0; r < nb; r++) {
            const float m = acc[r];
            /* XGBoost's sigmoid: the exponent capped at 88.7 (expf's float range), then 1 / (e + 1 + 1e-16) */
            out[r0 + r] = 1.0f / (expf(fminf(-m, 88.7f)) + 1.0f + 1e-16f);
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(xb);
    if (bx.obj) PyBuffer_Release(&bx);
    if (bn.obj) PyBuffer_Release(&bn);
    if (bt.obj) PyBuffer_Release(&bt);
    if (bl.obj) PyBuffer_Release(&bl);
    if (bo.obj) PyBuffer_Release(&bo);
    return result;
}

/* plain(flag): use the one-row-at-a-time walk even where AVX2 runs (for the test that compares the two). */
static PyObject *plain(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    walk = block_plain;
#ifdef HAVE_AVX2_PATH
    if (!on && __builtin_cpu_supports("avx2")) walk = block_avx2;
#endif
    return PyBool_FromLong(walk == block_plain);
}

static PyMethodDef methods[] = {
    {"predict", predict, METH_VARARGS, "A gbtree model's outputs for float32 rows, as XGBoost computes them."},
    {"plain", plain, METH_O, "plain(True): walk one row at a time; plain(False): AVX2 where the CPU has it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_forest", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__forest(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) walk = block_avx2;
#endif
    return PyModule_Create(&module);
}
