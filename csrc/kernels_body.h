/*
 * kernels_body.h -- the loop bodies, written once.
 *
 * Included by dispatch.c once per (dtype, instruction set) with
 *   FO_T, FO_SQRT, FO_FABS   the element type and its sqrt/fabs (float or double)
 *   FO_SFX                   the name suffix (f32_avx2, f64_baseline, ...)
 *   FO_MIXED                 1 for float: also instantiate the fused mixed-storage entries
 *                            (the storage hooks below: 16-bit streams converted in the loop)
 * and, around the include, a target pragma that lets the compiler vectorise these loops for that
 * instruction set. No intrinsics: the loops are plain C that GCC and Clang vectorise at -O3 with
 * -fno-math-errno (sqrt) and -ffp-contract=off (no FMA, so every path rounds identically).
 *
 * Per element, in torch.optim's order of operations (its single-tensor implementations); every
 * rule starts with  g = gscale*g;  [g = clamp(g, -clip, clip)];  [p = p*decay (decoupled)];
 *   [g = g + l2*p];  [g = g + l1*sgn(p)]   (gscale: -1 to maximize, times a norm-clipping factor)
 *   Adam     m = lerp(m, g, 1-b1); v = v*b2 + (1-b2)*g*g; [vmax = max(vmax, v)];
 *            p = p + (-ss*m) / (sqrt(v or vmax)*(1/bc2_sqrt) + eps)
 *            The one deliberate departure from torch's order: torch divides sqrt(v) by bc2_sqrt;
 *            fastopt multiplies by its reciprocal (computed once per step in double). The math is
 *            the same and the result differs by at most an ulp or so in the denominator, but it
 *            saves one of two divisions per element, the bottleneck of an in-cache step (~35%).
 *   SGD      [b = first ? g : b*mu + (1-d)*g; g = nesterov ? g + mu*b : b]; p = p + (-lr)*g
 *   RMSprop  v = v*a + (1-a)*g*g; [ga = lerp(ga, g, 1-a); avg = sqrt(max(v - ga*ga, 0))]
 *            else avg = sqrt(v); avg = avg + eps;
 *            [b = b*mu + g/avg; p = p + (-lr)*b]  else  p = p + (-lr*g)/avg
 *   Adagrad  s = s + g*g; p = p + (-clr*g)/(sqrt(s) + eps)
 *   Lion     c = m*b1 + (1-b1)*g; p = p + (-lr)*sgn(c); m = m*b2 + (1-b2)*g
 *   Adamax   m = lerp(m, g, 1-b1); u = max(u*b2, |g| + eps); p = p + (-clr*m)/u
 *   NAdam    m = lerp(m, g, 1-b1); v = v*b2 + (1-b2)*g*g; d = sqrt(v/bc2) + eps;
 *            p = p + (cg*g)/d; p = p + (cm*m)/d   (cg, cm from mu_t and mu_product: fo_scalars)
 *   EMA      average = lerp(average, param, 1 - decay)  (param in the gradient's slot)
 *   RAdam    m = lerp(m, g, 1-b1); v = v*b2 + (1-b2)*g*g; mb = m/bc1;
 *            p = p - ((mb*lr) * ((1/(sqrt(v)+eps))*bc2_sqrt)) * rect   if rho_t > 5
 *            p = p - mb*lr                                             otherwise
 *   Adadelta v = v*rho + (1-rho)*g*g; d = (sqrt(u + eps) / sqrt(v + eps)) * g;
 *            u = u*rho + (1-rho)*d*d; p = p + (-lr)*d
 *   Rprop    s = tsgn(g*prev) (torch.sign: 0 for +-0 and NaN); f = s>0 ? eta+ : s<0 ? eta- : s;
 *            f = f==0 ? 1 : f; ss = min(max(ss*f, ss_min), ss_max) (NaN propagates);
 *            g = f==eta- ? 0 : g; p = p + (-tsgn(g))*ss; prev = g   (torch's order of selects)
 *   ASGD     q = p*decay + (-eta)*g (decay = 1 - lambd*eta); p = q;
 *            ax = mu == 1 ? q : ax + (q - ax)*mu   (eta, mu: the tensor's scalars, fo_scalars)
 *   LAMB     m = m*b1 + (1-b1)*g; v = v*b2 + (1-b2)*g*g; u = (m/bc1)/(sqrt(v/bc2) + eps) + wd*p;
 *            p = p + (-ratio)*u, ratio = lr*|p|/|u| (norms of the tensor before the step, from a
 *            first read-only pass, lamb_reduce, that computes the same u; Apex FusedLAMB's)
 * sgn(x) is 1, -1, or x itself for +-0 and NaN (a zero does not move, a NaN propagates).
 * Optional terms are compile-time flags of always-inline bodies, so each combination becomes
 * its own branch-free loop; the L1 term is a select, cheap enough to leave in every loop.
 */
#ifndef FO_T
#error "define FO_T, FO_SQRT, FO_FABS and FO_SFX before including kernels_body.h"
#endif

#define FO_CAT_(a, b) a##_##b
#define FO_CAT(a, b) FO_CAT_(a, b)
#define FO_FN(name) FO_CAT(name, FO_SFX)

/* NaN-propagating maximum, as torch.maximum: NaN if either operand is NaN. */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_max_nan)(FO_T a, FO_T b)
{
    return (a < b || b != b) ? b : a;
}

/* 1, -1, or x itself for +-0 and NaN. */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_sgn)(FO_T x)
{
    return x > 0 ? (FO_T)1 : (x < 0 ? (FO_T)-1 : x);
}

/* torch's lerp(self, end, w): self + w*(end - self) for |w| < 0.5, else end - (end - self)*(1-w) */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_lerp)(FO_T self, FO_T end, FO_T w, FO_T one_minus_w,
                                             const int small)
{
    return small ? self + w * (end - self) : end - (end - self) * one_minus_w;
}

/* The gradient as the rule sees it: scaled (sign and norm clipping), then clamped when clipping
 * by value; a NaN stays NaN. */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_grad)(FO_T g, FO_T gscale, FO_T c, const int clip)
{
    g = g * gscale;
    if (clip) g = g > c ? c : (g < -c ? -c : g);
    return g;
}

/* The coupled regularisation terms: g + l2*p (when l2) + l1*sgn(p) (when l1). */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_coupled)(FO_T g, FO_T p, FO_T l2c, FO_T l1c, const int l2,
                                                const int l1)
{
    if (l2) g = g + l2c * p;
    if (l1) g = g + l1c * FO_FN(fo_sgn)(p);
    return g;
}

#define FO_STREAM(k) ((FO_T *)s[k])
/* The locals of the gradient terms every rule shares, read from its per-step scalars `hp`
 * (each struct has gscale, clip and l1), and the gradient as the rule sees it: scaled and
 * clamped (fo_grad), then L2 (L2C, when L2) and L1 added (fo_coupled). */
#define FO_GRAD_LOCALS                                                                     \
    const FO_T gscale = (FO_T)hp->gscale, clipv = (FO_T)hp->clip, l1c = (FO_T)hp->l1;      \
    const int clip = hp->clip != 0.0, l1 = hp->l1 != 0.0
#define FO_GRAD_F(x, pv, L2C, L2, CLIP, L1)                                                \
    FO_FN(fo_coupled)(FO_FN(fo_grad)(x, gscale, clipv, CLIP), pv, L2C, l1c, L2, L1)
#define FO_GRAD_IN(i, pv, L2C, L2) FO_GRAD_F(g[i], pv, L2C, L2, clip, l1)
#define FO_SMALL(w) ((w) < (FO_T)0.5 && (w) > (FO_T)-0.5)
/* Call BODY(n, s, hp, l2, small) with both flags as compile-time constants. */
#define FO_CALL_L2_SMALL(BODY, L2, SMALL)                                                  \
    switch (((L2) << 1) | (SMALL)) {                                                       \
    case 0: BODY(n, s, hp, 0, 0); break;                                                   \
    case 1: BODY(n, s, hp, 0, 1); break;                                                   \
    case 2: BODY(n, s, hp, 1, 0); break;                                                   \
    default: BODY(n, s, hp, 1, 1); break;                                                  \
    }

/* ---- storage hooks ------------------------------------------------------------------------
 * A body reads and writes its streams through FO_LD / FO_STO with a compile-time storage code:
 * FO_ST_NATIVE, an FO_T array (every body of the f32/f64 signatures), or FO_ST_BF16 (float32
 * bodies only, FO_MIXED), a bfloat16 array widened exactly on load (u16 << 16) and rounded to
 * nearest even on store (fo_f32_to_bf16: NaN -> the quiet NaN of its sign), the conversions of
 * storage.c's tile adapter bit for bit. Each hooked stream has an FO_T pointer x and a
 * uint16_t pointer x16 to the same array; a body uses only the one its code names. The
 * param's storage (FO_PS_*): its own array, bfloat16 carried (read, updated, rounded back), or
 * a float32 master copy in stream FO_M (read and written as the param; the bfloat16 param in
 * stream FO_P written from it, rounded to nearest even). These instantiations are the mixed
 * table's entries (dispatch.c, fo_mixed_class in storage.c): the rule's formula stays here,
 * once, and the 16-bit streams need no float32 round trip through L1. */
#define FO_LD(x, i, st) ((st) == FO_ST_BF16 ? (FO_T)fo_bf16_to_f32(x##16[i]) : x[i])
#define FO_STO(x, i, st, val)                                                              \
    do {                                                                                   \
        if ((st) == FO_ST_BF16) x##16[i] = fo_f32_to_bf16((float)(val));                   \
        else x[i] = (val);                                                                 \
    } while (0)

/* ---- Adam / AdamW ------------------------------------------------------------------------- */

/* pst: the param's storage (FO_PS_*); gst, sst: the gradient's and the states' (FO_ST_*);
 * gt: 0 when the call has neither clipping by value nor L1 (their flags are then compile-time
 * zeros: GCC unswitches the loop on those run-time flags for the native storage, but not once
 * the conversions make the loop larger, and a loop with branches does not vectorise). */
static FO_ALWAYS_INLINE void FO_FN(adam_body)(int64_t n, void *const *s, const fo_adam_hp *hp,
                                               const int amsgrad, const int l2, const int small,
                                               const int pst, const int gst, const int sst,
                                               const int gt)
{
    FO_T *FO_RESTRICT p = FO_STREAM(pst == FO_PS_MASTER ? FO_M : FO_P);
    uint16_t *FO_RESTRICT p16 = (uint16_t *)s[FO_P];
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    const uint16_t *FO_RESTRICT g16 = (const uint16_t *)s[FO_G];
    FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    uint16_t *FO_RESTRICT m16 = (uint16_t *)s[FO_S1];
    FO_T *FO_RESTRICT v = FO_STREAM(FO_S2);
    uint16_t *FO_RESTRICT v16 = (uint16_t *)s[FO_S2];
    FO_T *FO_RESTRICT vmax = FO_STREAM(FO_S3);
    uint16_t *FO_RESTRICT vmax16 = (uint16_t *)s[FO_S3];
    FO_GRAD_LOCALS;
    const FO_T decay = (FO_T)hp->decay, l2c = (FO_T)hp->l2;
    const FO_T w = (FO_T)hp->lerp_weight, omw = (FO_T)1 - w;
    const FO_T b2 = (FO_T)hp->beta2, omb2 = (FO_T)hp->one_minus_beta2;
    const FO_T eps = (FO_T)hp->eps, nss = (FO_T)hp->neg_step_size;
    const FO_T inv_bc2s = (FO_T)hp->inv_bc2_sqrt;
    const int pld = pst == FO_PS_BF16 ? FO_ST_BF16 : FO_ST_NATIVE;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = FO_LD(p, i, pld) * decay;
        const FO_T gi = FO_GRAD_F(FO_LD(g, i, gst), pi, l2c, l2, gt && clip, gt && l1);
        const FO_T mi = FO_FN(fo_lerp)(FO_LD(m, i, sst), gi, w, omw, small);
        FO_T vi = FO_LD(v, i, sst) * b2 + omb2 * gi * gi;
        FO_STO(m, i, sst, mi);
        FO_STO(v, i, sst, vi);
        if (amsgrad) {
            vi = FO_FN(fo_max_nan)(FO_LD(vmax, i, sst), vi);
            FO_STO(vmax, i, sst, vi);
        }
        const FO_T denom = FO_SQRT(vi) * inv_bc2s + eps;
        const FO_T pn = pi + (nss * mi) / denom;
        FO_STO(p, i, pld, pn);
        if (pst == FO_PS_MASTER) p16[i] = fo_f32_to_bf16((float)pn);
    }
}

static FO_ALWAYS_INLINE void FO_FN(adam_st)(int64_t n, void *const *s, const void *hpv,
                                             const int pst, const int gst, const int sst)
{
    const fo_adam_hp *hp = (const fo_adam_hp *)hpv;
    const FO_T w = (FO_T)hp->lerp_weight;
    /* (the native storage keeps one loop per flag set: gt is 1 there) */
    const int gt = pst == FO_PS_OWN || hp->clip != 0.0 || hp->l1 != 0.0;
    const int sel = (gt << 3) | ((s[FO_S3] != 0) << 2) | ((hp->l2 != 0.0) << 1) | FO_SMALL(w);
#define FO_ADAM_CASE_(k)                                                                   \
    case k:                                                                                \
        FO_FN(adam_body)(n, s, hp, (k >> 2) & 1, (k >> 1) & 1, k & 1, pst, gst, sst, k >> 3); \
        break;
    switch (sel) {
        FO_ADAM_CASE_(0) FO_ADAM_CASE_(1) FO_ADAM_CASE_(2) FO_ADAM_CASE_(3)
        FO_ADAM_CASE_(4) FO_ADAM_CASE_(5) FO_ADAM_CASE_(6) FO_ADAM_CASE_(7)
        FO_ADAM_CASE_(8) FO_ADAM_CASE_(9) FO_ADAM_CASE_(10) FO_ADAM_CASE_(11)
        FO_ADAM_CASE_(12) FO_ADAM_CASE_(13) FO_ADAM_CASE_(14) default: FO_ADAM_CASE_(15)
    }
#undef FO_ADAM_CASE_
}

static void FO_FN(adam)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    FO_FN(adam_st)(n, s, hpv, FO_PS_OWN, FO_ST_NATIVE, FO_ST_NATIVE);
}

#if FO_MIXED
/* The mixed table's Adam entries, one per storage class of FO_MIX_LIST (fastopt.h). */
#define FO_ADAM_MIX_(E, c, PST, GST, SST)                                                  \
    static void FO_FN(adam_##c)(int64_t n, int64_t index, void *const *s, const void *hpv) \
    {                                                                                      \
        (void)index;                                                                       \
        FO_FN(adam_st)(n, s, hpv, PST, GST, SST);                                          \
    }
FO_MIX_LIST(FO_ADAM_MIX_)
#undef FO_ADAM_MIX_
#endif

/* ---- SGD ---------------------------------------------------------------------------------- */

static FO_ALWAYS_INLINE void FO_FN(sgd_body)(int64_t n, void *const *s, const fo_sgd_hp *hp,
                                              const int l2, const int mom, const int init,
                                              const int nesterov)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT buf = FO_STREAM(FO_S1);
    FO_GRAD_LOCALS;
    const FO_T l2c = (FO_T)hp->l2;
    const FO_T mu = (FO_T)hp->momentum, omd = (FO_T)hp->one_minus_dampening;
    const FO_T nlr = (FO_T)hp->neg_lr;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        if (mom) {
            const FO_T b = init ? gi : buf[i] * mu + omd * gi;
            buf[i] = b;
            gi = nesterov ? gi + mu * b : b;
        }
        p[i] = pi + nlr * gi;
    }
}

static void FO_FN(sgd)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_sgd_hp *hp = (const fo_sgd_hp *)hpv;
    const int l2 = hp->l2 != 0.0;
    if (!s[FO_S1] || hp->momentum == 0.0) {
        if (l2) FO_FN(sgd_body)(n, s, hp, 1, 0, 0, 0);
        else FO_FN(sgd_body)(n, s, hp, 0, 0, 0, 0);
        return;
    }
    switch ((l2 << 2) | ((hp->init_buffer != 0) << 1) | (hp->nesterov != 0)) {
    case 0: FO_FN(sgd_body)(n, s, hp, 0, 1, 0, 0); break;
    case 1: FO_FN(sgd_body)(n, s, hp, 0, 1, 0, 1); break;
    case 2: FO_FN(sgd_body)(n, s, hp, 0, 1, 1, 0); break;
    case 3: FO_FN(sgd_body)(n, s, hp, 0, 1, 1, 1); break;
    case 4: FO_FN(sgd_body)(n, s, hp, 1, 1, 0, 0); break;
    case 5: FO_FN(sgd_body)(n, s, hp, 1, 1, 0, 1); break;
    case 6: FO_FN(sgd_body)(n, s, hp, 1, 1, 1, 0); break;
    default: FO_FN(sgd_body)(n, s, hp, 1, 1, 1, 1); break;
    }
}

/* ---- the probe ---------------------------------------------------------------------------- */
/* Reads k streams and writes their sum to every stream but the gradient (stream 1). The sum
 * keeps every read live; its cost is negligible next to the memory traffic. */

static void FO_FN(probe)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_probe_hp *hp = (const fo_probe_hp *)hpv;
    FO_T *FO_RESTRICT a = FO_STREAM(0);
    const FO_T *FO_RESTRICT b = FO_STREAM(1);
    FO_T *FO_RESTRICT c = FO_STREAM(2);
    FO_T *FO_RESTRICT d = FO_STREAM(3);
    FO_T *FO_RESTRICT e = FO_STREAM(4);
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

/* ---- RMSprop ------------------------------------------------------------------------------ */

static FO_ALWAYS_INLINE void FO_FN(rmsprop_body)(int64_t n, void *const *s,
                                                  const fo_rmsprop_hp *hp, const int l2,
                                                  const int mom, const int centered,
                                                  const int small)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT v = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT buf = FO_STREAM(FO_S2);
    FO_T *FO_RESTRICT ga = FO_STREAM(FO_S3);
    FO_GRAD_LOCALS;
    const FO_T l2c = (FO_T)hp->l2;
    const FO_T a = (FO_T)hp->alpha, oma = (FO_T)hp->one_minus_alpha, w = oma;
    const FO_T omw = (FO_T)1 - w;
    const FO_T eps = (FO_T)hp->eps, nlr = (FO_T)hp->neg_lr, mu = (FO_T)hp->momentum;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T vi = v[i] * a + oma * gi * gi;
        v[i] = vi;
        FO_T avg;
        if (centered) {
            const FO_T gai = FO_FN(fo_lerp)(ga[i], gi, w, omw, small);
            ga[i] = gai;
            /* v - mean^2 >= 0 in exact arithmetic; clamp a rounding error below 0 at 0 (torch
             * takes the square root of the negative number and returns NaN) */
            avg = FO_SQRT(FO_FN(fo_max_nan)((FO_T)0, vi - gai * gai));
        } else {
            avg = FO_SQRT(vi);
        }
        avg = avg + eps;
        if (mom) {
            const FO_T b = buf[i] * mu + gi / avg;
            buf[i] = b;
            p[i] = pi + nlr * b;
        } else {
            p[i] = pi + (nlr * gi) / avg;
        }
    }
}

static void FO_FN(rmsprop)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_rmsprop_hp *hp = (const fo_rmsprop_hp *)hpv;
    const FO_T w = (FO_T)hp->one_minus_alpha;
    const int mom = s[FO_S2] != 0 && hp->momentum != 0.0;
    const int centered = s[FO_S3] != 0 && hp->centered;
    switch (((hp->l2 != 0.0) << 3) | (mom << 2) | (centered << 1) | FO_SMALL(w)) {
    case 0: FO_FN(rmsprop_body)(n, s, hp, 0, 0, 0, 0); break;
    case 1: FO_FN(rmsprop_body)(n, s, hp, 0, 0, 0, 1); break;
    case 2: FO_FN(rmsprop_body)(n, s, hp, 0, 0, 1, 0); break;
    case 3: FO_FN(rmsprop_body)(n, s, hp, 0, 0, 1, 1); break;
    case 4: FO_FN(rmsprop_body)(n, s, hp, 0, 1, 0, 0); break;
    case 5: FO_FN(rmsprop_body)(n, s, hp, 0, 1, 0, 1); break;
    case 6: FO_FN(rmsprop_body)(n, s, hp, 0, 1, 1, 0); break;
    case 7: FO_FN(rmsprop_body)(n, s, hp, 0, 1, 1, 1); break;
    case 8: FO_FN(rmsprop_body)(n, s, hp, 1, 0, 0, 0); break;
    case 9: FO_FN(rmsprop_body)(n, s, hp, 1, 0, 0, 1); break;
    case 10: FO_FN(rmsprop_body)(n, s, hp, 1, 0, 1, 0); break;
    case 11: FO_FN(rmsprop_body)(n, s, hp, 1, 0, 1, 1); break;
    case 12: FO_FN(rmsprop_body)(n, s, hp, 1, 1, 0, 0); break;
    case 13: FO_FN(rmsprop_body)(n, s, hp, 1, 1, 0, 1); break;
    case 14: FO_FN(rmsprop_body)(n, s, hp, 1, 1, 1, 0); break;
    default: FO_FN(rmsprop_body)(n, s, hp, 1, 1, 1, 1); break;
    }
}

/* ---- Adagrad ------------------------------------------------------------------------------ */

static FO_ALWAYS_INLINE void FO_FN(adagrad_body)(int64_t n, void *const *s,
                                                  const fo_adagrad_hp *hp, const int l2)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT sum = FO_STREAM(FO_S1);
    FO_GRAD_LOCALS;
    const FO_T l2c = (FO_T)hp->l2;
    const FO_T eps = (FO_T)hp->eps, nclr = (FO_T)hp->neg_clr;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T si = sum[i] + gi * gi;
        sum[i] = si;
        p[i] = pi + (nclr * gi) / (FO_SQRT(si) + eps);
    }
}

static void FO_FN(adagrad)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_adagrad_hp *hp = (const fo_adagrad_hp *)hpv;
    if (hp->l2 != 0.0) FO_FN(adagrad_body)(n, s, hp, 1);
    else FO_FN(adagrad_body)(n, s, hp, 0);
}

/* ---- Lion --------------------------------------------------------------------------------- */

static void FO_FN(lion)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_lion_hp *hp = (const fo_lion_hp *)hpv;
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    FO_GRAD_LOCALS;
    const FO_T decay = (FO_T)hp->decay;
    const FO_T b1 = (FO_T)hp->beta1, omb1 = (FO_T)hp->one_minus_beta1;
    const FO_T b2 = (FO_T)hp->beta2, omb2 = (FO_T)hp->one_minus_beta2;
    const FO_T nlr = (FO_T)hp->neg_lr;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i] * decay;
        const FO_T gi = FO_GRAD_IN(i, pi, 0, 0);
        const FO_T mi = m[i];
        const FO_T c = mi * b1 + omb1 * gi;
        p[i] = pi + nlr * FO_FN(fo_sgn)(c);
        m[i] = mi * b2 + omb2 * gi;
    }
}

/* ---- Adamax ------------------------------------------------------------------------------- */

static FO_ALWAYS_INLINE void FO_FN(adamax_body)(int64_t n, void *const *s,
                                                 const fo_adamax_hp *hp, const int l2,
                                                 const int small)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT u = FO_STREAM(FO_S2);
    FO_GRAD_LOCALS;
    const FO_T l2c = (FO_T)hp->l2;
    const FO_T w = (FO_T)hp->lerp_weight, omw = (FO_T)1 - w;
    const FO_T b2 = (FO_T)hp->beta2, eps = (FO_T)hp->eps, nclr = (FO_T)hp->neg_clr;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T mi = FO_FN(fo_lerp)(m[i], gi, w, omw, small);
        const FO_T ui = FO_FN(fo_max_nan)(u[i] * b2, FO_FABS(gi) + eps);
        m[i] = mi;
        u[i] = ui;
        p[i] = pi + (nclr * mi) / ui;
    }
}

static void FO_FN(adamax)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_adamax_hp *hp = (const fo_adamax_hp *)hpv;
    const FO_T w = (FO_T)hp->lerp_weight;
    FO_CALL_L2_SMALL(FO_FN(adamax_body), hp->l2 != 0.0, FO_SMALL(w));
}

/* ---- RAdam -------------------------------------------------------------------------------- */

static FO_ALWAYS_INLINE void FO_FN(radam_body)(int64_t n, void *const *s, const fo_radam_hp *hp,
                                                const int l2, const int small, const int rectify)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT v = FO_STREAM(FO_S2);
    FO_GRAD_LOCALS;
    const FO_T decay = (FO_T)hp->decay, l2c = (FO_T)hp->l2;
    const FO_T w = (FO_T)hp->lerp_weight, omw = (FO_T)1 - w;
    const FO_T b2 = (FO_T)hp->beta2, omb2 = (FO_T)hp->one_minus_beta2, eps = (FO_T)hp->eps;
    const FO_T bc1 = (FO_T)hp->bias_correction1, lr = (FO_T)hp->lr;
    const FO_T bc2s = (FO_T)hp->bc2_sqrt, rect = (FO_T)hp->rect;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i] * decay;
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T mi = FO_FN(fo_lerp)(m[i], gi, w, omw, small);
        const FO_T vi = v[i] * b2 + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const FO_T mb = mi / bc1;
        if (rectify) {
            const FO_T adaptive = ((FO_T)1 / (FO_SQRT(vi) + eps)) * bc2s;
            p[i] = pi - ((mb * lr) * adaptive) * rect;
        } else {
            p[i] = pi - mb * lr;
        }
    }
}

static void FO_FN(radam)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_radam_hp *hp = (const fo_radam_hp *)hpv;
    const FO_T w = (FO_T)hp->lerp_weight;
    switch (((hp->l2 != 0.0) << 2) | (FO_SMALL(w) << 1) | (hp->rectify != 0)) {
    case 0: FO_FN(radam_body)(n, s, hp, 0, 0, 0); break;
    case 1: FO_FN(radam_body)(n, s, hp, 0, 0, 1); break;
    case 2: FO_FN(radam_body)(n, s, hp, 0, 1, 0); break;
    case 3: FO_FN(radam_body)(n, s, hp, 0, 1, 1); break;
    case 4: FO_FN(radam_body)(n, s, hp, 1, 0, 0); break;
    case 5: FO_FN(radam_body)(n, s, hp, 1, 0, 1); break;
    case 6: FO_FN(radam_body)(n, s, hp, 1, 1, 0); break;
    default: FO_FN(radam_body)(n, s, hp, 1, 1, 1); break;
    }
}

/* ---- NAdam ------------------------------------------------------------------------------- */

static FO_ALWAYS_INLINE void FO_FN(nadam_body)(int64_t n, void *const *s, const fo_nadam_hp *hp,
                                                const int l2, const int small)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT v = FO_STREAM(FO_S2);
    FO_GRAD_LOCALS;
    const FO_T decay = (FO_T)hp->decay, l2c = (FO_T)hp->l2;
    const FO_T w = (FO_T)hp->lerp_weight, omw = (FO_T)1 - w;
    const FO_T b2 = (FO_T)hp->beta2, omb2 = (FO_T)hp->one_minus_beta2, eps = (FO_T)hp->eps;
    const FO_T bc2 = (FO_T)hp->bias_correction2;
    const FO_T cg = (FO_T)hp->coef_grad, cm = (FO_T)hp->coef_avg;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i] * decay;
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T mi = FO_FN(fo_lerp)(m[i], gi, w, omw, small);
        const FO_T vi = v[i] * b2 + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const FO_T denom = FO_SQRT(vi / bc2) + eps;
        const FO_T q = pi + (cg * gi) / denom;
        p[i] = q + (cm * mi) / denom;
    }
}

static void FO_FN(nadam)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_nadam_hp *hp = (const fo_nadam_hp *)hpv;
    const FO_T w = (FO_T)hp->lerp_weight;
    FO_CALL_L2_SMALL(FO_FN(nadam_body), hp->l2 != 0.0, FO_SMALL(w));
}

/* ---- EMA of parameters: average = lerp(average, param, 1 - decay) -------------------------- */

static FO_ALWAYS_INLINE void FO_FN(ema_body)(int64_t n, void *const *s, const fo_ema_hp *hp,
                                              const int small)
{
    FO_T *FO_RESTRICT avg = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT p = FO_STREAM(FO_G);
    const FO_T w = (FO_T)hp->lerp_weight, omw = (FO_T)1 - w;
    for (int64_t i = 0; i < n; i++) avg[i] = FO_FN(fo_lerp)(avg[i], p[i], w, omw, small);
}

static void FO_FN(ema)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_ema_hp *hp = (const fo_ema_hp *)hpv;
    const FO_T w = (FO_T)hp->lerp_weight;
    if (FO_SMALL(w)) FO_FN(ema_body)(n, s, hp, 1);
    else FO_FN(ema_body)(n, s, hp, 0);
}

/* ---- Adadelta ---------------------------------------------------------------------------- */
/* These loops take clip and l1 as compile-time flags too (FO_CALL_FLAGS3): with them as
 * run-time values GCC leaves the loops scalar ("control flow in loop"), ~8x slower. */

#define FO_FLAG_LOCALS                                                                     \
    const FO_T gscale = (FO_T)hp->gscale, clipv = (FO_T)hp->clip, l1c = (FO_T)hp->l1
/* Call BODY(n, s, hp, a, b, c) with three flags as compile-time constants. */
#define FO_CALL_FLAGS3(BODY, A, B, C)                                                      \
    switch (((A) << 2) | ((B) << 1) | (C)) {                                               \
    case 0: BODY(n, s, hp, 0, 0, 0); break;                                                \
    case 1: BODY(n, s, hp, 0, 0, 1); break;                                                \
    case 2: BODY(n, s, hp, 0, 1, 0); break;                                                \
    case 3: BODY(n, s, hp, 0, 1, 1); break;                                                \
    case 4: BODY(n, s, hp, 1, 0, 0); break;                                                \
    case 5: BODY(n, s, hp, 1, 0, 1); break;                                                \
    case 6: BODY(n, s, hp, 1, 1, 0); break;                                                \
    default: BODY(n, s, hp, 1, 1, 1); break;                                               \
    }

static FO_ALWAYS_INLINE void FO_FN(adadelta_body)(int64_t n, void *const *s,
                                                   const fo_adadelta_hp *hp, const int l2,
                                                   const int clip, const int l1)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT v = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT u = FO_STREAM(FO_S2);
    FO_FLAG_LOCALS;
    const FO_T l2c = (FO_T)hp->l2;
    const FO_T rho = (FO_T)hp->rho, omr = (FO_T)hp->one_minus_rho;
    const FO_T eps = (FO_T)hp->eps, nlr = (FO_T)hp->neg_lr;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T vi = v[i] * rho + omr * gi * gi;
        const FO_T ui = u[i];
        const FO_T d = (FO_SQRT(ui + eps) / FO_SQRT(vi + eps)) * gi;
        v[i] = vi;
        u[i] = ui * rho + omr * d * d;
        p[i] = pi + nlr * d;
    }
}

static void FO_FN(adadelta)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_adadelta_hp *hp = (const fo_adadelta_hp *)hpv;
    FO_CALL_FLAGS3(FO_FN(adadelta_body), hp->l2 != 0.0, hp->clip != 0.0, hp->l1 != 0.0);
}

/* ---- Rprop ------------------------------------------------------------------------------- */

/* torch.sign: 1, -1, or +0 for +-0 and NaN (unlike fo_sgn, a NaN gives 0). Written as
 * torch writes it, (0 < x) - (x < 0): GCC if-converts this but not the nested select, and
 * leaves the loop scalar with the latter (~6x slower). */
static FO_ALWAYS_INLINE FO_T FO_FN(fo_tsgn)(FO_T x)
{
    return (FO_T)(x > 0) - (FO_T)(x < 0);
}

static FO_ALWAYS_INLINE void FO_FN(rprop_body)(int64_t n, void *const *s,
                                                const fo_rprop_hp *hp, const int unused,
                                                const int clip, const int l1)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT prev = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT ss = FO_STREAM(FO_S2);
    FO_FLAG_LOCALS;
    (void)unused;
    const FO_T em = (FO_T)hp->etaminus, ep = (FO_T)hp->etaplus;
    const FO_T lo = (FO_T)hp->step_size_min, hi = (FO_T)hp->step_size_max;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, 0, 0);
        /* torch: sign = sign(g*prev); sign[sign>0] = eta+; sign[sign<0] = eta-; sign[sign==0] = 1 */
        FO_T f = FO_FN(fo_tsgn)(gi * prev[i]);
        f = f > 0 ? ep : f;
        f = f < 0 ? em : f;
        f = f == 0 ? (FO_T)1 : f;
        FO_T si = ss[i] * f;
        si = si < lo ? lo : si;            /* clamp_(min, max): NaN stays NaN */
        si = si > hi ? hi : si;
        const FO_T gz = f == em ? (FO_T)0 : gi;
        ss[i] = si;
        prev[i] = gz;
        p[i] = pi + (-FO_FN(fo_tsgn)(gz)) * si;
    }
}

static void FO_FN(rprop)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_rprop_hp *hp = (const fo_rprop_hp *)hpv;
    FO_CALL_FLAGS3(FO_FN(rprop_body), 0, hp->clip != 0.0, hp->l1 != 0.0);
}

/* ---- ASGD -------------------------------------------------------------------------------- */

static FO_ALWAYS_INLINE void FO_FN(asgd_body)(int64_t n, void *const *s, const fo_asgd_hp *hp,
                                               const int l2, const int copy_avg)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT ax = FO_STREAM(FO_S1);
    FO_GRAD_LOCALS;
    const FO_T l2c = (FO_T)hp->l2;
    const FO_T decay = (FO_T)hp->decay, neta = (FO_T)hp->neg_eta, mu = (FO_T)hp->mu;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, l2c, l2);
        const FO_T q = pi * decay + neta * gi;
        p[i] = q;
        ax[i] = copy_avg ? q : ax[i] + (q - ax[i]) * mu;
    }
}

static void FO_FN(asgd)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_asgd_hp *hp = (const fo_asgd_hp *)hpv;
    switch (((hp->l2 != 0.0) << 1) | (hp->copy_avg != 0)) {
    case 0: FO_FN(asgd_body)(n, s, hp, 0, 0); break;
    case 1: FO_FN(asgd_body)(n, s, hp, 0, 1); break;
    case 2: FO_FN(asgd_body)(n, s, hp, 1, 0); break;
    default: FO_FN(asgd_body)(n, s, hp, 1, 1); break;
    }
}

/* ---- LAMB -------------------------------------------------------------------------------- */
/* Two passes over the same per-element update u (same operations, same bits): lamb_reduce
 * sums p*p and u*u in float64 (read-only), the driver turns the sums into the trust ratio,
 * then lamb writes the moments and the param. */

static FO_ALWAYS_INLINE FO_T FO_FN(lamb_u)(FO_T pi, FO_T gi, FO_T mo, FO_T vo, FO_T b1, FO_T omb1,
                                            FO_T b2, FO_T omb2, FO_T bc1, FO_T bc2, FO_T eps,
                                            FO_T wd, FO_T *mi, FO_T *vi)
{
    *mi = mo * b1 + omb1 * gi;
    *vi = vo * b2 + omb2 * gi * gi;
    return (*mi / bc1) / (FO_SQRT(*vi / bc2) + eps) + wd * pi;
}

#define FO_LAMB_LOCALS                                                                     \
    const FO_T b1 = (FO_T)hp->beta1, omb1 = (FO_T)hp->one_minus_beta1;                     \
    const FO_T b2 = (FO_T)hp->beta2, omb2 = (FO_T)hp->one_minus_beta2;                     \
    const FO_T bc1 = (FO_T)hp->bias_correction1, bc2 = (FO_T)hp->bias_correction2;         \
    const FO_T eps = (FO_T)hp->eps, wd = (FO_T)hp->weight_decay

static FO_ALWAYS_INLINE void FO_FN(lamb_body)(int64_t n, void *const *s, const fo_lamb_hp *hp,
                                               const int unused, const int clip, const int l1)
{
    FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    FO_T *FO_RESTRICT v = FO_STREAM(FO_S2);
    FO_FLAG_LOCALS;
    FO_LAMB_LOCALS;
    const FO_T nr = (FO_T)hp->neg_ratio;
    (void)unused;
    for (int64_t i = 0; i < n; i++) {
        const FO_T pi = p[i];
        const FO_T gi = FO_GRAD_IN(i, pi, 0, 0);
        FO_T mi, vi;
        const FO_T u = FO_FN(lamb_u)(pi, gi, m[i], v[i], b1, omb1, b2, omb2, bc1, bc2, eps, wd,
                                     &mi, &vi);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + nr * u;
    }
}

static void FO_FN(lamb)(int64_t n, int64_t index, void *const *s, const void *hpv)
{
    (void)index;
    const fo_lamb_hp *hp = (const fo_lamb_hp *)hpv;
    FO_CALL_FLAGS3(FO_FN(lamb_body), 0, hp->clip != 0.0, hp->l1 != 0.0);
}

/* out[0] = sum of p*p, out[1] = sum of u*u over n elements, in float64: element i to
 * accumulator i % 8, each accumulator adding in order, the eight combined pairwise
 * (fo_norm_block's order). Chunks of 256 elements: u computed into a buffer (a loop like the
 * step's, which vectorises), then accumulated; 256 is a multiple of 8, so element i still goes
 * to accumulator i % 8. clip and l1 are compile-time flags, as in the step's loops. */
static FO_ALWAYS_INLINE void FO_FN(lamb_reduce_body)(int64_t n, void *const *s,
                                                      const fo_lamb_hp *hp, double *out,
                                                      const int clip, const int l1)
{
    const FO_T *FO_RESTRICT p = FO_STREAM(FO_P);
    const FO_T *FO_RESTRICT g = FO_STREAM(FO_G);
    const FO_T *FO_RESTRICT m = FO_STREAM(FO_S1);
    const FO_T *FO_RESTRICT v = FO_STREAM(FO_S2);
    FO_FLAG_LOCALS;
    FO_LAMB_LOCALS;
    double ap[8] = {0, 0, 0, 0, 0, 0, 0, 0}, au[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    FO_T ub[256];
    for (int64_t c = 0; c < n; c += 256) {
        const int64_t len = n - c < 256 ? n - c : 256;
        const FO_T *FO_RESTRICT pc = p + c;
        for (int64_t j = 0; j < len; j++) {
            const FO_T pi = pc[j];
            const FO_T gi = FO_GRAD_IN(c + j, pi, 0, 0);
            FO_T mi, vi;
            ub[j] = FO_FN(lamb_u)(pi, gi, m[c + j], v[c + j], b1, omb1, b2, omb2, bc1, bc2,
                                  eps, wd, &mi, &vi);
        }
        int64_t j = 0;
        for (; j + 8 <= len; j += 8)
            for (int k = 0; k < 8; k++) {
                const double pd = (double)pc[j + k], ud = (double)ub[j + k];
                ap[k] = ap[k] + pd * pd;
                au[k] = au[k] + ud * ud;
            }
        for (int k = 0; j < len; j++, k++) {
            const double pd = (double)pc[j], ud = (double)ub[j];
            ap[k] = ap[k] + pd * pd;
            au[k] = au[k] + ud * ud;
        }
    }
    out[0] = ((ap[0] + ap[1]) + (ap[2] + ap[3])) + ((ap[4] + ap[5]) + (ap[6] + ap[7]));
    out[1] = ((au[0] + au[1]) + (au[2] + au[3])) + ((au[4] + au[5]) + (au[6] + au[7]));
}

static void FO_FN(lamb_reduce)(int64_t n, void *const *s, const fo_lamb_hp *hp, double *out)
{
    switch (((hp->clip != 0.0) << 1) | (hp->l1 != 0.0)) {
    case 0: FO_FN(lamb_reduce_body)(n, s, hp, out, 0, 0); break;
    case 1: FO_FN(lamb_reduce_body)(n, s, hp, out, 0, 1); break;
    case 2: FO_FN(lamb_reduce_body)(n, s, hp, out, 1, 0); break;
    default: FO_FN(lamb_reduce_body)(n, s, hp, out, 1, 1); break;
    }
}

#undef FO_LAMB_LOCALS
#undef FO_STREAM
#undef FO_FLAG_LOCALS
#undef FO_CALL_FLAGS3
#undef FO_GRAD_LOCALS
#undef FO_GRAD_IN
#undef FO_GRAD_F
#undef FO_LD
#undef FO_STO
#undef FO_SMALL
#undef FO_CALL_L2_SMALL
#undef FO_FN
#undef FO_CAT
#undef FO_CAT_
