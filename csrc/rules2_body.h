/*
 * rules2_body.h -- the loops of csrc/rules2.c, written once and included per element type
 * with R2_T (float or double), R2_SQRT and R2_SFX (f32, f64). Contraction into FMA is off for
 * the whole build (-ffp-contract=off), so these loops round as the NumPy reference does.
 */
#define R2_CAT_(a, b) a##_##b
#define R2_CAT(a, b) R2_CAT_(a, b)
#define R2_FN(name) R2_CAT(name, R2_SFX)

R2_CLONES static void R2_FN(sparse_adam_rows)(int64_t k0, int64_t k1, int64_t len, const int64_t *idx,
                                    const R2_T *values, R2_T *p, R2_T *m, R2_T *v,
                                    const fo_sparse_adam_hp *hp)
{
    const R2_T gs = (R2_T)hp->gsign, omb1 = (R2_T)hp->one_minus_beta1;
    const R2_T omb2 = (R2_T)hp->one_minus_beta2, eps = (R2_T)hp->eps;
    const R2_T nss = (R2_T)hp->neg_step_size;
    for (int64_t k = k0; k < k1; k++) {
        const size_t off = (size_t)idx[k] * (size_t)len;
        const R2_T *R2_RESTRICT gv = values + (size_t)k * (size_t)len;
        R2_T *R2_RESTRICT pr = p + off;
        R2_T *R2_RESTRICT mr = m + off;
        R2_T *R2_RESTRICT vr = v + off;
        for (int64_t j = 0; j < len; j++) {
            const R2_T gi = gv[j] * gs;
            const R2_T om = mr[j], nm = om + (gi - om) * omb1;
            const R2_T ov = vr[j], nv = ov + (gi * gi - ov) * omb2;
            mr[j] = nm;
            vr[j] = nv;
            pr[j] = pr[j] + nss * (nm / (R2_SQRT(nv) + eps));
        }
    }
}

/* torch's lerp with a scalar weight */
static R2_INLINE R2_T R2_FN(r2_lerp)(R2_T self, R2_T end, R2_T w)
{
    return (w < (R2_T)0.5 && w > (R2_T)-0.5) ? self + w * (end - self)
                                               : end - (end - self) * ((R2_T)1 - w);
}

/* Adafactor's update of one element: clamp(var, floor)^(-1/2) * g */
static R2_INLINE R2_T R2_FN(r2_af_u)(R2_T ve, R2_T floor, R2_T g)
{
    ve = ve < floor ? floor : ve;          /* clamp_(min=): a NaN stays NaN */
    return ((R2_T)1 / R2_SQRT(ve)) * g;
}

/* Sum of squares of x[0..n) in float64 into the 8 lanes acc, element i to lane (lane0 + i)
 * % 8 (each lane in order). */
static R2_INLINE void R2_FN(r2_sumsq_lanes)(int64_t n, const R2_T *x, double *acc, int64_t lane0)
{
    int64_t i = 0;
    int lane = (int)(lane0 & 7);
    for (; i < n && lane != 0; i++, lane = (lane + 1) & 7) {
        const double d = (double)x[i];
        acc[lane] = acc[lane] + d * d;
    }
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            const double d = (double)x[i + k];
            acc[k] = acc[k] + d * d;
        }
    for (int k = 0; i < n; i++, k++) {
        const double d = (double)x[i];
        acc[k] = acc[k] + d * d;
    }
}

#define R2_CHUNK 256

R2_CLONES static void R2_FN(adafactor_tensor)(int64_t B, int64_t R, int64_t C, int factored, R2_T *p,
                                    const R2_T *g, R2_T *row, R2_T *col, R2_T *var,
                                    const fo_adafactor_hp *hp, double *work)
{
    const int64_t n = factored ? B * R * C : B;
    const R2_T w = (R2_T)hp->w, gs = (R2_T)hp->gsign;
    const R2_T floor = (R2_T)(hp->eps1 * hp->eps1), e1 = (R2_T)hp->eps1;
    R2_T ub[R2_CHUNK];
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    /* alpha = max(eps2, |p| / sqrt(n)) * rho, from the param before the decay */
    R2_FN(r2_sumsq_lanes)(n, p, acc, 0);
    const double pn = sqrt(r2_combine(acc)) / sqrt((double)n);
    const double alpha = (pn > hp->eps2 ? pn : hp->eps2) * hp->rho;
    if (hp->decayed) {
        const R2_T decay = (R2_T)hp->decay;
        for (int64_t i = 0; i < n; i++) p[i] = p[i] * decay;
    }
    for (int k = 0; k < 8; k++) acc[k] = 0.0;
    if (!factored) {
        for (int64_t i = 0; i < n; i++) {
            const R2_T gi = g[i] * gs;
            var[i] = R2_FN(r2_lerp)(var[i], gi * gi, w);
        }
        for (int64_t c0 = 0; c0 < n; c0 += R2_CHUNK) {
            const int64_t len = n - c0 < R2_CHUNK ? n - c0 : R2_CHUNK;
            for (int64_t j = 0; j < len; j++)
                ub[j] = R2_FN(r2_af_u)(var[c0 + j], floor, g[c0 + j] * gs);
            R2_FN(r2_sumsq_lanes)(len, ub, acc, c0);
        }
    } else {
        double *rs = work, *cs = work + R, *rms = work + R + C;
        for (int64_t b = 0; b < B; b++) {
            const R2_T *gb = g + (size_t)b * (size_t)(R * C);
            R2_T *rb = row + (size_t)b * (size_t)R, *cb = col + (size_t)b * (size_t)C;
            for (int64_t c = 0; c < C; c++) cs[c] = 0.0;
            for (int64_t r = 0; r < R; r++) {
                const R2_T *R2_RESTRICT gr = gb + (size_t)r * (size_t)C;
                for (int64_t c = 0; c < C; c++) {
                    const double d = (double)gr[c];
                    cs[c] = cs[c] + d * d;
                }
                double ra[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                R2_FN(r2_sumsq_lanes)(C, gr, ra, 0);
                rs[r] = r2_combine(ra);
            }
            double ms = 0.0;
            for (int64_t r = 0; r < R; r++) {
                rb[r] = R2_FN(r2_lerp)(rb[r], (R2_T)(rs[r] / (double)C), w);
                ms = ms + (double)rb[r];
            }
            for (int64_t c = 0; c < C; c++)
                cb[c] = R2_FN(r2_lerp)(cb[c], (R2_T)(cs[c] / (double)R), w);
            R2_T rm = (R2_T)(ms / (double)R);
            rm = rm < e1 ? e1 : rm;
            rms[b] = (double)rm;
        }
        int64_t o = 0;
        for (int64_t b = 0; b < B; b++) {
            const R2_T rm = (R2_T)rms[b];
            for (int64_t r = 0; r < R; r++) {
                const R2_T rv = row[b * R + r];
                const R2_T *R2_RESTRICT cb = col + (size_t)b * (size_t)C;
                const R2_T *R2_RESTRICT gr = g + (size_t)(b * R + r) * (size_t)C;
                for (int64_t c0 = 0; c0 < C; c0 += R2_CHUNK) {
                    const int64_t len = C - c0 < R2_CHUNK ? C - c0 : R2_CHUNK;
                    for (int64_t j = 0; j < len; j++)
                        ub[j] = R2_FN(r2_af_u)((rv * cb[c0 + j]) / rm, floor, gr[c0 + j] * gs);
                    R2_FN(r2_sumsq_lanes)(len, ub, acc, o + c0);
                }
                o += C;
            }
        }
    }
    /* denom = max(1, |u| / (sqrt(n) * d)); p += u * (-alpha / denom) */
    const double un = sqrt(r2_combine(acc)) / (sqrt((double)n) * hp->d);
    const double denom = un > 1.0 ? un : 1.0;
    const R2_T coef = (R2_T)(-alpha / denom);
    if (!factored) {
        for (int64_t i = 0; i < n; i++)
            p[i] = p[i] + R2_FN(r2_af_u)(var[i], floor, g[i] * gs) * coef;
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        const R2_T rm = (R2_T)work[R + C + b];
        for (int64_t r = 0; r < R; r++) {
            const R2_T rv = row[b * R + r];
            const R2_T *R2_RESTRICT cb = col + (size_t)b * (size_t)C;
            const R2_T *R2_RESTRICT gr = g + (size_t)(b * R + r) * (size_t)C;
            R2_T *R2_RESTRICT pr = p + (size_t)(b * R + r) * (size_t)C;
            for (int64_t c = 0; c < C; c++)
                pr[c] = pr[c] + R2_FN(r2_af_u)((rv * cb[c]) / rm, floor, gr[c] * gs) * coef;
        }
    }
}

#undef R2_CHUNK
#undef R2_FN
#undef R2_CAT
#undef R2_CAT_
