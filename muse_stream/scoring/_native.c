/* The compiled half of the event contract's hot path (muse_stream/scoring/native.py loads it).
 *
 * scan(): a batch of raw event values -> columns: event ids, (tenant, intent) pair codes, event times and a
 * dense float64 feature matrix over the batch's feature names, with a presence matrix. It accepts only the
 * plain, common shape of an event and answers "not sure" (pair code -1) for anything else, which then goes
 * through the Python contract (contract.parse_event) on its own. Plain means: an object of ASCII keys and
 * string values without escapes or control characters; event_time an integer in [0, 2^62]; intent a plain
 * string or null; features an object of distinct plain keys whose values are null, integers of at most 15
 * digits (exact in a double) or decimal numbers read with a correctly rounded conversion; other top-level
 * keys (at most 16, each named once) with a plain scalar value. Whatever orjson would read differently, or
 * refuse, is never in that set, so both paths agree by construction on what the scanner accepts.
 *
 * With a tuple of field names, scan() also returns, per name, each accepted row's value of that top-level field
 * (entity state reads its entity and aggregate fields there instead of parsing every event again).
 *
 * decisions(): the decision bytes of a tenant's rows from the template pieces the scorer prepares, the same
 * bytes as the Python loop in scorer.py writes (tests/scoring/test_native_equivalence.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>
#if defined(__GLIBC__)
#include <locale.h>
static locale_t c_locale;  /* strtod_l with "C": a decimal point whatever LC_NUMERIC the process set */
#endif

/* The batch's feature names are capped, so the dense matrix stays small whatever keys events carry (a row
 * that would pass the cap goes the Python way): at most MAX_COLUMNS, and at most MAX_CELLS cells in all. */
#define MAX_COLUMNS 1024
#define MAX_CELLS (4 * 1024 * 1024)
#define MAX_EVENT_TIME (1LL << 62)

/* ---- a batch's feature names: an open-addressing table of byte strings -> column index ---------------- */

typedef struct { char *s; Py_ssize_t n; uint64_t h; } Name;
typedef struct { Name *names; Py_ssize_t count, cap; int32_t *slots; Py_ssize_t nslots; } Table;

static uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;  /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ULL; }
    return h;
}

static void table_free(Table *t) {
    for (Py_ssize_t i = 0; i < t->count; i++) PyMem_Free(t->names[i].s);
    PyMem_Free(t->names); PyMem_Free(t->slots);
    memset(t, 0, sizeof *t);
}

static int table_grow(Table *t) {
    Py_ssize_t ns = t->nslots ? t->nslots * 2 : 64;
    int32_t *slots = PyMem_Malloc(ns * sizeof *slots);
    if (!slots) return -1;
    for (Py_ssize_t i = 0; i < ns; i++) slots[i] = -1;
    for (Py_ssize_t k = 0; k < t->count; k++) {
        Py_ssize_t j = t->names[k].h & (ns - 1);
        while (slots[j] >= 0) j = (j + 1) & (ns - 1);
        slots[j] = (int32_t)k;
    }
    PyMem_Free(t->slots); t->slots = slots; t->nslots = ns;
    return 0;
}

/* The index of name s[0:n], added when new (up to `limit` names); -1 over the limit, -2 out of memory. */
static Py_ssize_t table_index(Table *t, const char *s, Py_ssize_t n, Py_ssize_t limit) {
    uint64_t h = hash_bytes(s, n);
    if (t->nslots) {
        Py_ssize_t j = h & (t->nslots - 1);
        for (; t->slots[j] >= 0; j = (j + 1) & (t->nslots - 1)) {
            Name *e = &t->names[t->slots[j]];
            if (e->h == h && e->n == n && memcmp(e->s, s, n) == 0) return t->slots[j];
        }
    }
    if (t->count >= limit) return -1;
    if ((t->count + 1) * 2 > t->nslots && table_grow(t) < 0) return -2;
    if (t->count == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 32;
        Name *names = PyMem_Realloc(t->names, cap * sizeof *names);
        if (!names) return -2;
        t->names = names; t->cap = cap;
    }
    char *copy = PyMem_Malloc(n ? n : 1);
    if (!copy) return -2;
    memcpy(copy, s, n);
    t->names[t->count] = (Name){copy, n, h};
    Py_ssize_t j = h & (t->nslots - 1);
    while (t->slots[j] >= 0) j = (j + 1) & (t->nslots - 1);
    t->slots[j] = (int32_t)t->count;
    return t->count++;
}

/* Forget the names added since the table held `keep`: the newest ones, so no name left was placed after them
 * in a probe sequence and clearing their slots breaks no chain. */
static void table_truncate(Table *t, Py_ssize_t keep) {
    for (Py_ssize_t k = t->count - 1; k >= keep; k--) {
        Py_ssize_t j = t->names[k].h & (t->nslots - 1);
        while (t->slots[j] != k) j = (j + 1) & (t->nslots - 1);
        t->slots[j] = -1;
        PyMem_Free(t->names[k].s);
    }
    if (keep < t->count) t->count = keep;
}

/* ---- the plain-JSON reader ------------------------------------------------------------------------------ */

typedef struct { const char *p, *end; } Cur;

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static inline int expect(Cur *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) { c->p++; return 1; }
    return 0;
}

/* A string of printable ASCII without escapes: its bytes are its text and its own JSON encoding. */
static int plain_string(Cur *c, const char **s, Py_ssize_t *n) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *q = c->p + 1;
    while (q < c->end) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"') break;
        if (ch < 0x20 || ch >= 0x7f || ch == '\\') return 0;
        q++;
    }
    if (q >= c->end) return 0;
    *s = c->p + 1; *n = q - (c->p + 1); c->p = q + 1;
    return 1;
}

static int literal(Cur *c, const char *word, Py_ssize_t n) {
    skip_ws(c);
    if (c->end - c->p >= n && memcmp(c->p, word, n) == 0) { c->p += n; return 1; }
    return 0;
}

#define DIGIT(ch) ((unsigned char)((ch) - '0') <= 9)

static const uint64_t POW10_U64[] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
    100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL,
    100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
    1000000000000000000ULL, 10000000000000000000ULL};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* Eight digits at a time (most numbers carry 16-17): a byte is a digit when its high nibble is 3 and adding 6
 * does not carry out of its low nibble. */
static inline uint64_t load8(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline int eight_digits(uint64_t v) {
    return (v & 0xF0F0F0F0F0F0F0F0ULL) == 0x3030303030303030ULL
        && ((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) == 0x3030303030303030ULL;
}
/* The value of eight digit bytes (the first byte the most significant digit): pairs, then fours, then eight. */
static inline uint64_t eight_value(uint64_t v) {
    v -= 0x3030303030303030ULL;
    v = (v * 10 + (v >> 8)) & 0x00FF00FF00FF00FFULL;
    v = (v * 100 + (v >> 16)) & 0x0000FFFF0000FFFFULL;
    return (v * 10000 + (v >> 32)) & 0xFFFFFFFFULL;
}
#define SWAR 1
#else
#define SWAR 0
#endif

static inline const char *skip_digits(const char *p, const char *end) {
#if SWAR
    while (end - p >= 8 && eight_digits(load8(p))) p += 8;
#endif
    while (p < end && DIGIT(*p)) p++;
    return p;
}

/* The value of n <= 19 digits. */
static inline uint64_t digits_value(const char *s, int n) {
    uint64_t m = 0;
#if SWAR
    for (; n >= 8; s += 8, n -= 8) m = m * 100000000ULL + eight_value(load8(s));
#endif
    for (; n > 0; n--) m = m * 10 + (uint64_t)(*s++ - '0');
    return m;
}

static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#if LDBL_MANT_DIG == 64 && (defined(__x86_64__) || defined(__i386__))
/* The same idea one step wider, for the 16-19 significant digits that shortest round-trip text carries:
 * m < 10^19 and 10^|e10| (e10 <= 27) are exact in x87's 64-bit mantissa, so m * 10^e10 is rounded once, to
 * 64 bits. Rounding that to double's 53 bits is then the correctly rounded double unless the 11 bits it drops
 * lie within one unit of the half-way pattern (0x400): only there can the first rounding have crossed a
 * midpoint between two doubles. Those few, and every other platform, take strtod. */
static int extended(uint64_t m, int e10, double *out) {
    static const long double p10[28] = {1e0L, 1e1L, 1e2L, 1e3L, 1e4L, 1e5L, 1e6L, 1e7L, 1e8L, 1e9L, 1e10L,
        1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L, 1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L,
        1e26L, 1e27L};  /* each exact: 5^27 < 2^64 */
    long double r = e10 >= 0 ? (long double)m * p10[e10] : (long double)m / p10[-e10];
    uint64_t mant;
    memcpy(&mant, &r, sizeof mant);  /* x87 layout: the explicit 64-bit mantissa comes first */
    uint64_t low = mant & 0x7ff;
    if (low >= 0x3ff && low <= 0x401) return 0;
    *out = (double)r;
    return 1;
}
#else
static int extended(uint64_t m, int e10, double *out) { (void)m; (void)e10; (void)out; return 0; }
#endif

enum { NUM_NO = 0, NUM_INT = 1, NUM_FLOAT = 2 };

/* A JSON number. NUM_INT: an integer of at most 19 digits that fits in int64, in *iv (a "-0" is 0, as orjson reads it).
 * NUM_FLOAT: a number with a fraction or an exponent, correctly rounded into *dv, finite and normal or an
 * exact zero. NUM_NO: anything else (more digits, an overflow or underflow, not a number): not sure. */
static int number(Cur *c, long long *iv, double *dv, int *int_digits) {
    skip_ws(c);
    const char *start = c->p, *p = c->p, *end = c->end;
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    const char *ip = p;
    p = skip_digits(p, end);
    int ilen = (int)(p - ip);
    if (ilen == 0 || (ilen > 1 && *ip == '0')) return NUM_NO;  /* no digit, or a leading zero */
    const char *fp = p;
    int flen = 0, is_int = 1;
    if (p < end && *p == '.') {
        is_int = 0;
        fp = ++p;
        p = skip_digits(p, end);
        flen = (int)(p - fp);
        if (flen == 0) return NUM_NO;
    }
    int exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0; p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) { eneg = *p == '-'; p++; }
        const char *ep = p;
        while (p < end && DIGIT(*p)) { exp = exp * 10 + (*p - '0'); p++; if (p - ep > 4) return NUM_NO; }
        if (p == ep) return NUM_NO;
        if (eneg) exp = -exp;
    }
    if (is_int) {
        if (ilen > 19) return NUM_NO;
        uint64_t m = digits_value(ip, ilen);  /* 19 digits fit: < 10^19 < 2^64 */
        if (m > (uint64_t)LLONG_MAX) return NUM_NO;
        *iv = neg ? -(long long)m : (long long)m;  /* "-0" is the integer 0, as orjson reads it */
        *int_digits = ilen;
        c->p = p;
        return NUM_INT;
    }
    /* The significant digits: the integer part's (none for "0"), then the fraction's, leading zeros of a
     * number below 1 skipped (they only scale). */
    int n_int = (ilen == 1 && *ip == '0') ? 0 : ilen;
    const char *fs = fp;
    int fl = flen;
    if (n_int == 0) while (fl && *fs == '0') { fs++; fl--; }
    int sig = n_int + fl;
    uint64_t m = 0;
    if (sig <= 19) m = digits_value(ip, n_int) * POW10_U64[fl] + digits_value(fs, fl);
    int nonzero = sig > 0;  /* the first significant digit is never a zero */
    double v;
    int e10 = exp - flen;
    if (sig <= 15 && e10 >= -22 && e10 <= 22) {
        /* Clinger's fast path: m and 10^|e10| are exact doubles, so one multiply or divide rounds once. */
        v = e10 >= 0 ? (double)m * POW10[e10] : (double)m / POW10[-e10];
    } else if (!(sig <= 19 && e10 >= -27 && e10 <= 27 && extended(m, e10, &v))) {
        char buf[64];
        Py_ssize_t len = p - start - neg;  /* the magnitude: the sign is applied once, below */
        if (len >= (Py_ssize_t)sizeof buf) return NUM_NO;
        memcpy(buf, start + neg, len); buf[len] = 0;
#if defined(__GLIBC__)
        v = strtod_l(buf, NULL, c_locale);  /* glibc's strtod rounds correctly */
#else
        char *stop = NULL;
        v = PyOS_string_to_double(buf, &stop, NULL);  /* Python's own correctly rounded dtoa */
        if (v == -1.0 && PyErr_Occurred()) { PyErr_Clear(); return NUM_NO; }
#endif
    }
    if (neg) v = -v;
    if (isinf(v) || isnan(v)) return NUM_NO;
    if (v == 0.0 ? nonzero : fabs(v) < DBL_MIN) return NUM_NO;  /* an underflow: leave it to orjson */
    *dv = v;
    c->p = p;
    return NUM_FLOAT;
}

/* ---- scan ----------------------------------------------------------------------------------------------- */

typedef struct {
    Table columns, pairs;
    int32_t *fcol; double *fval; Py_ssize_t fcount, fcap;  /* the (column, value) of every accepted feature */
    Py_ssize_t *row_start;                                 /* per row: where its features start in fcol */
    int32_t *col_row;                                      /* per column: the last row that set it */
    Py_ssize_t col_row_cap;
    int32_t at[64];  /* the column of the key at each position in the previous row: events repeat their shape */
    Py_ssize_t max_columns;
} Scan;

static int push_feature(Scan *s, int32_t col, double v) {
    if (s->fcount == s->fcap) {
        Py_ssize_t cap = s->fcap ? s->fcap * 2 : 4096;
        int32_t *c = PyMem_Realloc(s->fcol, cap * sizeof *c);
        if (!c) return -1;
        s->fcol = c;
        double *d = PyMem_Realloc(s->fval, cap * sizeof *d);
        if (!d) return -1;
        s->fval = d; s->fcap = cap;
    }
    s->fcol[s->fcount] = col; s->fval[s->fcount] = v; s->fcount++;
    return 0;
}

/* The features object of row `row`: 1 accepted, 0 not sure, -1 out of memory. */
static int scan_features(Scan *s, Cur *c, Py_ssize_t row) {
    if (!expect(c, '{')) return 0;
    if (expect(c, '}')) return 1;
    for (int pos = 0;; pos++) {
        const char *k; Py_ssize_t kn;
        if (!plain_string(c, &k, &kn) || !expect(c, ':')) return 0;
        Py_ssize_t col = pos < 64 ? s->at[pos] : -1;
        if (col < 0 || s->columns.names[col].n != kn || memcmp(s->columns.names[col].s, k, kn) != 0) {
            col = table_index(&s->columns, k, kn, s->max_columns);
            if (col == -2) return -1;
            if (col < 0) return 0;
            if (pos < 64) s->at[pos] = (int32_t)col;
        }
        if (col >= s->col_row_cap) {
            Py_ssize_t cap = MAX_COLUMNS;
            int32_t *cr = PyMem_Realloc(s->col_row, cap * sizeof *cr);
            if (!cr) return -1;
            for (Py_ssize_t i = s->col_row_cap; i < cap; i++) cr[i] = -1;
            s->col_row = cr; s->col_row_cap = cap;
        }
        if (s->col_row[col] == row) return 0;  /* a duplicate key: orjson keeps the last; not our shape */
        s->col_row[col] = (int32_t)row;
        long long iv; double dv; int nd;
        double v;
        if (literal(c, "null", 4)) v = Py_NAN;
        else {
            int kind = number(c, &iv, &dv, &nd);
            if (kind == NUM_INT) { if (nd > 15) return 0; v = (double)iv; }
            else if (kind == NUM_FLOAT) v = dv;
            else return 0;
        }
        if (push_feature(s, (int32_t)col, v) < 0) return -1;
        if (expect(c, ',')) continue;
        return expect(c, '}');
    }
}

enum { K_EID = 1, K_TID = 2, K_INTENT = 4, K_TIME = 8, K_FEATS = 16 };

typedef struct { const char *eid, *tid, *intent; Py_ssize_t eid_n, tid_n, intent_n; long long time; } Head;
#define MAX_OTHER 16  /* top-level fields besides the contract's that an event may carry and still be scanned */

/* Top-level fields besides the contract's whose values the caller asked for (entity state reads them): per
 * name, what this row holds. A value is one of the plain scalars the scanner accepts, so it reads as orjson
 * reads it: a plain string, null, true, false, an int64 integer, or a correctly rounded double. */
#define MAX_CAPTURE 16
enum { CAP_ABSENT = 0, CAP_STR, CAP_NULL, CAP_TRUE, CAP_FALSE, CAP_INT, CAP_FLOAT };
typedef struct { int kind; const char *s; Py_ssize_t n; long long iv; double dv; } Held;
typedef struct {
    int count; const char *name[MAX_CAPTURE]; Py_ssize_t name_n[MAX_CAPTURE];
    Held held[MAX_CAPTURE];
} Capture;

/* A plain scalar at c (the value of a top-level field the contract does not read) into *v; 0 if not plain. */
static int plain_scalar(Cur *c, Held *v) {
    long long iv; double dv; int nd;
    if (plain_string(c, &v->s, &v->n)) { v->kind = CAP_STR; return 1; }
    if (literal(c, "null", 4)) { v->kind = CAP_NULL; return 1; }
    if (literal(c, "true", 4)) { v->kind = CAP_TRUE; return 1; }
    if (literal(c, "false", 5)) { v->kind = CAP_FALSE; return 1; }
    switch (number(c, &iv, &dv, &nd)) {
    case NUM_INT: v->kind = CAP_INT; v->iv = iv; return 1;
    case NUM_FLOAT: v->kind = CAP_FLOAT; v->dv = dv; return 1;
    default: return 0;
    }
}

/* One event: 1 accepted (its head in *h, its features pushed), 0 not sure, -1 out of memory. */
static int scan_event(Scan *s, const char *buf, Py_ssize_t len, Py_ssize_t row, Head *h, Capture *cap) {
    Cur c = {buf, buf + len};
    int seen = 0, n_other = 0;
    for (int j = 0; j < cap->count; j++) cap->held[j].kind = CAP_ABSENT;
    const char *other[MAX_OTHER]; Py_ssize_t other_n[MAX_OTHER];  /* the fields the contract does not read */
    h->intent = NULL; h->intent_n = 0;
    if (!expect(&c, '{')) return 0;
    for (;;) {
        const char *k; Py_ssize_t kn;
        if (!plain_string(&c, &k, &kn) || !expect(&c, ':')) return 0;
        int key = 0;
        if (kn == 8 && memcmp(k, "event_id", 8) == 0) key = K_EID;
        else if (kn == 9 && memcmp(k, "tenant_id", 9) == 0) key = K_TID;
        else if (kn == 6 && memcmp(k, "intent", 6) == 0) key = K_INTENT;
        else if (kn == 10 && memcmp(k, "event_time", 10) == 0) key = K_TIME;
        else if (kn == 8 && memcmp(k, "features", 8) == 0) key = K_FEATS;
        if (key & seen) return 0;  /* a duplicate field: orjson keeps the last; not our shape */
        seen |= key;
        long long iv; double dv; int nd;
        switch (key) {
        case K_EID:
            if (!plain_string(&c, &h->eid, &h->eid_n) || h->eid_n == 0) return 0;
            break;
        case K_TID:
            if (!plain_string(&c, &h->tid, &h->tid_n)) return 0;
            break;
        case K_INTENT:
            if (!literal(&c, "null", 4) && !plain_string(&c, &h->intent, &h->intent_n)) return 0;
            break;
        case K_TIME:
            if (number(&c, &iv, &dv, &nd) != NUM_INT || iv < 0 || iv > MAX_EVENT_TIME) return 0;
            h->time = iv;
            break;
        case K_FEATS: {
            int r = scan_features(s, &c, row);
            if (r <= 0) return r;
            break;
        }
        default: {  /* a field the contract does not read: a plain scalar, else not sure */
            /* Named twice (the contract refuses it, as ambiguous), or too many to check: not sure. */
            if (n_other == MAX_OTHER) return 0;
            for (int j = 0; j < n_other; j++)
                if (other_n[j] == kn && memcmp(other[j], k, kn) == 0) return 0;
            other[n_other] = k; other_n[n_other++] = kn;
            Held v, *into = &v;
            for (int j = 0; j < cap->count; j++)
                if (cap->name_n[j] == kn && memcmp(cap->name[j], k, kn) == 0) { into = &cap->held[j]; break; }
            if (!plain_scalar(&c, into)) return 0;
        }
        }
        if (expect(&c, ',')) continue;
        if (!expect(&c, '}')) return 0;
        break;
    }
    skip_ws(&c);
    if (c.p != c.end) return 0;  /* trailing bytes: malformed to orjson */
    return (seen & (K_EID | K_TID | K_TIME | K_FEATS)) == (K_EID | K_TID | K_TIME | K_FEATS);
}

static PyObject *ascii_str(const char *s, Py_ssize_t n) { return PyUnicode_DecodeASCII(s, n, NULL); }

/* The (tenant, intent) pair key: tenant bytes, a separator no plain string holds, intent bytes or nothing. */
static Py_ssize_t pair_code(Scan *s, const Head *h, char **tmp, Py_ssize_t *tmp_cap) {
    Py_ssize_t n = h->tid_n + 1 + (h->intent ? 1 + h->intent_n : 0);
    if (n > *tmp_cap) {
        char *t = PyMem_Realloc(*tmp, n);
        if (!t) return -2;
        *tmp = t; *tmp_cap = n;
    }
    char *t = *tmp;
    memcpy(t, h->tid, h->tid_n);
    t[h->tid_n] = '\n';  /* a control character: never inside a plain string */
    if (h->intent) { t[h->tid_n + 1] = '\n'; memcpy(t + h->tid_n + 2, h->intent, h->intent_n); }
    return table_index(&s->pairs, t, n, PY_SSIZE_T_MAX);
}

/* A captured value as the Python object orjson gives for it (`absent`: not a top-level field of the row). */
static PyObject *held_object(const Held *v, PyObject *absent) {
    switch (v->kind) {
    case CAP_STR: return ascii_str(v->s, v->n);
    case CAP_NULL: return Py_NewRef(Py_None);
    case CAP_TRUE: return Py_NewRef(Py_True);
    case CAP_FALSE: return Py_NewRef(Py_False);
    case CAP_INT: return PyLong_FromLongLong(v->iv);
    case CAP_FLOAT: return PyFloat_FromDouble(v->dv);
    default: return Py_NewRef(absent);
    }
}

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *values, *names_in = NULL, *absent = Py_None; Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!n|O!O", &PyList_Type, &values, &max_bytes, &PyTuple_Type, &names_in, &absent))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    Capture cap; cap.count = 0;
    PyObject *captured = PyList_New(0);
    if (!captured) return NULL;
    if (names_in) {
        Py_ssize_t k = PyTuple_GET_SIZE(names_in);
        if (k > MAX_CAPTURE) {
            Py_DECREF(captured);
            return PyErr_Format(PyExc_ValueError, "at most %d fields can be captured", MAX_CAPTURE);
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *name = PyTuple_GET_ITEM(names_in, j), *col = NULL;
            if (!PyUnicode_Check(name) || !PyUnicode_IS_ASCII(name)) {
                Py_DECREF(captured);
                PyErr_SetString(PyExc_TypeError, "captured field names must be ASCII strings");
                return NULL;
            }
            cap.name[j] = PyUnicode_AsUTF8AndSize(name, &cap.name_n[j]);  /* borrowed: names_in holds it */
            if (!cap.name[j] || !(col = PyList_New(n)) || PyList_Append(captured, col) < 0) {
                Py_XDECREF(col); Py_DECREF(captured);
                return NULL;
            }
            for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(col, i, Py_NewRef(Py_None));
            Py_DECREF(col);
            cap.count++;
        }
    }
    Scan s; memset(&s, 0, sizeof s);
    for (int i = 0; i < 64; i++) s.at[i] = -1;
    s.max_columns = n ? MAX_CELLS / n : MAX_COLUMNS;
    if (s.max_columns > MAX_COLUMNS) s.max_columns = MAX_COLUMNS;
    if (s.max_columns < 64) s.max_columns = 64;
    PyObject *eids = PyList_New(n), *pairs = PyList_New(0), *columns = NULL, *result = NULL;
    PyObject *codes_b = PyByteArray_FromStringAndSize(NULL, n * sizeof(int32_t));
    PyObject *times_b = PyByteArray_FromStringAndSize(NULL, n * sizeof(int64_t));
    PyObject *x_b = NULL, *p_b = NULL;
    s.row_start = PyMem_Malloc((n + 1) * sizeof *s.row_start);
    char *tmp = NULL; Py_ssize_t tmp_cap = 0;
    if (!eids || !pairs || !codes_b || !times_b || !s.row_start) goto fail;
    int32_t *codes = (int32_t *)PyByteArray_AS_STRING(codes_b);
    int64_t *times = (int64_t *)PyByteArray_AS_STRING(times_b);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        Head h;
        int ok = 0;
        s.row_start[i] = s.fcount;
        Py_ssize_t ncols = s.columns.count;
        if (PyBytes_Check(v) && PyBytes_GET_SIZE(v) > 0 && PyBytes_GET_SIZE(v) <= max_bytes) {
            ok = scan_event(&s, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), i, &h, &cap);
            if (ok < 0) goto nomem;
        }
        for (int j = 0; ok && j < cap.count; j++) {
            PyObject *o = held_object(&cap.held[j], absent);
            if (!o) goto fail;
            PyList_SetItem(PyList_GET_ITEM(captured, j), i, o);  /* steals o, drops the None placeholder */
        }
        PyObject *eid = Py_None;
        codes[i] = -1; times[i] = 0;
        if (ok) {
            Py_ssize_t code = pair_code(&s, &h, &tmp, &tmp_cap);
            if (code == -2) goto nomem;
            if (code == PyList_GET_SIZE(pairs)) {  /* a new pair: its (tenant_id, intent) as Python strings */
                PyObject *tid = ascii_str(h.tid, h.tid_n);
                PyObject *intent = h.intent ? ascii_str(h.intent, h.intent_n) : Py_NewRef(Py_None);
                PyObject *pair = (tid && intent) ? PyTuple_Pack(2, tid, intent) : NULL;
                Py_XDECREF(tid); Py_XDECREF(intent);
                if (!pair || PyList_Append(pairs, pair) < 0) { Py_XDECREF(pair); goto fail; }
                Py_DECREF(pair);
            }
            if (!(eid = ascii_str(h.eid, h.eid_n))) goto fail;
            codes[i] = (int32_t)code; times[i] = h.time;
        } else {
            /* Drop what a not-sure row added: its values, and the names only it carried (so a row of junk
             * keys cannot use up the batch's names and send the rows after it the Python way). */
            s.fcount = s.row_start[i];
            if (s.columns.count > ncols) {
                for (Py_ssize_t j = ncols; j < s.columns.count; j++) s.col_row[j] = -1;
                for (int p = 0; p < 64; p++) if (s.at[p] >= ncols) s.at[p] = -1;
                table_truncate(&s.columns, ncols);
            }
            Py_INCREF(eid);
        }
        PyList_SET_ITEM(eids, i, eid);
    }
    s.row_start[n] = s.fcount;
    Py_ssize_t k = s.columns.count;
    if (!(columns = PyList_New(k))) goto fail;
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *name = ascii_str(s.columns.names[j].s, s.columns.names[j].n);
        if (!name) goto fail;
        PyList_SET_ITEM(columns, j, name);
    }
    x_b = PyByteArray_FromStringAndSize(NULL, n * k * sizeof(double));
    p_b = PyByteArray_FromStringAndSize(NULL, n * k);
    if (!x_b || !p_b) goto fail;
    double *x = (double *)PyByteArray_AS_STRING(x_b);
    char *present = PyByteArray_AS_STRING(p_b);
    for (Py_ssize_t i = 0; i < n * k; i++) x[i] = Py_NAN;
    memset(present, 0, n * k);
    for (Py_ssize_t i = 0; i < n; i++) {
        for (Py_ssize_t f = s.row_start[i]; f < s.row_start[i + 1]; f++) {
            x[i * k + s.fcol[f]] = s.fval[f];
            present[i * k + s.fcol[f]] = 1;
        }
    }
    result = names_in ? PyTuple_Pack(8, eids, codes_b, pairs, times_b, columns, x_b, p_b, captured)
                      : PyTuple_Pack(7, eids, codes_b, pairs, times_b, columns, x_b, p_b);
    goto done;
nomem:
    PyErr_NoMemory();
fail:
done:
    Py_XDECREF(eids); Py_XDECREF(pairs); Py_XDECREF(codes_b); Py_XDECREF(times_b);
    Py_XDECREF(columns); Py_XDECREF(x_b); Py_XDECREF(p_b); Py_DECREF(captured);
    table_free(&s.columns); table_free(&s.pairs);
    PyMem_Free(s.fcol); PyMem_Free(s.fval); PyMem_Free(s.row_start); PyMem_Free(s.col_row); PyMem_Free(tmp);
    return result;
}

/* ---- decisions ------------------------------------------------------------------------------------------ */

typedef struct { char *b; Py_ssize_t n, cap; } Buf;

static int put(Buf *b, const char *s, Py_ssize_t n) {
    if (b->n + n > b->cap) {
        Py_ssize_t cap = (b->n + n) * 2;
        char *nb = PyMem_Realloc(b->b, cap);
        if (!nb) { PyErr_NoMemory(); return -1; }
        b->b = nb; b->cap = cap;
    }
    memcpy(b->b + b->n, s, n); b->n += n;
    return 0;
}

static int put_bytes(Buf *b, PyObject *o) {
    if (!PyBytes_Check(o)) { PyErr_SetString(PyExc_TypeError, "a decision piece is not bytes"); return -1; }
    return put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
}

static int put_ll(Buf *b, PyObject *o) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    char t[32];
    return put(b, t, snprintf(t, sizeof t, "%lld", v));
}

static PyObject *s_topic, *s_partition, *s_offset, *s_timestamp;

/* A message's four accessors. Messages of a type without instance dicts (confluent_kafka.Message) have their
 * methods looked up once per call of decisions() and called directly; any other type by name, per message. */
typedef struct { PyTypeObject *type; PyObject *meth[4]; } Accessors;

static void accessors_init(Accessors *a, PyObject *m) {
    PyObject *names[4] = {s_topic, s_partition, s_offset, s_timestamp};
    a->type = NULL;
    if (Py_TYPE(m)->tp_dictoffset != 0) return;
    for (int k = 0; k < 4; k++) {
        a->meth[k] = PyObject_GetAttr((PyObject *)Py_TYPE(m), names[k]);
        if (!a->meth[k]) {
            PyErr_Clear();
            for (int j = 0; j < k; j++) Py_DECREF(a->meth[j]);
            return;
        }
    }
    a->type = Py_TYPE(m);
}

static void accessors_clear(Accessors *a) {
    if (a->type) for (int k = 0; k < 4; k++) Py_DECREF(a->meth[k]);
    a->type = NULL;
}

static PyObject *call0(Accessors *a, PyObject *m, int k) {
    static PyObject **names[4] = {&s_topic, &s_partition, &s_offset, &s_timestamp};
    if (Py_TYPE(m) == a->type) return PyObject_Vectorcall(a->meth[k], &m, 1, NULL);
    return PyObject_CallMethodNoArgs(m, *names[k]);
}

/* An event id's JSON: quoted as is when no character needs an escape (orjson escapes only '"', '\\' and
 * controls), else whatever `dumps` gives. */
static int put_eid(Buf *b, PyObject *eid, PyObject *dumps) {
    if (PyUnicode_Check(eid) && PyUnicode_IS_ASCII(eid)) {
        const char *s = (const char *)PyUnicode_DATA(eid);
        Py_ssize_t n = PyUnicode_GET_LENGTH(eid), i = 0;
        while (i < n && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\') i++;
        if (i == n) return put(b, "\"", 1) || put(b, s, n) || put(b, "\"", 1) ? -1 : 0;
    }
    PyObject *j = PyObject_CallOneArg(dumps, eid);
    if (!j) return -1;
    int r = put_bytes(b, j);
    Py_DECREF(j);
    return r;
}

#define LIT(b, s) put((b), (s), sizeof(s) - 1)

static PyObject *decisions(PyObject *self, PyObject *args) {
    PyObject *out, *topic, *rows, *msgs, *eids, *head, *s_json, *r_json, *band_json, *mid, *times, *decided,
        *topics, *dumps;
    if (!PyArg_ParseTuple(args, "O!OO!O!O!SO!O!O!SO!SO!O", &PyList_Type, &out, &topic, &PyList_Type, &rows,
                          &PyList_Type, &msgs, &PyList_Type, &eids, &head, &PyList_Type, &s_json, &PyList_Type,
                          &r_json, &PyList_Type, &band_json, &mid, &PyList_Type, &times, &decided, &PyDict_Type,
                          &topics, &dumps))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (PyList_GET_SIZE(s_json) < n || PyList_GET_SIZE(r_json) < n || PyList_GET_SIZE(band_json) < n) {
        PyErr_SetString(PyExc_ValueError, "fewer formatted values than rows");
        return NULL;
    }
    Buf b = {NULL, 0, 0};
    Accessors acc = {NULL, {NULL}};
    if (n && PyList_GET_SIZE(msgs)) accessors_init(&acc, PyList_GET_ITEM(msgs, 0));
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(rows, j));
        if (i == -1 && PyErr_Occurred()) goto fail;
        if (i < 0 || i >= PyList_GET_SIZE(msgs) || i >= PyList_GET_SIZE(eids) || i >= PyList_GET_SIZE(times)) {
            PyErr_SetString(PyExc_IndexError, "row out of range");
            goto fail;
        }
        /* Owned for the row: the message's methods are Python code in a stand-in and could change the lists. */
        PyObject *m = Py_NewRef(PyList_GET_ITEM(msgs, i)), *eid = Py_NewRef(PyList_GET_ITEM(eids, i));
        PyObject *when = Py_NewRef(PyList_GET_ITEM(times, i));
        PyObject *mt = NULL, *part = NULL, *off = NULL, *ts = NULL, *key = NULL, *value = NULL, *item = NULL;
        b.n = 0;
        if (!(mt = call0(&acc, m, 0))) goto row_fail;
        PyObject *tj = PyDict_GetItemWithError(topics, mt);  /* borrowed */
        if (!tj) {
            if (PyErr_Occurred() || !(tj = PyObject_CallOneArg(dumps, mt))) goto row_fail;
            int r = PyDict_SetItem(topics, mt, tj);
            Py_DECREF(tj);  /* the dict holds it */
            if (r < 0) goto row_fail;
        }
        if (LIT(&b, "{\"event_id\":") || put_eid(&b, eid, dumps) || put_bytes(&b, head)
            || put_bytes(&b, PyList_GET_ITEM(s_json, j)) || LIT(&b, ",\"raw_score\":")
            || put_bytes(&b, PyList_GET_ITEM(r_json, j)) || LIT(&b, ",\"band\":")
            || put_bytes(&b, PyList_GET_ITEM(band_json, j)) || put_bytes(&b, mid) || LIT(&b, ",\"event_time\":")
            || put_ll(&b, when) || put_bytes(&b, decided) || put_bytes(&b, tj))
            goto row_fail;
        if (!(part = call0(&acc, m, 1)) || !(off = call0(&acc, m, 2)) || !(ts = call0(&acc, m, 3)))
            goto row_fail;
        if (!PyTuple_Check(ts) || PyTuple_GET_SIZE(ts) < 2) {
            PyErr_SetString(PyExc_TypeError, "timestamp() is not a (type, value) tuple");
            goto row_fail;
        }
        if (LIT(&b, ",\"partition\":") || put_ll(&b, part) || LIT(&b, ",\"offset\":") || put_ll(&b, off)
            || LIT(&b, ",\"timestamp\":") || put_ll(&b, PyTuple_GET_ITEM(ts, 1)) || LIT(&b, "}}"))
            goto row_fail;
        if (!(key = PyUnicode_AsUTF8String(eid)) || !(value = PyBytes_FromStringAndSize(b.b, b.n))
            || !(item = PyTuple_Pack(3, topic, key, value)) || PyList_Append(out, item) < 0)
            goto row_fail;
        Py_DECREF(mt); Py_DECREF(part); Py_DECREF(off); Py_DECREF(ts);
        Py_DECREF(key); Py_DECREF(value); Py_DECREF(item);
        Py_DECREF(m); Py_DECREF(eid); Py_DECREF(when);
        continue;
    row_fail:
        Py_XDECREF(mt); Py_XDECREF(part); Py_XDECREF(off); Py_XDECREF(ts);
        Py_XDECREF(key); Py_XDECREF(value); Py_XDECREF(item);
        Py_DECREF(m); Py_DECREF(eid); Py_DECREF(when);
        goto fail;
    }
    PyMem_Free(b.b);
    accessors_clear(&acc);
    Py_RETURN_NONE;
fail:
    PyMem_Free(b.b);
    accessors_clear(&acc);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(values, max_event_bytes[, capture, absent]) -> (eids, codes, pairs, times, columns, x, present"
     "[, captured]): a batch's plain events as columns; code -1 marks an event left to the Python contract. "
     "capture: a tuple of top-level field names besides the contract's; captured: per name, each row's value "
     "as orjson reads it, `absent` where the row has no such field (None for a row left to the contract)."},
    {"decisions", decisions, METH_VARARGS,
     "decisions(out, topic, rows, msgs, eids, head, s_json, r_json, band_json, mid, times, decided, topics, "
     "dumps): append each row's (topic, key, decision bytes) to out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
#if defined(__GLIBC__)
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
#endif
    if (!(s_topic = PyUnicode_InternFromString("topic")) || !(s_partition = PyUnicode_InternFromString("partition"))
        || !(s_offset = PyUnicode_InternFromString("offset"))
        || !(s_timestamp = PyUnicode_InternFromString("timestamp")))
        return NULL;
    return PyModule_Create(&module);
}
