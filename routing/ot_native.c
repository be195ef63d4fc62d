/* Sparsity-constrained OT, semi-dual BFGS ascent in plain C (float64), one problem after another.
 *
 * The same algorithm as routing/ot_solvers.py's `bfgs` followed by `polish` (read that file for the why);
 * here each problem runs alone, so a step costs one pass over its cost and no framework overhead.
 * Built and loaded by routing/ot_native.py (ctypes; the caller splits a batch across threads).
 *
 * Layout: the cost as given, (n, m), rows contiguous across columns. For column j, x_i = alpha_i - c_ij;
 * its k largest entries, scaled by s_j = 1 / (gamma b_j), are projected onto the simplex (p_j);
 * D(alpha) = <alpha, a> - sum_j b_j max_k_j with max_k_j = gamma b_j (<p_j, z_j> - |p_j|^2 / 2), and
 * grad D = a - sum_j b_j p_j.
 * Ties at the k-th value go to the lower row index (any choice gives the same D).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define POLISH_SLACK 1e-14 /* relative drop of D a polish step may show by rounding alone */
#define ARMIJO 1e-4
#define LINE_SEARCH_STEPS 30
#define FIRST_STEP 0.01

typedef struct {
    int n, m, k;
    double gamma;
    const double *c, *a, *b; /* (n, m), (n), (m) */
    double *inv_gb;          /* (m): 1 / (gamma b_j), filled by ascend */
} problem;

/* The k largest x_ij = alpha_i - c_ij of every column j in columns [j0, m), by insertion down k slots, row
 * after row: u (k, m) holds the values sorted descending, ix (k, m) their rows (as doubles). A new entry
 * displaces a slot only when strictly larger, so ties keep the lower row. */
static void top_k(const problem *pr, const double *alpha, double *u, double *ix, int j0) {
    const int n = pr->n, m = pr->m, k = pr->k;
    for (int j = j0; j < m; j++) {
        for (int r = 0; r < k; r++) {
            u[(size_t)r * m + j] = -INFINITY;
            ix[(size_t)r * m + j] = 0.0;
        }
        for (int i = 0; i < n; i++) {
            double x = alpha[i] - pr->c[(size_t)i * m + j], xi = i;
            for (int r = 0; r < k && x > -INFINITY; r++) {
                const double ur = u[(size_t)r * m + j], ir = ix[(size_t)r * m + j];
                if (x > ur) {
                    u[(size_t)r * m + j] = x;
                    ix[(size_t)r * m + j] = xi;
                    x = ur;
                    xi = ir;
                }
            }
        }
    }
}

/* top_k for k = 2 in vector registers (GCC/Clang vector extensions), two independent groups of VW columns
 * at a time (one group's insertion is a chain of dependent compares and blends; two chains keep the core
 * busy): VW = 4 with AVX (-march=native on an AVX machine; vblendvpd), 2 otherwise (SSE2 / NEON). The last
 * m % (2 VW) columns go to top_k. Same results either way. */
#ifdef __AVX__
#include <immintrin.h>
#define VW 4
#else
#define VW 2
#endif
typedef double vd __attribute__((vector_size(8 * VW)));
typedef long long vl __attribute__((vector_size(8 * VW)));

#ifdef __AVX__
static inline vd blend(vl mask, vd yes, vd no) {
    return (vd)_mm256_blendv_pd((__m256d)no, (__m256d)yes, (__m256d)mask);
}
#else
static inline vd blend(vl mask, vd yes, vd no) { return (vd)(((vl)yes & mask) | ((vl)no & ~mask)); }
#endif

typedef struct {
    vd u0, u1, i0, i1;
} top2_lanes;

static inline void insert2(top2_lanes *t, vd x, vd xi) {
    const vl g0 = x > t->u0, g1 = x > t->u1;
    t->u1 = blend(g0, t->u0, blend(g1, x, t->u1));
    t->i1 = blend(g0, t->i0, blend(g1, xi, t->i1));
    t->u0 = blend(g0, x, t->u0);
    t->i0 = blend(g0, xi, t->i0);
}

static inline void store2(const top2_lanes *t, double *u, double *ix, int m, int j) {
    memcpy(u + j, &t->u0, sizeof t->u0);
    memcpy(u + m + j, &t->u1, sizeof t->u1);
    memcpy(ix + j, &t->i0, sizeof t->i0);
    memcpy(ix + m + j, &t->i1, sizeof t->i1);
}

static void top_2(const problem *pr, const double *alpha, double *u, double *ix) {
    const int n = pr->n, m = pr->m;
    vd ninf, zero;
    for (int w = 0; w < VW; w++) {
        ninf[w] = -INFINITY;
        zero[w] = 0.0;
    }
    int j0 = 0;
    for (; j0 + 2 * VW <= m; j0 += 2 * VW) {
        top2_lanes a = {ninf, ninf, zero, zero}, b = a;
        for (int i = 0; i < n; i++) {
            vd ca, cb;
            memcpy(&ca, pr->c + (size_t)i * m + j0, sizeof ca);
            memcpy(&cb, pr->c + (size_t)i * m + j0 + VW, sizeof cb);
            const vd xi = zero + (double)i;
            insert2(&a, alpha[i] - ca, xi);
            insert2(&b, alpha[i] - cb, xi);
        }
        store2(&a, u, ix, m, j0);
        store2(&b, u, ix, m, j0 + VW);
    }
    top_k(pr, alpha, u, ix, j0);
}

/* D at alpha; grad (n) always; when not NULL: p (n, m, zeroed by the caller), the support (m * k row
 * indices, m counts) and each column's projection threshold theta (m). u, ix: (k, m) scratch. */
static double evaluate(const problem *pr, const double *alpha, double *grad, double *p, int *sup, int *cnt,
                       double *theta_out, double *u, double *ix) {
    const int n = pr->n, m = pr->m, k = pr->k;
    if (k == 2) top_2(pr, alpha, u, ix);
    else top_k(pr, alpha, u, ix, 0);
    double val = 0.0;
    for (int i = 0; i < n; i++) {
        grad[i] = pr->a[i];
        val += alpha[i] * pr->a[i];
    }
    if (k == 2 && !p && !sup) {
        /* the ascent's case in closed form: p = (q0, 1 - q0), q0 = min(1, (1 + z0 - z1) / 2), and
         * b_j max_k_j = b_j <p, u> - (gamma b_j^2 / 2) |p|^2; first a vectorised pass that leaves b_j p_j in
         * u, then the scatter into grad */
        double *u0 = u, *u1 = u + m, sum = 0.0;
        const double *i0 = ix, *i1 = ix + m, half_g = 0.5 * pr->gamma;
        for (int j = 0; j < m; j++) {
            const double h = 0.5 + 0.5 * (u0[j] - u1[j]) * pr->inv_gb[j], bj = pr->b[j];
            const double q0 = h < 1.0 ? h : 1.0, q1 = 1.0 - q0;
            sum += bj * (q0 * u0[j] + q1 * u1[j]) - half_g * bj * bj * (q0 * q0 + q1 * q1);
            u0[j] = bj * q0;
            u1[j] = bj * q1;
        }
        for (int j = 0; j < m; j++) {
            grad[(int)i0[j]] -= u0[j];
            grad[(int)i1[j]] -= u1[j];
        }
        return val - sum;
    }
    for (int j = 0; j < m; j++) { /* project z = u / (gamma b_j) onto the simplex (sort-based, u is sorted) */
        const double bj = pr->b[j], s = pr->inv_gb[j];
        double cs = 0.0, cs_rho = 0.0;
        int rho = 1;
        for (int r = 0; r < k; r++) {
            const double z = s * u[(size_t)r * m + j];
            cs += z;
            if (z - (cs - 1.0) / (r + 1) > 0) {
                rho = r + 1;
                cs_rho = cs;
            }
        }
        const double theta = (cs_rho - 1.0) / rho;
        double pz = 0.0, pp = 0.0;
        for (int r = 0; r < rho; r++) {
            const double z = s * u[(size_t)r * m + j], q = z - theta;
            const int row = (int)ix[(size_t)r * m + j];
            if (sup) sup[(size_t)j * k + r] = row;
            if (q <= 0) continue;
            pz += q * z;
            pp += q * q;
            grad[row] -= bj * q;
            if (p) p[(size_t)row * m + j] = q;
        }
        if (cnt) cnt[j] = rho;
        if (theta_out) theta_out[j] = theta;
        val -= bj * pr->gamma * bj * (pz - 0.5 * pp);
    }
    return val;
}

/* max - min of x (len >= 1, finite), four lanes at a time (fmin/fmax would not vectorise) */
static double range(const double *x, size_t len) {
    double lo[4], hi[4];
    for (int w = 0; w < 4; w++) lo[w] = hi[w] = x[0];
    size_t q = 0;
    for (; q + 4 <= len; q += 4)
        for (int w = 0; w < 4; w++) {
            lo[w] = x[q + w] < lo[w] ? x[q + w] : lo[w];
            hi[w] = x[q + w] > hi[w] ? x[q + w] : hi[w];
        }
    for (; q < len; q++) {
        lo[0] = x[q] < lo[0] ? x[q] : lo[0];
        hi[0] = x[q] > hi[0] ? x[q] : hi[0];
    }
    for (int w = 1; w < 4; w++) {
        lo[0] = lo[w] < lo[0] ? lo[w] : lo[0];
        hi[0] = hi[w] > hi[0] ? hi[w] : hi[0];
    }
    return hi[0] - lo[0];
}

static int converged(const double *grad, int n, double limit) {
    for (int i = 0; i < n; i++)
        if (fabs(grad[i]) > limit) return 0;
    return 1;
}

static double dot(const double *x, const double *y, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

static void matvec(const double *h, const double *x, double *out, int n) {
    for (int i = 0; i < n; i++) out[i] = dot(h + (size_t)i * n, x, n);
}

/* Solve mat x = rhs (n x n, overwritten) by Gaussian elimination with partial pivoting; 0 if singular. */
static int solve(double *mat, double *rhs, int n) {
    for (int c = 0; c < n; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(mat[r * n + c]) > fabs(mat[piv * n + c])) piv = r;
        if (mat[piv * n + c] == 0.0) return 0;
        if (piv != c) {
            for (int q = 0; q < n; q++) {
                double t = mat[c * n + q];
                mat[c * n + q] = mat[piv * n + q];
                mat[piv * n + q] = t;
            }
            double t = rhs[c];
            rhs[c] = rhs[piv];
            rhs[piv] = t;
        }
        for (int r = c + 1; r < n; r++) {
            const double f = mat[r * n + c] / mat[c * n + c];
            if (f == 0.0) continue;
            for (int q = c; q < n; q++) mat[r * n + q] -= f * mat[c * n + q];
            rhs[r] -= f * rhs[c];
        }
    }
    for (int r = n - 1; r >= 0; r--) {
        double t = rhs[r];
        for (int q = r + 1; q < n; q++) t -= mat[r * n + q] * rhs[q];
        rhs[r] = t / mat[r * n + r];
    }
    return 1;
}

/* BFGS ascent from alpha = 0, then one Newton step on the final support (kept if D does not drop).
 * Writes alpha (n), grad (n), p (n, m; zeroed here), the column thresholds theta (m) and returns D;
 * *iters = accepted BFGS steps. */
static double ascend(problem *pr, int max_iter, double tol, double ftol, double damping, double *alpha,
                     double *grad, double *p, double *theta, int *iters, double *work, int *iwork) {
    const int n = pr->n, m = pr->m, k = pr->k;
    double *h = work, *d = h + n * n, *cand = d + n, *gc = cand + n, *sv = gc + n, *yv = sv + n, *hy = yv + n,
           *mat = hy + n, *u = mat + n * n, *ix = u + (size_t)k * m;
    for (int j = 0; j < m; j++) pr->inv_gb[j] = 1.0 / (pr->gamma * pr->b[j]);
    int *sup = iwork, *cnt = iwork + (size_t)m * k;
    double amax = 1.0;
    for (int i = 0; i < n; i++) amax = fmax(amax, fabs(pr->a[i]));
    const double limit = tol * amax;
    const double span = fmax(range(pr->c, (size_t)n * m), 2.2250738585072014e-308);

    memset(alpha, 0, n * sizeof(double));
    memset(h, 0, (size_t)n * n * sizeof(double)); /* H = I until the first usable curvature pair */
    for (int i = 0; i < n; i++) h[i * n + i] = 1.0;
    double v = evaluate(pr, alpha, grad, NULL, NULL, NULL, NULL, u, ix);
    double gmax = 0.0;
    for (int i = 0; i < n; i++) gmax = fmax(gmax, fabs(grad[i]));
    for (int i = 0; i < n; i++) d[i] = grad[i] * (FIRST_STEP * span / fmax(gmax, 1e-300));
    double slope = dot(grad, d, n), t = 1.0;
    int done = converged(grad, n, limit) || !(slope > 0), first = 1, tries = 0;
    *iters = 0;
    for (int e = 0; e < 4 * max_iter && !done; e++) {
        for (int i = 0; i < n; i++) cand[i] = alpha[i] + t * d[i];
        const double vc = evaluate(pr, cand, gc, NULL, NULL, NULL, NULL, u, ix);
        const int ok = vc >= v + ARMIJO * t * slope;
        if (ok) {
            for (int i = 0; i < n; i++) {
                sv[i] = cand[i] - alpha[i];
                yv[i] = grad[i] - gc[i]; /* change of the gradient of -D */
            }
            const double sy = dot(sv, yv, n), yy = dot(yv, yv, n);
            if (sy > 1e-10 * sqrt(dot(sv, sv, n)) * sqrt(yy)) {
                if (first) /* H's scale from the first accepted step, as L-BFGS */
                    for (int i = 0; i < n; i++) h[i * n + i] = sy / fmax(yy, 1e-300);
                /* H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T, in O(n^2) */
                matvec(h, yv, hy, n);
                const double rho = 1.0 / sy, yhy = dot(yv, hy, n);
                for (int i = 0; i < n; i++)
                    for (int q = 0; q < n; q++)
                        h[i * n + q] += rho * ((1.0 + rho * yhy) * sv[i] * sv[q] - hy[i] * sv[q] - sv[i] * hy[q]);
            }
            first = 0;
            const int small_gain = vc - v <= ftol * fmax(fabs(vc), fabs(v));
            memcpy(alpha, cand, n * sizeof(double));
            memcpy(grad, gc, n * sizeof(double));
            v = vc;
            (*iters)++;
            matvec(h, grad, d, n);
            slope = dot(grad, d, n);
            done = small_gain || converged(grad, n, limit) || !(slope > 0) || *iters >= max_iter;
            tries = 0;
            t = 1.0;
        } else { /* maximiser of the quadratic through D(0), D'(0), D(t), clamped to [0.1 t, 0.5 t] */
            const double curv = fmin((vc - v - slope * t) / (t * t), -1e-300);
            t = fmin(fmax(-slope / (2 * curv), 0.1 * t), 0.5 * t);
            done = ++tries >= LINE_SEARCH_STEPS;
        }
    }
    memset(p, 0, (size_t)n * m * sizeof(double));
    v = evaluate(pr, alpha, grad, p, sup, cnt, theta, u, ix);
    if (converged(grad, n, limit)) return v;
    /* polish: one Newton step on the support at alpha; the negative Hessian there is
     * (1/gamma)(diag(D) - sum_j s_j s_j^T / |s_j|), D_i = columns covering row i */
    memset(mat, 0, (size_t)n * n * sizeof(double));
    double *covered = sv;
    memset(covered, 0, n * sizeof(double));
    for (int j = 0; j < m; j++) {
        const int *sj = sup + (size_t)j * k;
        int r = 0; /* the support is the leading entries with p > 0 (p is sorted along sj) */
        while (r < cnt[j] && p[(size_t)sj[r] * m + j] > 0) r++;
        for (int q = 0; q < r; q++) {
            covered[sj[q]] += 1.0;
            for (int w = 0; w < r; w++) mat[sj[q] * n + sj[w]] -= 1.0 / r;
        }
    }
    for (int i = 0; i < n; i++) mat[i * n + i] += covered[i] + (covered[i] == 0.0) + damping;
    memcpy(hy, grad, n * sizeof(double));
    if (!solve(mat, hy, n)) return v;
    for (int i = 0; i < n; i++) cand[i] = alpha[i] + pr->gamma * hy[i];
    const double vc = evaluate(pr, cand, gc, NULL, NULL, NULL, NULL, u, ix);
    /* kept if D does not drop, or drops by rounding only (POLISH_SLACK of |D|) while the gradient shrinks:
     * near the optimum the gain is ~|grad|^2, below the rounding of D, and its sign is the arithmetic's */
    double g_old = 0.0, g_new = 0.0;
    for (int i = 0; i < n; i++) {
        g_old = fmax(g_old, fabs(grad[i]));
        g_new = fmax(g_new, fabs(gc[i]));
    }
    if (vc >= v || (vc >= v - POLISH_SLACK * fabs(v) && g_new < g_old)) {
        memcpy(alpha, cand, n * sizeof(double));
        memset(p, 0, (size_t)n * m * sizeof(double));
        v = evaluate(pr, alpha, grad, p, NULL, NULL, theta, u, ix);
    }
    return v;
}

/* The outputs of one solved problem, from p (n, m) and theta (m) at the final alpha: the plan
 * T = b_j p_j (in place of p), its primal value <T, C> + gamma/2 |T|^2 and row error max_i |T_i 1 - a_i|,
 * and the dual's column potentials beta_j = -gamma b_j theta_j (ot_duals.dual_potentials). */
static void finish(const problem *pr, double *p, double *theta, double *primal, double *row_error) {
    const int n = pr->n, m = pr->m;
    double prim = 0.0, err = 0.0;
    for (int i = 0; i < n; i++) {
        double *ti = p + (size_t)i * m, row = 0.0;
        const double *ci = pr->c + (size_t)i * m;
        for (int j = 0; j < m; j++) {
            const double t = pr->b[j] * ti[j];
            ti[j] = t;
            row += t;
            prim += t * ci[j] + 0.5 * pr->gamma * t * t;
        }
        err = fmax(err, fabs(row - pr->a[i]));
    }
    for (int j = 0; j < m; j++) theta[j] *= -pr->gamma * pr->b[j];
    *primal = prim;
    *row_error = err;
}

/* The value checks of routing/sparse_ot.check_values, on one problem: every entry finite, a >= 0, b > 0,
 * sum a = sum b (to 1e-6 relative), at most m k rows needing mass. 1 when they hold; the caller explains a
 * failure (Python names the problem). A cost whose finite entries overflow its sum counts as invalid. */
static int valid(const problem *pr) {
    const int n = pr->n, m = pr->m;
    const size_t len = (size_t)n * m;
    double lane[4] = {0, 0, 0, 0}, sa = 0.0, sb = 0.0;
    size_t q = 0;
    for (; q + 4 <= len; q += 4)
        for (int w = 0; w < 4; w++) lane[w] += pr->c[q + w];
    for (; q < len; q++) lane[0] += pr->c[q];
    if (!isfinite(lane[0] + lane[1] + lane[2] + lane[3])) return 0; /* a non-finite entry makes the sum so */
    int need = 0;
    for (int i = 0; i < n; i++) {
        if (!(pr->a[i] >= 0) || !isfinite(pr->a[i])) return 0;
        sa += pr->a[i];
        need += pr->a[i] > 0;
    }
    for (int j = 0; j < m; j++) {
        if (!(pr->b[j] > 0) || !isfinite(pr->b[j])) return 0;
        sb += pr->b[j];
    }
    return fabs(sa - sb) <= 1e-6 * fmax(fabs(sb), 1.0) && (long)need <= (long)m * pr->k;
}

/* Problems [lo, hi) of a batch: c (B, n, m), a (B, n), b (B, m) -> alpha (B, n), value (B), grad (B, n),
 * plan (B, n, m), beta (B, m), primal (B), row_error (B), iters (B). Returns 0; -1 when k is out of
 * range or memory runs out; -2 when some problem fails the value checks (`valid`; nothing is solved). */
int sparse_ot_bfgs(const double *c, const double *a, const double *b, int lo, int hi, int n, int m, int k,
                   double gamma, int max_iter, double tol, double ftol, double damping, double *alpha,
                   double *value, double *grad, double *plan, double *beta, double *primal, double *row_error,
                   int *iters) {
    if (k < 1) return -1;
    for (int q = lo; q < hi; q++) {
        const problem pr = {n, m, k, gamma, c + (size_t)q * n * m, a + (size_t)q * n, b + (size_t)q * m, NULL};
        if (!valid(&pr)) return -2;
    }
    if (k > n) k = n;
    double *work = malloc(((size_t)2 * n * n + 6 * (size_t)n + 2 * (size_t)k * m + m) * sizeof(double));
    int *iwork = malloc(((size_t)m * k + m) * sizeof(int));
    if (!work || !iwork) {
        free(work);
        free(iwork);
        return -1;
    }
    for (int q = lo; q < hi; q++) {
        problem pr = {n, m, k, gamma, c + (size_t)q * n * m, a + (size_t)q * n, b + (size_t)q * m,
                      work + 2 * (size_t)n * n + 6 * (size_t)n + 2 * (size_t)k * m};
        double *pq = plan + (size_t)q * n * m, *bq = beta + (size_t)q * m;
        value[q] = ascend(&pr, max_iter, tol, ftol, damping, alpha + (size_t)q * n, grad + (size_t)q * n, pq, bq,
                          iters + q, work, iwork);
        finish(&pr, pq, bq, primal + q, row_error + q);
    }
    free(work);
    free(iwork);
    return 0;
}
