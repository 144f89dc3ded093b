/* Reason codes' per-row work: exact path-dependent TreeSHAP contributions from precomputed leaf tables
 * (muse_stream/scoring/treeshap_tables.py builds them and says why they are exact; treeshap.py loads this).
 *
 * contribs(x, n_cols, out, max_nodes, trees, inner, leaves, leaf_features, leaf_ratios, values) -> None
 *
 * x: float32 rows (n_rows x n_cols, C order), NaN = missing; out: float64 (n_rows x n_cols), zeroed by the
 * caller and added to. Each internal node's direction passes its node's bit pattern to its children with the
 * bit of its path feature cleared for the child the row does not take, so a leaf's pattern H has bit i set when
 * the row follows the path at every node of its i-th unique feature. Then per leaf and path feature i: a hot feature
 * adds ratio_i * T[H - i], a cold one -T[H] (leaf_ratios holds the pair -1, ratio_i per path feature).
 * values (T) are float32, and a block's sums over all trees are float32 before they are added to out, as
 * XGBoost's own TreeSHAP computes in float: half the cache of float64 tables, and twice the values per gather.
 *
 * The records' indices are checked once when the tables are built (treeshap.check); here the buffers' sizes
 * are, so a call with mismatched arrays is refused rather than read out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The same layouts as the numpy dtypes TREE, INNER and LEAF in treeshap_tables.py. */
typedef struct { int64_t inner_lo, leaf_lo; } Tree;
typedef struct { int32_t node, left, right, feature; float threshold; uint8_t default_left, uidx, pad[2]; } Inner;
typedef struct { int64_t fptr, toff; int32_t node, d; } Leaf;

enum { X, OUT, TREES, INNER, LEAVES, LFEAT, LRATIO, VALS, NBUF };

/* Rows go through all trees in blocks of B, kept column-major inside the block (a feature's or a node's B
 * values side by side), so every step below is one operation over B rows that the compiler turns into
 * vector instructions: the split tests, the node patterns, and per leaf and path feature a gather from the
 * leaf's table and an addition into that feature's B sums. A block's rows are independent of each other,
 * and a tree's tables are read once per block. */
#define B 32

/* Built twice where the compiler can (GCC or Clang on x86-64): with AVX2, whose gathers do the table reads
 * eight at a time, and plain; the loader picks the one the CPU runs. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__INTEL_COMPILER)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

VECTOR_CLONES
static void add_block(const Tree *trees, Py_ssize_t n_trees, const Inner *inner, const Leaf *leaves,
                      const int32_t *lfeat, const double *lsign, const float *vals, const float *x, double *out,
                      Py_ssize_t nb, Py_ssize_t n_cols, uint32_t *pats, float *xb, float *ob) {
    for (Py_ssize_t f = 0; f < n_cols; f++)
        for (Py_ssize_t r = 0; r < B; r++) xb[f * B + r] = r < nb ? x[r * n_cols + f] : 0.0f;
    memset(ob, 0, sizeof(float) * (size_t)n_cols * B);
    /* A short last block works on its rows rounded up to a vector's eight, not on all B. */
    const int nv = (int)((nb + 7) & ~(Py_ssize_t)7);
    for (int r = 0; r < B; r++) pats[r] = 0xFFFFFFFFu;
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        const Tree *tr = trees + t;
        for (int64_t k = tr[0].inner_lo; k < tr[1].inner_lo; k++) {
            /* NaN takes the node's default, else x < threshold goes left, compared in float32 as XGBoost does;
             * the child the row does not take loses the bit of the node's path feature. Branch-free: which
             * way a row goes is data. */
            const Inner *n = inner + k;
            const float *restrict xv = xb + (Py_ssize_t)n->feature * B;
            const float thr = n->threshold;
            const uint32_t dl = n->default_left, bit = 1u << n->uidx;
            const uint32_t *restrict p = pats + (Py_ssize_t)n->node * B;
            uint32_t *restrict L = pats + (Py_ssize_t)n->left * B, *restrict R = pats + (Py_ssize_t)n->right * B;
            for (int r = 0; r < nv; r++) {
                float v = xv[r];
                uint32_t left = (uint32_t)(v < thr) | ((uint32_t)(v != v) & dl);
                L[r] = p[r] & ~(bit & (left - 1u));
                R[r] = p[r] & ~(bit & (0u - left));
            }
        }
        for (int64_t l = tr[0].leaf_lo; l < tr[1].leaf_lo; l++) {
            const Leaf *lf = leaves + l;
            const uint32_t mask = (1u << lf->d) - 1u;
            const float *restrict tv = vals + lf->toff;
            const double *sign = lsign + 2 * lf->fptr;
            const int32_t *f = lfeat + lf->fptr;
            const uint32_t *p = pats + (Py_ssize_t)lf->node * B;
            uint32_t h[B];
            for (int r = 0; r < nv; r++) h[r] = p[r] & mask;
            for (int32_t i = 0; i < lf->d; i++) {
                /* hot: ratio_i * T[h - i]; cold: -1 * T[h]; sign holds the pair (-1, ratio_i). */
                float *restrict o = ob + (Py_ssize_t)f[i] * B;
                const float cold = (float)sign[2 * i], diff = (float)(sign[2 * i + 1] - sign[2 * i]);
                const uint32_t bi = 1u << i;
#pragma GCC ivdep
                for (int r = 0; r < nv; r++) {
                    uint32_t hot = h[r] & bi;
                    o[r] += (cold + diff * (float)(hot >> i)) * tv[(int32_t)(h[r] ^ hot)];
                }
            }
        }
    }
    for (Py_ssize_t r = 0; r < nb; r++)
        for (Py_ssize_t f = 0; f < n_cols; f++) out[r * n_cols + f] += ob[f * B + r];
}

static PyObject *contribs(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b[NBUF];
    Py_ssize_t n_cols, max_nodes;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, "y*nw*ny*y*y*y*y*y*", &b[X], &n_cols, &b[OUT], &max_nodes, &b[TREES], &b[INNER],
                          &b[LEAVES], &b[LFEAT], &b[LRATIO], &b[VALS]))
        return NULL;
    PyObject *result = NULL;
    uint32_t *pat = NULL;
    Py_ssize_t n_rows = n_cols > 0 ? b[X].len / 4 / n_cols : 0;
    Py_ssize_t n_trees = (Py_ssize_t)(b[TREES].len / sizeof(Tree)) - 1;
    if (n_cols <= 0 || max_nodes <= 0 || n_trees < 0 || b[X].len != n_rows * n_cols * 4 ||
        b[OUT].len != n_rows * n_cols * 8 || b[TREES].len % sizeof(Tree) || b[INNER].len % sizeof(Inner) ||
        b[LEAVES].len % sizeof(Leaf) || b[LFEAT].len * 4 != b[LRATIO].len || b[VALS].len % 4) {
        PyErr_SetString(PyExc_ValueError, "contribs: buffer sizes do not match");
        goto done;
    }
    /* Scratch: B patterns per node, and the block's rows and sums column-major (the sums 64-byte aligned). */
    pat = PyMem_Malloc((size_t)max_nodes * B * sizeof *pat + (size_t)n_cols * B * 2 * sizeof(float)
                       + 64);
    if (!pat) {
        PyErr_NoMemory();
        goto done;
    }
    float *ob = (float *)(((uintptr_t)(pat + max_nodes * B) + 63) & ~(uintptr_t)63);
    float *xb = (float *)(ob + n_cols * B);
    const float *x = b[X].buf;
    double *out = b[OUT].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r0 = 0; r0 < n_rows; r0 += B)
        add_block(b[TREES].buf, n_trees, b[INNER].buf, b[LEAVES].buf, b[LFEAT].buf, b[LRATIO].buf, b[VALS].buf,
                  x + r0 * n_cols, out + r0 * n_cols, n_rows - r0 < B ? n_rows - r0 : B, n_cols, pat, xb, ob);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(pat);
    for (int i = 0; i < NBUF; i++)
        if (b[i].obj) PyBuffer_Release(&b[i]);
    return result;
}

/* top(contribs, n_cols, k, order, values) -> None: per row of float64 contributions, the k largest as float32,
 * largest first, ties by column order and NaN last, as numpy's stable argsort of the negated float32 values
 * orders them (reasons.top_features), written to order (int32, n_rows x k) and values (float32, n_rows x k). */
static PyObject *top(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer c = {0}, o = {0}, v = {0};
    Py_ssize_t n_cols, k;
    if (!PyArg_ParseTuple(args, "y*nnw*w*", &c, &n_cols, &k, &o, &v))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_rows = n_cols > 0 ? c.len / 8 / n_cols : 0;
    if (n_cols <= 0 || k <= 0 || k > n_cols || c.len != n_rows * n_cols * 8 || o.len != n_rows * k * 4 ||
        v.len != n_rows * k * 4 || n_cols > 4096) {
        PyErr_SetString(PyExc_ValueError, "top: buffer sizes do not match");
        goto done;
    }
    const double *cv = c.buf;
    int32_t *order = o.buf;
    float *values = v.buf;
    Py_BEGIN_ALLOW_THREADS
    unsigned char taken[4096];
    float row[4096];
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        for (Py_ssize_t j = 0; j < n_cols; j++) {
            row[j] = (float)cv[r * n_cols + j];
            taken[j] = 0;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            Py_ssize_t best = -1;
            for (Py_ssize_t j = 0; j < n_cols; j++) {
                if (taken[j]) continue;
                if (best < 0 || row[j] > row[best] || (isnan(row[best]) && !isnan(row[j]))) best = j;
            }
            taken[best] = 1;
            order[r * k + i] = (int32_t)best;
            values[r * k + i] = row[best];
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    if (c.obj) PyBuffer_Release(&c);
    if (o.obj) PyBuffer_Release(&o);
    if (v.obj) PyBuffer_Release(&v);
    return result;
}

static PyMethodDef methods[] = {
    {"contribs", contribs, METH_VARARGS, "Add exact TreeSHAP contributions of float32 rows from leaf tables."},
    {"top", top, METH_VARARGS, "The k largest contributions of each row, as float32, largest first."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_treeshap", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__treeshap(void) { return PyModule_Create(&module); }
