/* reltrust CPU kernels: the fused passes of Fromage, LARS and LAMB over lists of float32 tensors.
 *
 * Plain C with OpenMP and no torch headers: `reltrust.optim._native` compiles it with the system C
 * compiler in a second or two, caches the shared library in the torch extensions directory, and
 * calls it through ctypes on the tensors' data pointers. In a process where torch is loaded, the
 * OpenMP runtime is torch's own (same SONAME, libgomp.so.1); the thread count is passed explicitly
 * (torch.get_num_threads()).
 *
 * Fromage, LARS and LAMB are one step: a norm pass (‖W‖ and ‖u‖ of every tensor, updating the
 * optimiser's state on the way), a per-tensor coefficient from the trust ratio, and an update pass.
 * The skeleton that schedules those passes is written once (`layerwise_t`, the drivers drive_*);
 * each optimiser contributes only its arithmetic — a norm pass and an update pass over one span of
 * one tensor, and its coefficients from the ratio — and one entry point, rt_<name>, that binds its
 * tensors and hyperparameters and runs the driver its `way` names (RT_* in kernels.h):
 *
 *   RT_NORMS, RT_UPDATE (streamed): all spans of all selected tensors split statically over the
 *     threads, one pass per call; between the norm pass and the update pass the caller turns norms
 *     into ratios (`reltrust.optim._ratio`, which also reduces the norms of sharded tensors) and
 *     passes them in. Every tensor is read from memory once per pass.
 *   RT_BLOCKED: for tensors small enough to stay in a core's L2 cache between the two passes: each
 *     thread takes whole tensors and does norm pass, trust ratio and update pass on one tensor
 *     before the next, so the update reads the tensor from cache, not memory. The ratio is computed
 *     here by `trust_ratio1`, the exact float32 twin of _ratio.trust_ratio (tests hold them equal);
 *     only for tensors whose norms need no reduction across shards.
 *   RT_GROUPED: the other unsharded tensors, group by group: all threads run the norm pass over a
 *     group, then update the spans they normed, from the shared cache (drive_grouped).
 *
 * Every entry point takes N tensors as arrays of data pointers and element counts, and `sel`, the
 * indices of the tensors it is to process (NULL: all N); outputs are float[N] arrays of which only
 * the selected entries are written. A tensor is cut into spans of at most SPAN elements. All ways
 * run the same span functions (span_*) in the same order, so they give identical bits.
 * A norm is accumulated per span — in float32 FMA lanes over blocks of BLOCK elements, each block's
 * lanes added into double lanes — and the spans of a tensor are summed in order, in double: the
 * result does not depend on the thread count or the schedule, and is at least as accurate as
 * torch's float32 cascade sum. Norms come out as float32, the dtype of torch's norms of float32
 * tensors.
 *
 * The elementwise update arithmetic follows the per-tensor torch reference op by op, in the same
 * order and with the same float32 scalars, and rounds where torch's vectorised CPU kernels round:
 * fmaf where they use a fused multiply-add (addcmul, add with alpha, lerp), separate operations
 * elsewhere (the build uses -ffp-contract=off). Fromage and LARS then agree with the torch path bit
 * for bit up to their norms. LAMB agrees to a few float32 roundings: its direction multiplies by
 * reciprocals where torch divides (see span_lamb1), and torch's sqrt (MKL's) is within 1 ulp where
 * sqrtf is correctly rounded.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#include "kernels.h"

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

#define SEL(k) (sel ? sel[k] : (k))
#define NSEL (sel ? nsel : n)

static spans_t make_spans(int n, const int64_t *sizes, const int32_t *sel, int nsel) {
    int64_t total = 0;
    for (int k = 0; k < NSEL; k++) total += (sizes[SEL(k)] + SPAN - 1) / SPAN;
    spans_t out = {total, (span_t *)malloc(sizeof(span_t) * (size_t)(total > 0 ? total : 1))};
    int64_t j = 0;
    for (int k = 0; k < NSEL; k++) {
        const int i = SEL(k);
        for (int64_t lo = 0; lo < sizes[i]; lo += SPAN) {
            out.s[j].t = i;
            out.s[j].lo = lo;
            out.s[j].hi = lo + SPAN < sizes[i] ? lo + SPAN : sizes[i];
            j++;
        }
    }
    return out;
}

static int threads_for(int64_t items, int requested) {
    if (requested < 1) requested = 1;
    if (items < 2) return 1;
    return items < requested ? (int)items : requested;
}

/* partial[s*k + j]: span s's sum of squares for output j → outs[j][t] = sqrt(Σ over t's spans),
 * for the selected tensors. */
static void finish_norms(int n, const int32_t *sel, int nsel, spans_t sp, const double *partial, int k,
                         float *const *outs) {
    double *acc = (double *)calloc((size_t)n * (size_t)k + 1, sizeof(double));
    for (int64_t s = 0; s < sp.n; s++)
        for (int j = 0; j < k; j++) acc[(int64_t)sp.s[s].t * k + j] += partial[s * k + j];
    for (int j = 0; j < k; j++)
        if (outs[j])
            for (int q = 0; q < NSEL; q++) outs[j][SEL(q)] = (float)sqrt(acc[(int64_t)SEL(q) * k + j]);
    free(acc);
}

static double *new_partial(spans_t sp, int k) {
    return (double *)calloc((size_t)(sp.n > 0 ? sp.n : 1) * (size_t)k, sizeof(double));
}

/* the element range [lo, hi) of tensor t's span number `s` (s = 0, 1, ...) */
#define SPAN_LO(s) ((int64_t)(s) * SPAN)
#define SPAN_LEN(size, s) ((size) - SPAN_LO(s) < SPAN ? (size) - SPAN_LO(s) : SPAN)
#define NSPANS(size) (((size) + SPAN - 1) / SPAN)

/* Contiguous ranges of the selected tensors per thread, balanced by element count (blocked way). */
static void thread_range(int n, const int32_t *sel, int nsel, const int64_t *sizes, int tid, int nth,
                         int *lo, int *hi) {
    int64_t total = 0;
    for (int k = 0; k < NSEL; k++) total += sizes[SEL(k)] + 64;
    int64_t cum = 0;
    *lo = NSEL;
    *hi = NSEL;
    for (int k = 0; k < NSEL; k++) {
        /* tensor k goes to the thread whose share contains the middle of the tensor */
        const int64_t mid = cum + (sizes[SEL(k)] + 64) / 2;
        const int owner = (int)((mid * nth) / (total > 0 ? total : 1));
        if (owner == tid && *lo == NSEL) *lo = k;
        if (owner > tid) {
            *hi = k;
            if (*lo == NSEL) *lo = k;
            return;
        }
        cum += sizes[SEL(k)] + 64;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* the norm loop                                                                                   */

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

/* NORM_LOOP2(len, acc1, acc2, STMT, AFTER): NORM_LOOP with two sums in one loop; STMT sets
 * `float r1, r2`, whose squares go into acc1 and acc2, each in its own lanes in NORM_LOOP's order (so
 * each sum has the bits NORM_LOOP would give it alone); AFTER runs once the squares are added — a
 * store back into an array STMT read from goes there: written inside STMT, before the FMAs, GCC 12
 * vectorised span_refresh's loop worse and it ran 2.8× slower (208 µs against 73 µs, 1 MB). */
#define NORM_LOOP2(len, acc1, acc2, STMT, AFTER)                         \
    do {                                                                 \
        int64_t i0_ = 0;                                                 \
        double d1_[LANES] = {0}, d2_[LANES] = {0};                       \
        for (; i0_ + BLOCK <= (len); i0_ += BLOCK) {                     \
            float a1_[LANES] = {0}, a2_[LANES] = {0};                    \
            for (int b_ = 0; b_ < BLOCK; b_ += LANES)                    \
                for (int j_ = 0; j_ < LANES; j_++) {                     \
                    const int64_t i = i0_ + b_ + j_;                     \
                    float r1, r2;                                        \
                    STMT;                                                \
                    a1_[j_] = fmaf(r1, r1, a1_[j_]);                     \
                    a2_[j_] = fmaf(r2, r2, a2_[j_]);                     \
                    AFTER;                                               \
                }                                                        \
            lanes_add(d1_, a1_);                                         \
            lanes_add(d2_, a2_);                                         \
        }                                                                \
        double t1_ = lanes_total(d1_), t2_ = lanes_total(d2_);           \
        for (int64_t i = i0_; i < (len); i++) {                          \
            float r1, r2;                                                \
            STMT;                                                        \
            t1_ += (double)r1 * r1;                                      \
            t2_ += (double)r2 * r2;                                      \
            AFTER;                                                       \
        }                                                                \
        (acc1) += t1_;                                                   \
        (acc2) += t2_;                                                   \
    } while (0)

#define PLAIN_LOOP(len, STMT)                                            \
    do {                                                                 \
        for (int64_t i = 0; i < (len); i++) {                            \
            float r;                                                     \
            STMT;                                                        \
            (void)r;                                                     \
        }                                                                \
    } while (0)

#define PTR(ptrs, t, lo) ((float *)(intptr_t)(ptrs)[t] + (lo))

/* ---------------------------------------------------------------------------------------------- */
/* span functions every optimiser uses: one span of one tensor; each returns (adds) its sums of squares */

static double span_sumsq(const float *restrict a, int64_t len) {
    double s = 0;
    NORM_LOOP(len, s, r = a[i]);
    return s;
}

/* out[0] += Σa², out[1] += Σb²: the same loop with two read streams (same bits as span_sumsq). */
static void span_sumsq2(const float *restrict a, const float *restrict b, int64_t len, double *out) {
    NORM_LOOP2(len, out[0], out[1], r1 = a[i]; r2 = b[i], (void)0);
}

/* torch's lerp: self + w·(end − self) for |w| < 0.5, else end − (end − self)·(1 − w). */
static inline float lerp1(float self, float end, float w, int small) {
    return small ? fmaf(w, end - self, self) : fmaf(-(end - self), 1.0f - w, end);
}

/* m ← lerp(m, g, w); returns Σ m_new². */
static double span_lerp(float *restrict m, const float *restrict g, float w, int64_t len) {
    const int small = fabsf(w) < 0.5f;
    double s = 0;
    NORM_LOOP(len, s, r = lerp1(m[i], g[i], w, small); m[i] = r);
    return s;
}

/* The trust ratio of one tensor: the float32 twin of reltrust.optim._ratio.trust_ratio,
 *     κ‖W‖ / (‖u‖ + λ‖W‖ + ε), exactly 1 where ‖W‖ = 0 or ‖u‖ = 0, and NaN where either is NaN or
 * inf (so that the tensor's whole step is NaN), rounded as torch rounds it: ((u + λ·w) + ε), then
 * (κ·w) / that. */
typedef struct {
    float coefficient, weight_decay, eps;
} ratio_hp_t;

static inline float trust_ratio1(float w, float u, ratio_hp_t r) {
    if (!(isfinite(w) && isfinite(u))) return NAN;
    if (w == 0.0f || u == 0.0f) return 1.0f;
    float den = u;
    if (r.weight_decay != 0.0f || r.eps != 0.0f) den = (u + w * r.weight_decay) + r.eps;
    return r.coefficient != 1.0f ? (w * r.coefficient) / den : w / den;
}

typedef struct {
    spans_t sp;
    int ngroups;
    int64_t *gspan; /* group k: spans [gspan[k], gspan[k+1]) */
    int32_t *gsel;  /* group k: selected tensors q in [gsel[k], gsel[k+1]) */
    int64_t *tspan; /* selected tensor q: spans [tspan[q], tspan[q+1]) */
} groups_t;

/* This thread's share [*a, *b) of the spans [lo, hi): contiguous shares in thread order, the first
 * (hi - lo) % threads of them one span longer. The norm pass walks its share forward and the update
 * pass walks the same share BACKWARD, so that it starts on the spans the norm pass read last, which
 * are still cached: for a group larger than the cache, about a cache's worth of the second read
 * comes from cache instead of memory. */
static void my_share(int64_t lo, int64_t hi, int64_t *a, int64_t *b) {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num(), len = hi - lo;
    const int64_t q = len / nth, r = len % nth;
    *a = lo + tid * q + (tid < r ? tid : r);
    *b = *a + q + (tid < r ? 1 : 0);
}

static groups_t make_groups(int n, const int64_t *sizes, const int32_t *sel, int nsel, int64_t group_elems) {
    groups_t G;
    G.sp = make_spans(n, sizes, sel, nsel);
    G.tspan = (int64_t *)malloc(sizeof(int64_t) * (size_t)(NSEL + 1));
    G.gspan = (int64_t *)malloc(sizeof(int64_t) * (size_t)(NSEL + 1));
    G.gsel = (int32_t *)malloc(sizeof(int32_t) * (size_t)(NSEL + 1));
    int64_t s = 0, in_group = 0;
    G.ngroups = 0;
    for (int q = 0; q < NSEL; q++) {
        const int64_t size = sizes[SEL(q)];
        if (q == 0 || in_group + size > group_elems) { /* start a new group */
            G.gspan[G.ngroups] = s;
            G.gsel[G.ngroups] = q;
            G.ngroups++;
            in_group = 0;
        }
        in_group += size;
        G.tspan[q] = s;
        s += NSPANS(size);
    }
    G.tspan[NSEL] = s;
    G.gspan[G.ngroups] = s;
    G.gsel[G.ngroups] = NSEL;
    return G;
}

static void free_groups(groups_t *G) {
    free(G->sp.s);
    free(G->tspan);
    free(G->gspan);
    free(G->gsel);
}

/* Σ over selected tensor q's spans of partial[s*k + j], in span order (as finish_norms sums). */
static double tensor_sum(const groups_t *G, int q, const double *partial, int k, int j) {
    double acc = 0;
    for (int64_t s = G->tspan[q]; s < G->tspan[q + 1]; s++) acc += partial[s * k + j];
    return acc;
}

/* ---------------------------------------------------------------------------------------------- */
/* the layerwise step, written once                                                                */

/* A tensor's coefficients for the update pass (what each float means is the optimiser's). */
typedef struct {
    float k[4];
} coef_t;

/* One optimiser's arithmetic. An optimiser's own struct starts with a layerwise_t, so that its
 * functions get it back from the `o` they are handed.
 *   norms:  the norm pass over elements [lo, lo + len) of tensor t (updating the optimiser's state on
 *           the way): adds ΣW² to part[0] (if want_w) and Σu² to part[1] (if want_u); where `kept` is
 *           given (keeps_u), also writes u there for the update pass.
 *   coef:   tensor t's coefficients from its trust ratio r and its ‖u‖ (un).
 *   update: the update pass over the same elements; returns ΣW_new² if want, else 0. `kept`: the u
 *           the norm pass kept, or NULL (recompute it). */
typedef struct layerwise layerwise_t;
struct layerwise {
    ratio_hp_t rh; /* κ, λ, ε of the ratio the blocked and grouped ways compute */
    int keeps_u;   /* the update pass can take u from a buffer the norm pass fills */
    void (*norms)(const layerwise_t *o, int t, int64_t lo, int64_t len, int want_w, int want_u, double *part,
                  float *kept);
    coef_t (*coef)(const layerwise_t *o, int t, float r, float un);
    double (*update)(const layerwise_t *o, int t, int64_t lo, int64_t len, coef_t q, const float *kept, int want);
};

/* What every entry point is asked to do, besides its own tensors and hyperparameters (see run_way). */
typedef struct {
    int n;
    const int64_t *sizes;
    const int32_t *sel;
    int nsel;
    int64_t group_elems;
    const float *wnorm_in; /* blocked, grouped: known ‖W‖ (then W is not read for it), or NULL */
    const float *ratio_in; /* update: the tensors' trust ratios */
    const float *unorm_in; /* update: their ‖u‖ (NULL: taken as nonzero) */
    float *wnorm, *unorm;  /* out: ‖W‖ and ‖u‖ (norms: either may be NULL, then not taken) */
    float *newnorm;        /* out (optional): ‖W‖ after the update */
    int nthreads;
} job_t;

/* blocked: whole small tensors per thread, norm pass, ratio and update pass back to back. */
static int drive_blocked(const layerwise_t *o, const job_t *j) {
    const int n = j->n, nsel = j->nsel;
    const int32_t *sel = j->sel;
    const int64_t *sizes = j->sizes;
    int64_t largest = 1;
    if (o->keeps_u)
        for (int q = 0; q < NSEL; q++)
            if (sizes[SEL(q)] > largest) largest = sizes[SEL(q)];
    const int nth = threads_for(NSEL, j->nthreads);
#pragma omp parallel num_threads(nth)
    {
        int lo, hi;
        thread_range(n, sel, nsel, sizes, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        float *kept = o->keeps_u ? (float *)malloc(sizeof(float) * (size_t)largest) : NULL;
        for (int q = lo; q < hi; q++) {
            const int t = SEL(q);
            const int64_t size = sizes[t], nsp = NSPANS(size);
            double sums[2] = {0, 0}; /* ‖W‖², ‖u‖² */
            for (int64_t s = 0; s < nsp; s++)
                o->norms(o, t, SPAN_LO(s), SPAN_LEN(size, s), !j->wnorm_in, 1, sums, kept ? kept + SPAN_LO(s) : NULL);
            const float wn = j->wnorm_in ? j->wnorm_in[t] : (float)sqrt(sums[0]), un = (float)sqrt(sums[1]);
            const coef_t k = o->coef(o, t, trust_ratio1(wn, un, o->rh), un);
            double nn = 0;
            for (int64_t s = 0; s < nsp; s++)
                nn += o->update(o, t, SPAN_LO(s), SPAN_LEN(size, s), k, kept ? kept + SPAN_LO(s) : NULL,
                                j->newnorm != NULL);
            j->wnorm[t] = wn;
            j->unorm[t] = un;
            if (j->newnorm) j->newnorm[t] = (float)sqrt(nn);
        }
        free(kept);
    }
    return 0;
}

/* grouped: the selected tensors in consecutive groups of about group_elems elements (a larger tensor
 * is a group of its own); for each group, all threads run the norm pass over its spans, one computes
 * the ratios, then each thread updates the spans it normed, last-read first (my_share), which the
 * caches still hold. Where the optimiser keeps u, it is kept in a buffer of group_elems floats for
 * the groups that fit in it (a tensor larger than a group is recomputed in the update pass). */
static int drive_grouped(const layerwise_t *o, const job_t *j) {
    const int n = j->n, nsel = j->nsel;
    const int32_t *sel = j->sel;
    const int64_t group_elems = j->group_elems;
    groups_t G = make_groups(n, j->sizes, sel, nsel, group_elems);
    double *partial = new_partial(G.sp, 2), *npart = new_partial(G.sp, 1);
    coef_t *coef = (coef_t *)malloc(sizeof(coef_t) * (size_t)(n > 0 ? n : 1));
    int64_t *offset = NULL; /* span s: where its u is kept, or -1 */
    float *kept = NULL;
    if (o->keeps_u) {
        offset = (int64_t *)malloc(sizeof(int64_t) * (size_t)(G.sp.n > 0 ? G.sp.n : 1));
        for (int k = 0; k < G.ngroups; k++) {
            int64_t at = 0;
            for (int64_t s = G.gspan[k]; s < G.gspan[k + 1]; s++) {
                offset[s] = at;
                at += G.sp.s[s].hi - G.sp.s[s].lo;
            }
            if (at > group_elems)
                for (int64_t s = G.gspan[k]; s < G.gspan[k + 1]; s++) offset[s] = -1;
        }
        kept = (float *)malloc(sizeof(float) * (size_t)(group_elems > 0 ? group_elems : 1));
    }
#define KEPT(s) (kept && offset[s] >= 0 ? kept + offset[s] : NULL)
#pragma omp parallel num_threads(threads_for(G.sp.n, j->nthreads))
    for (int k = 0; k < G.ngroups; k++) {
        int64_t a, b;
        my_share(G.gspan[k], G.gspan[k + 1], &a, &b);
        for (int64_t s = a; s < b; s++) {
            const span_t x = G.sp.s[s];
            o->norms(o, x.t, x.lo, x.hi - x.lo, !j->wnorm_in, 1, &partial[s * 2], KEPT(s));
        }
#pragma omp barrier
#pragma omp single
        for (int q = G.gsel[k]; q < G.gsel[k + 1]; q++) {
            const int t = SEL(q);
            const float wn = j->wnorm_in ? j->wnorm_in[t] : (float)sqrt(tensor_sum(&G, q, partial, 2, 0));
            const float un = (float)sqrt(tensor_sum(&G, q, partial, 2, 1));
            j->wnorm[t] = wn;
            j->unorm[t] = un;
            coef[t] = o->coef(o, t, trust_ratio1(wn, un, o->rh), un);
        }
        for (int64_t s = b - 1; s >= a; s--) {
            const span_t x = G.sp.s[s];
            npart[s] = o->update(o, x.t, x.lo, x.hi - x.lo, coef[x.t], KEPT(s), j->newnorm != NULL);
        }
        if (kept) {
#pragma omp barrier /* the next group's norm pass overwrites `kept` */
        }
    }
#undef KEPT
    if (j->newnorm) {
        float *outs[1] = {j->newnorm};
        finish_norms(n, sel, nsel, G.sp, npart, 1, outs);
    }
    free(kept);
    free(offset);
    free(coef);
    free(npart);
    free(partial);
    free_groups(&G);
    return 0;
}

/* streamed norm pass: ‖W‖ into wnorm and ‖u‖ into unorm, each where given. */
static int drive_norms(const layerwise_t *o, const job_t *j) {
    const int n = j->n, nsel = j->nsel;
    const int32_t *sel = j->sel;
    spans_t sp = make_spans(n, j->sizes, sel, nsel);
    double *partial = new_partial(sp, 2);
    const int want_w = j->wnorm != NULL, want_u = j->unorm != NULL;
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, j->nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        o->norms(o, x.t, x.lo, x.hi - x.lo, want_w, want_u, &partial[s * 2], NULL);
    }
    float *outs[2] = {j->wnorm, j->unorm};
    finish_norms(n, sel, nsel, sp, partial, 2, outs);
    free(partial);
    free(sp.s);
    return 0;
}

/* streamed update pass, with the coefficients from the ratios (and ‖u‖) the caller computed. */
static int drive_update(const layerwise_t *o, const job_t *j) {
    const int n = j->n, nsel = j->nsel;
    const int32_t *sel = j->sel;
    spans_t sp = make_spans(n, j->sizes, sel, nsel);
    double *partial = new_partial(sp, 1);
    coef_t *coef = (coef_t *)malloc(sizeof(coef_t) * (size_t)(n > 0 ? n : 1));
    for (int q = 0; q < NSEL; q++) {
        const int t = SEL(q);
        coef[t] = o->coef(o, t, j->ratio_in[t], j->unorm_in ? j->unorm_in[t] : 1.0f);
    }
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, j->nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        partial[s] = o->update(o, x.t, x.lo, x.hi - x.lo, coef[x.t], NULL, j->newnorm != NULL);
    }
    if (j->newnorm) {
        float *outs[1] = {j->newnorm};
        finish_norms(n, sel, nsel, sp, partial, 1, outs);
    }
    free(coef);
    free(partial);
    free(sp.s);
    return 0;
}

static int run_way(const layerwise_t *o, int way, const job_t *j) {
    switch (way) {
    case RT_BLOCKED: return drive_blocked(o, j);
    case RT_GROUPED: return drive_grouped(o, j);
    case RT_NORMS: return drive_norms(o, j);
    case RT_UPDATE: return drive_update(o, j);
    default: return -1;
    }
}

/* The arguments every layerwise entry point starts with, and the job_t they make. */
#define RT_JOB_ARGS                                                                                         \
    int way, int n, const int64_t *sizes, const int32_t *sel, int nsel, int64_t group_elems,                \
        const float *wnorm_in, const float *ratio_in, const float *unorm_in, float *wnorm, float *unorm,   \
        float *newnorm, int nthreads
#define RT_JOB {n, sizes, sel, nsel, group_elems, wnorm_in, ratio_in, unorm_in, wnorm, unorm, newnorm, nthreads}


/* ---------------------------------------------------------------------------------------------- */
/* Fromage: u = g, or m ← lerp(m, g, w) and u = m;  k = r·(∓η);  W ← (W + k·u)·c, with c = 1 for a  */
/* tensor whose ‖u‖ is exactly 0 (left as it is).                                                   */

/* p ← (p + u·k)·c; returns Σ p_new² if want, else 0. */
static double span_fromage(float *restrict p, const float *restrict u, float k, float c, int64_t len, int want) {
    double s = 0;
    if (want)
        NORM_LOOP(len, s, r = fmaf(u[i], k, p[i]) * c; p[i] = r);
    else
        PLAIN_LOOP(len, r = fmaf(u[i], k, p[i]) * c; p[i] = r);
    return s;
}

typedef struct {
    layerwise_t o;
    const int64_t *p, *g, *m; /* m NULL: no momentum */
    float w, lr_signed, c;
} fromage_t;

static void fromage_norms(const layerwise_t *o_, int t, int64_t lo, int64_t len, int want_w, int want_u,
                          double *part, float *kept) {
    const fromage_t *o = (const fromage_t *)o_;
    (void)kept;
    if (o->m) {
        part[1] += span_lerp(PTR(o->m, t, lo), PTR(o->g, t, lo), o->w, len);
        if (want_w) part[0] += span_sumsq(PTR(o->p, t, lo), len);
    } else if (want_w && want_u) {
        span_sumsq2(PTR(o->p, t, lo), PTR(o->g, t, lo), len, part);
    } else if (want_w) {
        part[0] += span_sumsq(PTR(o->p, t, lo), len);
    } else if (want_u) {
        part[1] += span_sumsq(PTR(o->g, t, lo), len);
    }
}

static coef_t fromage_coef(const layerwise_t *o_, int t, float r, float un) {
    const fromage_t *o = (const fromage_t *)o_;
    (void)t;
    const coef_t q = {{r * o->lr_signed, un == 0.0f ? 1.0f : o->c, 0.0f, 0.0f}};
    return q;
}

static double fromage_apply(const layerwise_t *o_, int t, int64_t lo, int64_t len, coef_t q, const float *kept,
                            int want) {
    const fromage_t *o = (const fromage_t *)o_;
    (void)kept;
    return span_fromage(PTR(o->p, t, lo), PTR(o->m ? o->m : o->g, t, lo), q.k[0], q.k[1], len, want);
}

int rt_fromage(RT_JOB_ARGS, const int64_t *p_ptrs, const int64_t *g_ptrs, const int64_t *m_ptrs, float w,
               float lr_signed, float c) {
    const fromage_t o = {{{1.0f, 0.0f, 0.0f}, 0, fromage_norms, fromage_coef, fromage_apply},
                         p_ptrs, g_ptrs, m_ptrs, w, lr_signed, c};
    const job_t j = RT_JOB;
    return run_way(&o.o, way, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* LARS                                                                                            */

/* LARS. Per tensor: gs = ±η·r (coefficient of g in v), ngs = −gs, wds = η·r·λ, shrink = 1 − η·r·λ.
 * mode 0 (no momentum):  p ← p·shrink (if decay);  p ← p + g·ngs
 * mode 1 (heavy ball):   v ← v·μ;  v ← v + g·gs;  v ← v + p·wds (if decay);  p ← p − v
 * mode 2 (Nesterov):     v as in mode 1;  p ← p·shrink (if decay);  p ← p + g·ngs;  p ← p − μ·v  */
typedef struct {
    float gs, ngs, wds, shrink;
} lars_coef_t;

#define LARS_STMT(MODE, DECAY)                                           \
    {                                                                    \
        float pv = p[i];                                                 \
        if (MODE == 0) {                                                 \
            if (DECAY) pv = pv * q.shrink;                               \
            r = fmaf(g[i], q.ngs, pv);                                   \
        } else {                                                         \
            float vv = v[i] * mu;                                        \
            vv = fmaf(g[i], q.gs, vv);                                   \
            if (DECAY) vv = fmaf(pv, q.wds, vv);                         \
            v[i] = vv;                                                   \
            if (MODE == 1) {                                             \
                r = pv - vv;                                             \
            } else {                                                     \
                if (DECAY) pv = pv * q.shrink;                           \
                pv = fmaf(g[i], q.ngs, pv);                              \
                r = fmaf(vv, -mu, pv);                                   \
            }                                                            \
        }                                                                \
        p[i] = r;                                                        \
    }

#define LARS_CASE(MODE, DECAY)                                           \
    if (mode == MODE && decay == DECAY) {                                \
        if (want)                                                        \
            NORM_LOOP(len, s, LARS_STMT(MODE, DECAY));                   \
        else                                                             \
            PLAIN_LOOP(len, LARS_STMT(MODE, DECAY));                     \
    }

static double span_lars(float *restrict p, const float *restrict g, float *restrict v, lars_coef_t q, float mu,
                        int mode, int decay, int64_t len, int want) {
    double s = 0;
    LARS_CASE(0, 0) LARS_CASE(0, 1) LARS_CASE(1, 0) LARS_CASE(1, 1) LARS_CASE(2, 0) LARS_CASE(2, 1)
    return s;
}
typedef struct {
    layerwise_t o;
    const int64_t *p, *g, *v; /* v NULL: no momentum */
    float lr, weight_decay, momentum;
    int maximize, mode, decay;
} lars_t;

static void lars_norms(const layerwise_t *o_, int t, int64_t lo, int64_t len, int want_w, int want_u, double *part,
                       float *kept) {
    const lars_t *o = (const lars_t *)o_;
    (void)kept;
    if (want_w && want_u)
        span_sumsq2(PTR(o->p, t, lo), PTR(o->g, t, lo), len, part);
    else if (want_w)
        part[0] += span_sumsq(PTR(o->p, t, lo), len);
    else if (want_u)
        part[1] += span_sumsq(PTR(o->g, t, lo), len);
}

/* step = r·η;  gs = ±step, ngs = −gs, wds = step·λ, shrink = 1 − wds */
static coef_t lars_coef(const layerwise_t *o_, int t, float r, float un) {
    const lars_t *o = (const lars_t *)o_;
    (void)t, (void)un;
    const float step = r * o->lr, gs = o->maximize ? -step : step, wds = step * o->weight_decay;
    const coef_t q = {{gs, -gs, wds, 1.0f - wds}};
    return q;
}

static double lars_apply(const layerwise_t *o_, int t, int64_t lo, int64_t len, coef_t q, const float *kept,
                         int want) {
    const lars_t *o = (const lars_t *)o_;
    (void)kept;
    const lars_coef_t c = {q.k[0], q.k[1], q.k[2], q.k[3]};
    return span_lars(PTR(o->p, t, lo), PTR(o->g, t, lo), o->mode ? PTR(o->v, t, lo) : NULL, c, o->momentum, o->mode,
                     o->decay, len, want);
}

int rt_lars(RT_JOB_ARGS, const int64_t *p_ptrs, const int64_t *g_ptrs, const int64_t *v_ptrs, float lr,
            float coefficient, float weight_decay, float eps, int maximize, float momentum, int nesterov) {
    const lars_t o = {{{coefficient, weight_decay, eps}, 0, lars_norms, lars_coef, lars_apply},
                      p_ptrs, g_ptrs, v_ptrs, lr, weight_decay, momentum, maximize,
                      v_ptrs ? (nesterov ? 2 : 1) : 0, weight_decay != 0.0f};
    const job_t j = RT_JOB;
    return run_way(&o.o, way, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* LAMB                                                                                            */

/* LAMB. Per tensor: b1 = 1 − β₁ᵗ, b2s = √(1 − β₂ᵗ).
 * u = m / ((√v / b2s + ε)·b1), negated if maximize, + λ·p (if decay). The reference divides twice
 * more per element; here the two divisions by per-tensor constants are multiplications by their
 * reciprocals, u = (m·(1/b1)) / (√v·(1/b2s) + ε), so LAMB agrees with torch to a few float32
 * roundings rather than bit for bit (a division is the costliest operation in the loop and LAMB
 * recomputes u in its second pass).
 * pass 1: v ← v·β₂ + (1−β₂)·g·g;  m ← lerp(m, g, 1−β₁);  Σu² (if want_u) and Σp² (if want_p).
 * pass 2: p ← p + u·coef (u recomputed from the updated m and v).
 * w = 1 − β₁ and cv = 1 − β₂ come rounded from double, as torch receives them. */
typedef struct {
    float w, beta2, cv, eps, wd;
    int maximize, decay;
} lamb_hp_t;

/* ib1 = 1/b1, ib2s = 1/b2s */
static inline float lamb_dir(float m, float v, float p, float ib1, float ib2s, const lamb_hp_t *h) {
    float u = (m * ib1) / fmaf(sqrtf(v), ib2s, h->eps);
    if (h->maximize) u = -u;
    if (h->decay) u = fmaf(p, h->wd, u);
    return u;
}

/* u_out (optional): where to keep u for pass 2 (span_lamb2_kept), which then need not recompute it. */
static void span_lamb1(const float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                       float b1, float b2s, lamb_hp_t h, int64_t len, int want_u, int want_p, double *out,
                       float *restrict u_out) {
    const int small = fabsf(h.w) < 0.5f;
    const float ib1 = 1.0f / b1, ib2s = 1.0f / b2s;
#define LAMB1_MOMENTS                                                    \
    const float gi = g[i];                                               \
    float vi = v[i] * h.beta2;                                           \
    vi = fmaf(h.cv * gi, gi, vi);                                        \
    v[i] = vi;                                                           \
    const float mi = lerp1(m[i], gi, h.w, small);                        \
    m[i] = mi;
    if (want_u && u_out)
        NORM_LOOP(len, out[1], LAMB1_MOMENTS r = lamb_dir(mi, vi, p[i], ib1, ib2s, &h); u_out[i] = r);
    else if (want_u)
        NORM_LOOP(len, out[1], LAMB1_MOMENTS r = lamb_dir(mi, vi, p[i], ib1, ib2s, &h));
    else
        PLAIN_LOOP(len, LAMB1_MOMENTS r = 0);
#undef LAMB1_MOMENTS
    if (want_p) out[0] += span_sumsq(p, len);
}

static void span_lamb2(float *restrict p, const float *restrict m, const float *restrict v, float b1, float b2s,
                       lamb_hp_t h, float k, int64_t len) {
    const float ib1 = 1.0f / b1, ib2s = 1.0f / b2s;
    PLAIN_LOOP(len, r = fmaf(lamb_dir(m[i], v[i], p[i], ib1, ib2s, &h), k, p[i]); p[i] = r);
}

/* pass 2 with the u that pass 1 kept: the same bits as span_lamb2, without a sqrt and a division. */
static void span_lamb2_kept(float *restrict p, const float *restrict u, float k, int64_t len) {
    PLAIN_LOOP(len, r = fmaf(u[i], k, p[i]); p[i] = r);
}
typedef struct {
    layerwise_t o;
    const int64_t *p, *g, *m, *v;
    const float *b1, *b2s; /* per tensor */
    lamb_hp_t h;
    float neg_lr;
} lamb_t;

static void lamb_norms(const layerwise_t *o_, int t, int64_t lo, int64_t len, int want_w, int want_u, double *part,
                       float *kept) {
    const lamb_t *o = (const lamb_t *)o_;
    span_lamb1(PTR(o->p, t, lo), PTR(o->g, t, lo), PTR(o->m, t, lo), PTR(o->v, t, lo), o->b1[t], o->b2s[t], o->h, len,
               want_u, want_w, part, kept);
}

static coef_t lamb_coef(const layerwise_t *o_, int t, float r, float un) {
    const lamb_t *o = (const lamb_t *)o_;
    (void)t, (void)un;
    const coef_t q = {{r * o->neg_lr, 0.0f, 0.0f, 0.0f}};
    return q;
}

static double lamb_apply(const layerwise_t *o_, int t, int64_t lo, int64_t len, coef_t q, const float *kept,
                         int want) {
    const lamb_t *o = (const lamb_t *)o_;
    (void)want; /* LAMB has no weight-norm cache */
    if (kept)
        span_lamb2_kept(PTR(o->p, t, lo), kept, q.k[0], len);
    else
        span_lamb2(PTR(o->p, t, lo), PTR(o->m, t, lo), PTR(o->v, t, lo), o->b1[t], o->b2s[t], o->h, q.k[0], len);
    return 0;
}

int rt_lamb(RT_JOB_ARGS, const int64_t *p_ptrs, const int64_t *g_ptrs, const int64_t *m_ptrs, const int64_t *v_ptrs,
            const float *b1, const float *b2s, float w, float beta2, float cv, float eps, float wd, int maximize,
            float neg_lr) {
    const lamb_t o = {{{1.0f, 0.0f, 0.0f}, 1, lamb_norms, lamb_coef, lamb_apply},
                      p_ptrs, g_ptrs, m_ptrs, v_ptrs, b1, b2s, {w, beta2, cv, eps, wd, maximize, wd != 0.0f}, neg_lr};
    const job_t j = RT_JOB;
    return run_way(&o.o, way, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* the other entry points: plain norms, the monitor's passes, rescaling, step counters            */

/* norms of k aligned lists of N tensors (list j: ptrs[j*n + t]); outs[j]: float[n], or NULL. */
int rt_norms(int n, int k, const int64_t *ptrs, const int64_t *sizes, const int32_t *sel, int nsel,
             float *const *outs, int nthreads) {
    spans_t sp = make_spans(n, sizes, sel, nsel);
    double *partial = new_partial(sp, k);
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const int64_t len = x.hi - x.lo;
        int j = 0;
        for (; j + 2 <= k; j += 2) /* two lists in one loop: two concurrent read streams */
            span_sumsq2(PTR(ptrs + (int64_t)j * n, x.t, x.lo), PTR(ptrs + (int64_t)(j + 1) * n, x.t, x.lo), len,
                        &partial[s * k + j]);
        for (; j < k; j++) partial[s * k + j] = span_sumsq(PTR(ptrs + (int64_t)j * n, x.t, x.lo), len);
    }
    finish_norms(n, sel, nsel, sp, partial, k, outs);
    free(partial);
    free(sp.s);
    return 0;
}

/* The training monitor's two passes (reltrust.trust.TrustMonitor): before a step, dst ← src with
 * ‖src‖ in the same pass; after it, ‖a − b‖ without writing the difference. */
static double span_copy_sumsq(float *restrict dst, const float *restrict src, int64_t len) {
    double s = 0;
    NORM_LOOP(len, s, r = src[i]; dst[i] = r);
    return s;
}

static double span_diff_sumsq(const float *restrict a, const float *restrict b, int64_t len) {
    double s = 0;
    NORM_LOOP(len, s, r = a[i] - b[i]);
    return s;
}

/* Both of the above in one loop: out[0] += ‖a − b‖², then b ← a and out[1] += ‖a‖², each sum in
 * its own lanes in the order of NORM_LOOP (so the same bits as span_diff_sumsq followed by
 * span_copy_sumsq), but a, b each read once, not twice. */
static void span_refresh(const float *restrict a, float *restrict b, int64_t len, double *out) {
    NORM_LOOP2(len, out[0], out[1], r2 = a[i]; r1 = r2 - b[i], b[i] = r2);
}

/* mode 0: dst ← src, norm[t] = ‖src_t‖;  mode 1: norm[t] = ‖dst_t − src_t‖ (nothing written). */
int rt_snapshot_norms(int n, int mode, const int64_t *dst_ptrs, const int64_t *src_ptrs, const int64_t *sizes,
                      float *norm, int nthreads) {
    spans_t sp = make_spans(n, sizes, NULL, 0);
    double *partial = new_partial(sp, 1);
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        partial[s] = mode == 0 ? span_copy_sumsq(PTR(dst_ptrs, x.t, x.lo), PTR(src_ptrs, x.t, x.lo), x.hi - x.lo)
                               : span_diff_sumsq(PTR(dst_ptrs, x.t, x.lo), PTR(src_ptrs, x.t, x.lo), x.hi - x.lo);
    }
    float *outs[1] = {norm};
    finish_norms(n, NULL, 0, sp, partial, 1, outs);
    free(partial);
    free(sp.s);
    return 0;
}


/* After a step, both of the monitor's passes in one pass over the weights while they are in cache:
 * diff[t] = ‖a_t − b_t‖, then b ← a with norm[t] = ‖a_t‖ (the next step's snapshot and weight norm).
 * The same sums as modes 1 and 0 above (span_refresh), so the same bits as those two calls one
 * after the other. One thread runs it without entering an OpenMP region (the monitor calls it
 * every step, on weights of a few MB at most). */
int rt_refresh_norms(int n, const int64_t *a_ptrs, const int64_t *b_ptrs, const int64_t *sizes, float *diff,
                     float *norm, int nthreads) {
    spans_t sp = make_spans(n, sizes, NULL, 0);
    double *partial = new_partial(sp, 2);
    const int nth = threads_for(sp.n, nthreads);
#pragma omp parallel for schedule(static) num_threads(nth) if (nth > 1)
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        span_refresh(PTR(a_ptrs, x.t, x.lo), PTR(b_ptrs, x.t, x.lo), x.hi - x.lo, partial + s * 2);
    }
    float *outs[2] = {diff, norm};
    finish_norms(n, NULL, 0, sp, partial, 2, outs);
    free(partial);
    free(sp.s);
    return 0;
}


/* ---------------------------------------------------------------------------------------------- */
/* the monitor's σ_1: Golub-Kahan-Lanczos bidiagonalisation                                        */

#define DLANES 8

/* Σ x_i·y_i for x of type T and double y, in double, in DLANES lanes (so that it vectorises
 * without -ffast-math): ddot for two double vectors, fdot for a float32 row of W and a double one. */
#define DEFINE_DOT(name, T)                                                    \
    static double name(const T *restrict x, const double *restrict y, int64_t n) { \
        double acc[DLANES] = {0};                                              \
        int64_t i = 0;                                                         \
        for (; i + DLANES <= n; i += DLANES)                                   \
            for (int j = 0; j < DLANES; j++) acc[j] += (double)x[i + j] * y[i + j]; \
        double s = 0;                                                          \
        for (int j = 0; j < DLANES; j++) s += acc[j];                          \
        for (; i < n; i++) s += (double)x[i] * y[i];                           \
        return s;                                                              \
    }
DEFINE_DOT(ddot, double)
DEFINE_DOT(fdot, float)

/* x ← x − Qᵀ(Q x) for the `rows` orthonormal rows of Q (rows × n, double): one classical
 * Gram-Schmidt sweep, the full reorthogonalisation of a Lanczos vector. */
static void reorthogonalise(double *restrict x, const double *restrict Q, int rows, int64_t n) {
    for (int r = 0; r < rows; r++) {
        const double c = ddot(Q + r * n, x, n);
        const double *restrict q = Q + r * n;
        for (int64_t i = 0; i < n; i++) x[i] -= c * q[i];
    }
}

static double dnorm(const double *x, int64_t n) { return sqrt(ddot(x, x, n)); }

/* Golub-Kahan-Lanczos bidiagonalisation of the row-major float32 m×n matrix w, in double, with full
 * reorthogonalisation, from the unit vector V[0] (n doubles): up to k steps fill V ((k+1) × n) and
 * U (k × m) row by row, alpha[j] (B's diagonal) and beta[j] (above it), U_kᵀ W V_{k+1} = B. Stops
 * when a new vector's norm is at most eps·max(alpha[0], 1e-3·‖W‖_F) (the Krylov space is exhausted;
 * one pass over W for ‖W‖_F first), or is not finite (then kept, as the last α or β).
 * Returns the number of alphas, *nbeta the betas'.
 * The monitor's top_singular_value in one call (its torch form costs a dozen dispatches a step). */
int rt_lanczos(int64_t m, int64_t n, const float *w, int k, double eps, double *V, double *U, double *alpha,
               double *beta, int *nbeta) {
    const double tol_w = 1e-3 * sqrt(span_sumsq(w, m * n));
    double tol = 0;
    int na = 0;
    *nbeta = 0;
    for (int j = 0; j < k; j++) {
        double *restrict p = U + (int64_t)j * m;
        const double *restrict v = V + (int64_t)j * n;
        for (int64_t i = 0; i < m; i++) p[i] = fdot(w + i * n, v, n); /* p = W v_j */
        if (j) {
            for (int64_t i = 0; i < m; i++) p[i] -= beta[j - 1] * U[(int64_t)(j - 1) * m + i];
            reorthogonalise(p, U, j, m);
        }
        const double a = dnorm(p, m);
        if (j == 0) tol = eps * fmax(a, tol_w);
        if (!(a > tol)) { /* W v_j lies in span(U); or W has a NaN or inf: say so */
            if (!isfinite(a)) alpha[na++] = a;
            break;
        }
        alpha[na++] = a;
        for (int64_t i = 0; i < m; i++) p[i] /= a;
        double *restrict r = V + (int64_t)(j + 1) * n; /* r = Wᵀ u_j − α v_j */
        for (int64_t c = 0; c < n; c++) r[c] = -a * v[c];
        for (int64_t i = 0; i < m; i++) {
            const float *restrict row = w + i * n;
            const double u = p[i];
            for (int64_t c = 0; c < n; c++) r[c] += u * row[c];
        }
        reorthogonalise(r, V, j + 1, n);
        const double b = dnorm(r, n);
        if (!(b > tol)) {
            if (!isfinite(b)) beta[(*nbeta)++] = b;
            break;
        }
        beta[(*nbeta)++] = b;
        for (int64_t c = 0; c < n; c++) r[c] /= b;
    }
    return na;
}

/* p ← p·scale[t] for the tensors whose scale is not exactly 1 (multiplying by 1 is the identity). */
int rt_scale(int n, const int64_t *p_ptrs, const int64_t *sizes, const float *scale, int nthreads) {
    spans_t sp = make_spans(n, sizes, NULL, 0);
#pragma omp parallel for schedule(static) num_threads(threads_for(sp.n, nthreads))
    for (int64_t s = 0; s < sp.n; s++) {
        const span_t x = sp.s[s];
        const float k = scale[x.t];
        if (k == 1.0f) continue;
        float *restrict p = PTR(p_ptrs, x.t, x.lo);
        PLAIN_LOOP(x.hi - x.lo, r = p[i] * k; p[i] = r);
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

/* trust_ratio1 over vectors, for the test that holds it equal to _ratio.trust_ratio. */
int rt_trust_ratio(int n, const float *w, const float *u, float coefficient, float weight_decay, float eps,
                   float *out) {
    const ratio_hp_t rh = {coefficient, weight_decay, eps};
    for (int t = 0; t < n; t++) out[t] = trust_ratio1(w[t], u[t], rh);
    return 0;
}

int rt_abi_version(void) { return RT_ABI_VERSION; }
