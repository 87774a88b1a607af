"""C source of the native CPU kernels, compiled on first use by `reltrust.optim._native`.

Kept as a Python string so that it ships inside the wheel like any module (setuptools packages
only .py files here).
"""

SOURCE = r"""/* reltrust CPU kernels: the fused passes of Fromage, LARS and LAMB over lists of float32 tensors.
 *
 * Plain C with OpenMP and no torch headers: `reltrust.optim._native` compiles it with the system C
 * compiler in a second or two, caches the shared library in the torch extensions directory, and
 * calls it through ctypes on the tensors' data pointers. In a process where torch is loaded, the
 * OpenMP runtime is torch's own (same SONAME, libgomp.so.1); the thread count is passed explicitly
 * (torch.get_num_threads()).
 *
 * Every entry point takes N tensors as arrays of data pointers and element counts. The work is cut
 * into spans of at most SPAN elements (a span never crosses a tensor boundary) and the spans are
 * split statically over the threads, so every thread streams through contiguous memory. A norm is
 * accumulated per span — in float32 FMA lanes over blocks of BLOCK elements, each block's lanes
 * summed in double — and the spans of a tensor are summed in order, in double: the result does not
 * depend on the thread count, and is at least as accurate as torch's float32 cascade sum. Norms come
 * out as float32, the dtype of torch's norms of float32 tensors.
 *
 * The elementwise update arithmetic follows the per-tensor torch reference op by op, in the same
 * order and with the same float32 scalars, and rounds where torch's vectorised CPU kernels round:
 * fmaf where they use a fused multiply-add (addcmul, add with alpha, lerp), separate operations
 * elsewhere (the build uses -ffp-contract=off). Fromage and LARS then agree with the torch path bit
 * for bit up to their norms; LAMB also differs where torch's sqrt (MKL's, within 1 ulp) is not
 * correctly rounded and sqrtf is.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#define SPAN 32768
#define BLOCK 1024
#define LANES 64

typedef struct {
    int32_t t; /* tensor index */
    int64_t lo, hi;
} span_t;

typedef struct {
    int64_t n;
    span_t *s;
} spans_t;

static spans_t make_spans(int n, const int64_t *sizes) {
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += (sizes[i] + SPAN - 1) / SPAN;
    spans_t out = {total, (span_t *)malloc(sizeof(span_t) * (size_t)(total > 0 ? total : 1))};
    int64_t k = 0;
    for (int i = 0; i < n; i++)
        for (int64_t lo = 0; lo < sizes[i]; lo += SPAN) {
            out.s[k].t = i;
            out.s[k].lo = lo;
            out.s[k].hi = lo + SPAN < sizes[i] ? lo + SPAN : sizes[i];
            k++;
        }
    return out;
}

static int threads_for(int64_t nspans, int requested) {
    if (requested < 1) requested = 1;
    if (nspans < 2) return 1;
    return nspans < requested ? (int)nspans : requested;
}

/* partial[s*k + j]: span s's sum of squares for output j → outs[j][t] = sqrt(Σ over t's spans). */
static void finish_norms(int n, spans_t sp, const double *partial, int k, float *const *outs) {
    double *acc = (double *)calloc((size_t)n * (size_t)k + 1, sizeof(double));
    for (int64_t s = 0; s < sp.n; s++)
        for (int j = 0; j < k; j++) acc[(int64_t)sp.s[s].t * k + j] += partial[s * k + j];
    for (int j = 0; j < k; j++)
        if (outs[j])
            for (int t = 0; t < n; t++) outs[j][t] = (float)sqrt(acc[(int64_t)t * k + j]);
    free(acc);
}

static double *new_partial(spans_t sp, int k) {
    return (double *)calloc((size_t)(sp.n > 0 ? sp.n : 1) * (size_t)k, sizeof(double));
}

/* Add a block's float32 lanes into double lanes (vectorised: no dependency between lanes). */
static inline void lanes_add(double *restrict d, const float *restrict a) {
    for (int j = 0; j < LANES; j++) d[j] += (double)a[j];
}

static inline double lanes_total(const double *d) {
    double s = 0;
    for (int j = 0; j < LANES; j++) s += d[j];
    return s;
}

/* NORM_LOOP(len, acc, STMT): run STMT for every index `i` in [0, len); STMT sets `float r`, whose
 * square is accumulated into the double `acc`: in float32 FMA lanes over each block of BLOCK
 * elements (16 terms per lane), the lanes then added into double lanes, summed once at the end. */
#define NORM_LOOP(len, acc, STMT)                                        \
    do {                                                                 \
        int64_t i0_ = 0;                                                 \
        double d_[LANES] = {0};                                          \
        for (; i0_ + BLOCK <= (len); i0_ += BLOCK) {                     \
            float a_[LANES] = {0};                                       \
            for (int b_ = 0; b_ < BLOCK; b_ += LANES)                    \
                for (int j_ = 0; j_ < LANES; j_++) {                     \
                    const int64_t i = i0_ + b_ + j_;                     \
                    float r;                                             \
                    STMT;                                                \
                    a_[j_] = fmaf(r, r, a_[j_]);                         \
                }                                                        \
            lanes_add(d_, a_);                                           \
        }                                                                \
        double t_ = lanes_total(d_);                                     \
        for (int64_t i = i0_; i < (len); i++) {                          \
            float r;                                                     \
            STMT;                                                        \
            t_ += (double)r * r;                                         \
        }                                                                \
        (acc) += t_;                                                     \
    } while (0)

#define PLAIN_LOOP(len, STMT)                                            \
    do {                                                                 \
        for (int64_t i = 0; i < (len); i++) {                            \
            float r;                                                     \
            STMT;                                                        \
            (void)r;                                                     \
        }                                                                \
    } while (0)

#define F(ptrs, sp) ((float *)(intptr_t)(ptrs)[(sp).t] + (sp).lo)

/* out[0] += Σa², out[1] += Σb² over [0, len): the norm loop with two read streams. */
static void sumsq2(const float *restrict a, const float *restrict b, int64_t len, double *out) {
    int64_t i0 = 0;
    double da[LANES] = {0}, db[LANES] = {0};
    for (; i0 + BLOCK <= len; i0 += BLOCK) {
        float x[LANES] = {0}, y[LANES] = {0};
        for (int k = 0; k < BLOCK; k += LANES)
            for (int j = 0; j < LANES; j++) {
                x[j] = fmaf(a[i0 + k + j], a[i0 + k + j], x[j]);
                y[j] = fmaf(b[i0 + k + j], b[i0 + k + j], y[j]);
            }
        lanes_add(da, x);
        lanes_add(db, y);
    }
    double sa = lanes_total(da), sb = lanes_total(db);
    for (int64_t i = i0; i < len; i++) {
        sa += (double)a[i] * a[i];
        sb += (double)b[i] * b[i];
    }
    out[0] += sa;
    out[1] += sb;
}

/* ---------------------------------------------------------------------------------------------- */
/* norms of k lists of N tensors (list j: ptrs[j*n + t]); outs[j]: float[n], or NULL to skip list j. */

int rt_norms(int n, int k, const int64_t *ptrs, const int64_t *sizes, float *const *outs, int nthreads) {
    spans_t sp = make_spans(n, sizes);
    double *partial = new_partial(sp, k);
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const int64_t len = x.hi - x.lo;
        int j = 0;
        for (; j + 2 <= k; j += 2) /* two lists in one loop: two concurrent read streams */
            sumsq2(F(ptrs + (int64_t)j * n, x), F(ptrs + (int64_t)(j + 1) * n, x), len, &partial[s * k + j]);
        for (; j < k; j++) {
            const float *restrict a = F(ptrs + (int64_t)j * n, x);
            double sa = 0;
            NORM_LOOP(len, sa, r = a[i]);
            partial[s * k + j] = sa;
        }
    }
    finish_norms(n, sp, partial, k, outs);
    free(partial);
    free(sp.s);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Fromage                                                                                         */

/* torch's lerp: self + w·(end − self) for |w| < 0.5, else end − (end − self)·(1 − w). */
static inline float lerp1(float self, float end, float w, int small) {
    return small ? fmaf(w, end - self, self) : fmaf(-(end - self), 1.0f - w, end);
}

/* m ← lerp(m, g, w), and the norms of p (if pnorm) and of the new m. */
int rt_lerp_norms(int n, const int64_t *p_ptrs, const int64_t *g_ptrs, const int64_t *m_ptrs,
                  const int64_t *sizes, float w, float *pnorm, float *mnorm, int nthreads) {
    spans_t sp = make_spans(n, sizes);
    double *partial = new_partial(sp, 2);
    const int small = fabsf(w) < 0.5f;
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const int64_t len = x.hi - x.lo;
        const float *restrict g = F(g_ptrs, x);
        float *restrict m = F(m_ptrs, x);
        double sm = 0, spn = 0;
        NORM_LOOP(len, sm, r = lerp1(m[i], g[i], w, small); m[i] = r);
        if (pnorm) {
            const float *restrict p = F(p_ptrs, x);
            NORM_LOOP(len, spn, r = p[i]);
        }
        partial[s * 2] = spn;
        partial[s * 2 + 1] = sm;
    }
    float *outs[2] = {pnorm, mnorm};
    finish_norms(n, sp, partial, 2, outs);
    free(partial);
    free(sp.s);
    return 0;
}

/* p ← (p + u·coef[t])·c ; newnorm (optional): ‖p‖ after the update. */
int rt_fromage_update(int n, const int64_t *p_ptrs, const int64_t *u_ptrs, const int64_t *sizes,
                      const float *coef, float c, float *newnorm, int nthreads) {
    spans_t sp = make_spans(n, sizes);
    double *partial = newnorm ? new_partial(sp, 1) : NULL;
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const int64_t len = x.hi - x.lo;
        float *restrict p = F(p_ptrs, x);
        const float *restrict u = F(u_ptrs, x);
        const float k = coef[x.t];
        if (partial) {
            double acc = 0;
            NORM_LOOP(len, acc, r = fmaf(u[i], k, p[i]) * c; p[i] = r);
            partial[s] = acc;
        } else {
            PLAIN_LOOP(len, r = fmaf(u[i], k, p[i]) * c; p[i] = r);
        }
    }
    if (partial) {
        float *outs[1] = {newnorm};
        finish_norms(n, sp, partial, 1, outs);
        free(partial);
    }
    free(sp.s);
    return 0;
}

/* p ← p·scale[t] for the tensors whose scale is not exactly 1 (multiplying by 1 is the identity). */
int rt_scale(int n, const int64_t *p_ptrs, const int64_t *sizes, const float *scale, int nthreads) {
    spans_t sp = make_spans(n, sizes);
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const float k = scale[x.t];
        if (k == 1.0f) continue;
        float *restrict p = F(p_ptrs, x);
        PLAIN_LOOP(x.hi - x.lo, r = p[i] * k; p[i] = r);
    }
    free(sp.s);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* LARS. Per tensor: gs = ±η·r (coefficient of g in v), ngs = −gs, wds = η·r·λ, shrink = 1 − η·r·λ.
 * mode 0 (no momentum):  p ← p·shrink (if decay);  p ← p + g·ngs
 * mode 1 (heavy ball):   v ← v·μ;  v ← v + g·gs;  v ← v + p·wds (if decay);  p ← p − v
 * mode 2 (Nesterov):     v as in mode 1;  p ← p·shrink (if decay);  p ← p + g·ngs;  p ← p − μ·v
 * newnorm (optional): ‖p‖ after the update.                                                        */

#define LARS_STMT(MODE, DECAY)                                           \
    {                                                                    \
        float pv = p[i];                                                 \
        if (MODE == 0) {                                                 \
            if (DECAY) pv = pv * a_shrink;                               \
            r = fmaf(g[i], a_ngs, pv);                                   \
        } else {                                                         \
            float vv = v[i] * momentum;                                  \
            vv = fmaf(g[i], a_gs, vv);                                   \
            if (DECAY) vv = fmaf(pv, a_wds, vv);                         \
            v[i] = vv;                                                   \
            if (MODE == 1) {                                             \
                r = pv - vv;                                             \
            } else {                                                     \
                if (DECAY) pv = pv * a_shrink;                           \
                pv = fmaf(g[i], a_ngs, pv);                              \
                r = fmaf(vv, nmu, pv);                                   \
            }                                                            \
        }                                                                \
        p[i] = r;                                                        \
    }

#define LARS_CASE(MODE, DECAY)                                           \
    if (mode == MODE && decay == DECAY) {                                \
        if (partial) {                                                   \
            double acc = 0;                                              \
            NORM_LOOP(len, acc, LARS_STMT(MODE, DECAY));                 \
            partial[s] = acc;                                            \
        } else {                                                         \
            PLAIN_LOOP(len, LARS_STMT(MODE, DECAY));                     \
        }                                                                \
    }

int rt_lars_update(int n, const int64_t *p_ptrs, const int64_t *g_ptrs, const int64_t *v_ptrs,
                   const int64_t *sizes, const float *gs, const float *ngs, const float *wds,
                   const float *shrink, float momentum, int mode, int decay, float *newnorm, int nthreads) {
    spans_t sp = make_spans(n, sizes);
    double *partial = newnorm ? new_partial(sp, 1) : NULL;
    const float nmu = -momentum;
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const int64_t len = x.hi - x.lo;
        float *restrict p = F(p_ptrs, x);
        const float *restrict g = F(g_ptrs, x);
        float *restrict v = mode ? F(v_ptrs, x) : NULL;
        const float a_gs = gs[x.t], a_ngs = ngs[x.t];
        const float a_wds = decay ? wds[x.t] : 0.0f, a_shrink = decay ? shrink[x.t] : 1.0f;
        LARS_CASE(0, 0) LARS_CASE(0, 1) LARS_CASE(1, 0) LARS_CASE(1, 1) LARS_CASE(2, 0) LARS_CASE(2, 1)
    }
    if (partial) {
        float *outs[1] = {newnorm};
        finish_norms(n, sp, partial, 1, outs);
        free(partial);
    }
    free(sp.s);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* LAMB. Per tensor t: b1 = 1 − β₁ᵗ, b2s = √(1 − β₂ᵗ).
 * u = m / ((√v / b2s + ε)·b1), negated if maximize, + λ·p (if decay): the reference's op order.
 * pass 1: v ← v·β₂ + (1−β₂)·g·g;  m ← lerp(m, g, 1−β₁);  norms of p and u (if pnorm/unorm).
 * pass 2: p ← p + u·coef[t] (u recomputed from the updated m and v).                              */

static inline float lamb_dir(float m, float v, float p, float b1, float b2s, float eps, float wd,
                             int maximize, int decay) {
    float d = sqrtf(v);
    d = d / b2s;
    d = d + eps;
    d = d * b1;
    float u = m / d;
    if (maximize) u = -u;
    if (decay) u = fmaf(p, wd, u);
    return u;
}

int rt_lamb_pass1(int n, const int64_t *p_ptrs, const int64_t *g_ptrs, const int64_t *m_ptrs,
                  const int64_t *v_ptrs, const int64_t *sizes, const float *b1, const float *b2s,
                  float w, float beta2, float cv, float eps, float wd, int maximize, float *pnorm,
                  float *unorm, int nthreads) {
    /* w = 1 − β₁ and cv = 1 − β₂ come rounded from double, as torch receives them */
    spans_t sp = make_spans(n, sizes);
    double *partial = new_partial(sp, 2);
    const int small = fabsf(w) < 0.5f, decay = wd != 0.0f;
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const int64_t len = x.hi - x.lo;
        const float *restrict p = F(p_ptrs, x);
        const float *restrict g = F(g_ptrs, x);
        float *restrict m = F(m_ptrs, x);
        float *restrict v = F(v_ptrs, x);
        const float a_b1 = b1[x.t], a_b2s = b2s[x.t];
        double su = 0, spn = 0;
#define LAMB1_MOMENTS                                                    \
    const float gi = g[i];                                               \
    float vi = v[i] * beta2;                                             \
    vi = fmaf(cv * gi, gi, vi);                                          \
    v[i] = vi;                                                           \
    const float mi = lerp1(m[i], gi, w, small);                          \
    m[i] = mi;
        if (unorm) {
            NORM_LOOP(len, su, LAMB1_MOMENTS r = lamb_dir(mi, vi, p[i], a_b1, a_b2s, eps, wd, maximize, decay));
        } else {
            PLAIN_LOOP(len, LAMB1_MOMENTS r = 0);
        }
#undef LAMB1_MOMENTS
        if (pnorm) NORM_LOOP(len, spn, r = p[i]);
        partial[s * 2] = spn;
        partial[s * 2 + 1] = su;
    }
    float *outs[2] = {pnorm, unorm};
    finish_norms(n, sp, partial, 2, outs);
    free(partial);
    free(sp.s);
    return 0;
}

int rt_lamb_pass2(int n, const int64_t *p_ptrs, const int64_t *m_ptrs, const int64_t *v_ptrs,
                  const int64_t *sizes, const float *b1, const float *b2s, float eps, float wd,
                  int maximize, const float *coef, int nthreads) {
    spans_t sp = make_spans(n, sizes);
    const int decay = wd != 0.0f;
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        float *restrict p = F(p_ptrs, x);
        const float *restrict m = F(m_ptrs, x);
        const float *restrict v = F(v_ptrs, x);
        const float a_b1 = b1[x.t], a_b2s = b2s[x.t], k = coef[x.t];
        PLAIN_LOOP(x.hi - x.lo, r = fmaf(lamb_dir(m[i], v[i], p[i], a_b1, a_b2s, eps, wd, maximize, decay), k, p[i]);
                   p[i] = r);
    }
    free(sp.s);
    return 0;
}

/* The step counters of LAMB (0-dim float32 tensors): *steps[t] += 1, out[t] = the new count. */
int rt_count_steps(int n, const int64_t *step_ptrs, float *out) {
    for (int t = 0; t < n; t++) {
        float *s = (float *)(intptr_t)step_ptrs[t];
        *s = *s + 1.0f;
        out[t] = *s;
    }
    return 0;
}

int rt_abi_version(void) { return 1; }
"""
