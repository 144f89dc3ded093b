/* Reason codes' per-row work: exact path-dependent TreeSHAP contributions from precomputed leaf tables
 * (muse_stream/scoring/treeshap_tables.py builds them and says why they are exact; treeshap.py loads this).
 *
 * contribs(x, n_cols, out, max_nodes, trees, inner, leaves, leaf_features, leaf_ratios, values) -> None
 *
 * x: float32 rows (n_rows x n_cols, C order), NaN = missing; out: float64 (n_rows x n_cols), zeroed by the
 * caller and added to. Tree by tree (a tree's tables stay in cache for all the batch's rows): each internal node's direction (NaN takes the node's default, else x < threshold goes left,
 * compared in float32 as XGBoost does) passes its node's bit pattern to its children with the bit of its path
 * feature cleared for the child the row does not take, so a leaf's pattern H has bit i set when the row
 * follows the path at every node of its i-th unique feature. Then per leaf and path feature i: a hot feature
 * adds ratio_i * T[H - i], a cold one -T[H] (leaf_ratios holds the pair -1, ratio_i per path feature).
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

/* Rows go through a tree in blocks: each row's node patterns first, then leaf by leaf for every row of the
 * block, so a leaf's table is read once per block and the rows' additions are independent of each other
 * (row by row, each leaf would wait on the previous leaf's addition to the same feature, the root's). */
#define ROW_BLOCK 32

static void add_tree(const Tree *tr, const Inner *inner, const Leaf *leaves, const int32_t *lfeat,
                     const double *lsign, const double *vals, const float *x, double *out, Py_ssize_t n_rows,
                     Py_ssize_t n_cols, Py_ssize_t max_nodes, uint32_t *pats) {
    for (Py_ssize_t r0 = 0; r0 < n_rows; r0 += ROW_BLOCK) {
        Py_ssize_t nb = n_rows - r0 < ROW_BLOCK ? n_rows - r0 : ROW_BLOCK;
        for (Py_ssize_t r = 0; r < nb; r++) {
            const float *xr = x + (r0 + r) * n_cols;
            uint32_t *pat = pats + r * max_nodes;
            pat[0] = 0xFFFFFFFFu;
            for (int64_t k = tr[0].inner_lo; k < tr[1].inner_lo; k++) {
                const Inner *n = inner + k;
                float v = xr[n->feature];
                /* Branch-free: which way a row goes is data, and a mispredicted branch costs more than the work. */
                uint32_t left = (uint32_t)(v < n->threshold) | ((uint32_t)(v != v) & n->default_left);
                uint32_t bit = 1u << n->uidx, p = pat[n->node];
                pat[n->left] = p & ~(bit & (left - 1u));
                pat[n->right] = p & ~(bit & (0u - left));
            }
        }
        for (int64_t l = tr[0].leaf_lo; l < tr[1].leaf_lo; l++) {
            const Leaf *lf = leaves + l;
            uint32_t mask = (1u << lf->d) - 1u;
            const double *t = vals + lf->toff, *sign = lsign + 2 * lf->fptr;
            const int32_t *f = lfeat + lf->fptr;
            for (Py_ssize_t r = 0; r < nb; r++) {
                uint32_t h = pats[r * max_nodes + lf->node] & mask;
                double *o = out + (r0 + r) * n_cols;
                for (int32_t i = 0; i < lf->d; i++) {
                    /* hot: ratio_i * T[h - i]; cold: -1 * T[h]; sign holds the pair (-1, ratio_i). */
                    uint32_t hot = (h >> i) & 1u;
                    o[f[i]] += sign[2 * i + hot] * t[h ^ ((1u << i) & (0u - hot))];
                }
            }
        }
    }
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
        b[LEAVES].len % sizeof(Leaf) || b[LFEAT].len * 4 != b[LRATIO].len) {
        PyErr_SetString(PyExc_ValueError, "contribs: buffer sizes do not match");
        goto done;
    }
    pat = PyMem_Malloc((size_t)max_nodes * ROW_BLOCK * sizeof *pat);
    if (!pat) {
        PyErr_NoMemory();
        goto done;
    }
    const Tree *trees = b[TREES].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < n_trees; t++)
        add_tree(trees + t, b[INNER].buf, b[LEAVES].buf, b[LFEAT].buf, b[LRATIO].buf, b[VALS].buf, b[X].buf,
                 b[OUT].buf, n_rows, n_cols, max_nodes, pat);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(pat);
    for (int i = 0; i < NBUF; i++)
        if (b[i].obj) PyBuffer_Release(&b[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"contribs", contribs, METH_VARARGS, "Add exact TreeSHAP contributions of float32 rows from leaf tables."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_treeshap", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__treeshap(void) { return PyModule_Create(&module); }
