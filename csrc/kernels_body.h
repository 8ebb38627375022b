/*
 * kernels_body.h -- the loop bodies, written once.
 *
 * Included by dispatch.c once per (dtype, instruction set) with
 *   FO_T    the element type (float or double)
 *   FO_SFX  the name suffix (f32_avx2, f64_baseline, ...)
 * and, around the include, a target pragma that lets the compiler vectorise these loops for that
 * instruction set. No intrinsics: the loops are plain C that GCC and Clang vectorise at -O3 with
 * -fno-math-errno (sqrt) and -ffp-contract=off (no FMA, so every path rounds identically).
 *
 * Per element, in torch.optim's order of operations (single-tensor implementation):
 *   Adam  g = sign*g; p = p*decay; [g = g + l2*p]; m = lerp(m, g, w); v = v*b2 + (1-b2)*g*g;
 *         [vmax = max(vmax, v)]; denom = sqrt(v or vmax)*(1/bc2_sqrt) + eps; p = p + (-ss*m)/denom
 *         The one deliberate departure from torch's order: torch divides sqrt(v) by bc2_sqrt;
 *         fastopt multiplies by its reciprocal (computed once per step in double). The math is
 *         the same and the result differs by at most an ulp or so in denom, but it saves one of
 *         the two divisions per element, the bottleneck of an in-cache Adam step (~35% at 1e4).
 *   SGD   g = sign*g; [g = g + l2*p]; [b = first ? g : b*mu + (1-d)*g; g = nesterov ? g + mu*b : b];
 *         p = p + (-lr)*g
 * Optional terms are compile-time flags of an always-inline body, so each combination becomes
 * its own branch-free loop.
 */
#ifndef FO_T
#error "define FO_T and FO_SFX before including kernels_body.h"
#endif

#define FO_CAT_(a, b) a##_##b
#define FO_CAT(a, b) FO_CAT_(a, b)
#define FO_FN(name) FO_CAT(name, FO_SFX)

/* NaN-propagating maximum, as torch.maximum: NaN if either operand is NaN. */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_max_nan)(FO_T a, FO_T b)
{
    return (a < b || b != b) ? b : a;
}

static FO_ALWAYS_INLINE void FO_FN(adam_body)(
    int64_t n, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g, FO_T *FO_RESTRICT m,
    FO_T *FO_RESTRICT v, FO_T *FO_RESTRICT vmax, const fo_adam_hp *hp,
    const int amsgrad, const int l2, const int small_weight)
{
    const FO_T sign = (FO_T)hp->sign;
    const FO_T decay = (FO_T)hp->decay;
    const FO_T wd = (FO_T)hp->l2;
    const FO_T w = (FO_T)hp->lerp_weight;
    const FO_T one_minus_w = (FO_T)1 - w;      /* torch computes 1 - weight in the tensor type */
    const FO_T b2 = (FO_T)hp->beta2;
    const FO_T omb2 = (FO_T)hp->one_minus_beta2;
    const FO_T eps = (FO_T)hp->eps;
    const FO_T nss = (FO_T)hp->neg_step_size;
    const FO_T inv_bc2s = (FO_T)hp->inv_bc2_sqrt;
    for (int64_t i = 0; i < n; i++) {
        FO_T gi = g[i] * sign;
        FO_T pi = p[i] * decay;
        if (l2) gi = gi + wd * pi;
        FO_T mi = m[i];
        /* torch's lerp: self + w*(end - self) for |w| < 0.5, else end - (end - self)*(1 - w) */
        mi = small_weight ? mi + w * (gi - mi) : gi - (gi - mi) * one_minus_w;
        FO_T vi = v[i] * b2 + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        if (amsgrad) {
            vi = FO_FN(fo_max_nan)(vmax[i], vi);
            vmax[i] = vi;
        }
        const FO_T denom = FO_SQRT(vi) * inv_bc2s + eps;
        p[i] = pi + (nss * mi) / denom;
    }
}

static void FO_FN(adam)(int64_t n, FO_T *p, const FO_T *g, FO_T *m, FO_T *v, FO_T *vmax,
                        const fo_adam_hp *hp)
{
    const FO_T w = (FO_T)hp->lerp_weight;
    const int small = (w < (FO_T)0.5 && w > (FO_T)-0.5);
    const int l2 = hp->l2 != 0.0;
    if (vmax) {
        if (l2) {
            if (small) FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 1, 1, 1);
            else       FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 1, 1, 0);
        } else {
            if (small) FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 1, 0, 1);
            else       FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 1, 0, 0);
        }
    } else {
        if (l2) {
            if (small) FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 0, 1, 1);
            else       FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 0, 1, 0);
        } else {
            if (small) FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 0, 0, 1);
            else       FO_FN(adam_body)(n, p, g, m, v, vmax, hp, 0, 0, 0);
        }
    }
}

static FO_ALWAYS_INLINE void FO_FN(sgd_body)(
    int64_t n, FO_T *FO_RESTRICT p, const FO_T *FO_RESTRICT g, FO_T *FO_RESTRICT buf,
    const fo_sgd_hp *hp, const int l2, const int mom, const int init, const int nesterov)
{
    const FO_T sign = (FO_T)hp->sign;
    const FO_T wd = (FO_T)hp->l2;
    const FO_T mu = (FO_T)hp->momentum;
    const FO_T omd = (FO_T)hp->one_minus_dampening;
    const FO_T nlr = (FO_T)hp->neg_lr;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        FO_T gi = g[i] * sign;
        if (l2) gi = gi + wd * pi;
        if (mom) {
            const FO_T b = init ? gi : buf[i] * mu + omd * gi;
            buf[i] = b;
            gi = nesterov ? gi + mu * b : b;
        }
        p[i] = pi + nlr * gi;
    }
}

#define FO_SGD_CASE(L2, MOM, INIT, NEST) \
    FO_FN(sgd_body)(n, p, g, buf, hp, L2, MOM, INIT, NEST)

static void FO_FN(sgd)(int64_t n, FO_T *p, const FO_T *g, FO_T *buf, const fo_sgd_hp *hp)
{
    const int l2 = hp->l2 != 0.0;
    if (!buf || hp->momentum == 0.0) {
        if (l2) FO_SGD_CASE(1, 0, 0, 0); else FO_SGD_CASE(0, 0, 0, 0);
        return;
    }
    /* selector bits: l2, init, nesterov */
    switch ((l2 << 2) | ((hp->init_buffer != 0) << 1) | (hp->nesterov != 0)) {
    case 0: FO_SGD_CASE(0, 1, 0, 0); break;
    case 1: FO_SGD_CASE(0, 1, 0, 1); break;
    case 2: FO_SGD_CASE(0, 1, 1, 0); break;
    case 3: FO_SGD_CASE(0, 1, 1, 1); break;
    case 4: FO_SGD_CASE(1, 1, 0, 0); break;
    case 5: FO_SGD_CASE(1, 1, 0, 1); break;
    case 6: FO_SGD_CASE(1, 1, 1, 0); break;
    default: FO_SGD_CASE(1, 1, 1, 1); break;
    }
}
#undef FO_SGD_CASE

/* The probe: reads k streams and writes their sum to every stream but the gradient (stream 1).
 * The sum keeps every read live; its cost is negligible next to the memory traffic. */
static void FO_FN(probe)(int64_t n, FO_T *const *s, const fo_probe_hp *hp)
{
    FO_T *FO_RESTRICT a = s[0];
    const FO_T *FO_RESTRICT b = s[1];
    FO_T *FO_RESTRICT c = s[2];
    FO_T *FO_RESTRICT d = s[3];
    FO_T *FO_RESTRICT e = s[4];
    switch (hp->nstreams) {
    case 2:
        for (int64_t i = 0; i < n; i++) a[i] = a[i] + b[i];
        break;
    case 3:
        for (int64_t i = 0; i < n; i++) {
            const FO_T t = a[i] + b[i] + c[i];
            a[i] = t; c[i] = t;
        }
        break;
    case 4:
        for (int64_t i = 0; i < n; i++) {
            const FO_T t = a[i] + b[i] + c[i] + d[i];
            a[i] = t; c[i] = t; d[i] = t;
        }
        break;
    default:
        for (int64_t i = 0; i < n; i++) {
            const FO_T t = a[i] + b[i] + c[i] + d[i] + e[i];
            a[i] = t; c[i] = t; d[i] = t; e[i] = t;
        }
        break;
    }
}

#undef FO_FN
#undef FO_CAT
#undef FO_CAT_
