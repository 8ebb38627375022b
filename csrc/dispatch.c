/*
 * dispatch.c -- instantiates the loop bodies per dtype and instruction set, picks one at run
 * time, and derives the per-step scalars.
 *
 * Portability: the translation unit is compiled for the platform baseline (no -march flag).
 * The AVX2 and AVX-512 copies are compiled under `#pragma GCC target` (GCC and Clang on x86-64)
 * and only ever called after fo_isa_supported() has confirmed that the CPU and the OS (through
 * the compiler's cpuid/xgetbv checks) support them. Elsewhere (MSVC, arm64, ...) only the
 * baseline table exists; on arm64 the baseline already includes NEON.
 *
 * FASTOPT_ISA (read by the Python layer at import) may force "baseline", "avx2" or "avx512".
 */
#include <math.h>
#include <string.h>
#include "fastopt.h"

#if defined(__GNUC__) || defined(__clang__)
#define FO_ALWAYS_INLINE inline __attribute__((always_inline))
#define FO_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define FO_ALWAYS_INLINE __forceinline
#define FO_RESTRICT __restrict
#else
#define FO_ALWAYS_INLINE inline
#define FO_RESTRICT
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FO_X86_DISPATCH 1
#else
#define FO_X86_DISPATCH 0
#endif

/* ---- instantiation: baseline, then (x86-64 with GCC/Clang) AVX2 and AVX-512 ------------ */
#define FO_T float
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_SFX f32_baseline
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#define FO_T double
#define FO_SQRT sqrt
#define FO_FABS fabs
#define FO_SFX f64_baseline
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX

#if FO_X86_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define FO_T float
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_SFX f32_avx2
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#define FO_T double
#define FO_SQRT sqrt
#define FO_FABS fabs
#define FO_SFX f64_avx2
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,prefer-vector-width=512")
#endif
#define FO_T float
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_SFX f32_avx512
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#define FO_T double
#define FO_SQRT sqrt
#define FO_FABS fabs
#define FO_SFX f64_avx512
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* FO_X86_DISPATCH */

/* One table per instruction set, indexed by rule (the order of the FO_RULE_ enum). */
#define FO_RULES(dt, isa)                                                                  \
    {                                                                                      \
        sgd_##dt##_##isa, adam_##dt##_##isa, probe_##dt##_##isa, rmsprop_##dt##_##isa,     \
            adagrad_##dt##_##isa, lion_##dt##_##isa, adamax_##dt##_##isa,                  \
            radam_##dt##_##isa, ema_##dt##_##isa, nadam_##dt##_##isa                       \
    }
#define FO_TABLE(isa) {#isa, FO_RULES(f32, isa), FO_RULES(f64, isa)}

static const fo_kernel_table fo_tables[] = {
    FO_TABLE(baseline),
#if FO_X86_DISPATCH
    FO_TABLE(avx2),
    FO_TABLE(avx512),
#endif
};
#define FO_NTABLES ((int)(sizeof(fo_tables) / sizeof(fo_tables[0])))

static const char *const fo_table_names[] = {
    "baseline",
#if FO_X86_DISPATCH
    "avx2",
    "avx512",
#endif
};

static const fo_kernel_table *fo_active = &fo_tables[0];

const char *const *fo_isa_compiled(int *count)
{
    *count = FO_NTABLES;
    return fo_table_names;
}

int fo_isa_supported(const char *name)
{
    if (!name) return 0;
    if (strcmp(name, "baseline") == 0) return 1;
#if FO_X86_DISPATCH
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2") != 0;
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512vl") != 0;
#endif
    return 0;
}

int fo_isa_select(const char *name)
{
    if (!name || strcmp(name, "auto") == 0) {
        for (int i = FO_NTABLES - 1; i >= 0; i--) {
            if (fo_isa_supported(fo_tables[i].name)) {
                fo_active = &fo_tables[i];
                return 0;
            }
        }
        fo_active = &fo_tables[0];
        return 0;
    }
    for (int i = 0; i < FO_NTABLES; i++) {
        if (strcmp(name, fo_tables[i].name) == 0 && fo_isa_supported(name)) {
            fo_active = &fo_tables[i];
            return 0;
        }
    }
    return -1;
}

const fo_kernel_table *fo_isa_active(void) { return fo_active; }

/* ---- per-step scalars: everything that depends only on the group and the step ---------- */

/* The gradient's factor: the norm-clipping coefficient, negated when maximizing. */
static double fo_gscale(double maximize, double scale) { return maximize != 0.0 ? -scale : scale; }

static void fo_adam_scalars(fo_adam_hp *hp, const double *a, int64_t step)
{
    const double lr = a[FO_ADAM_LR], beta1 = a[FO_ADAM_BETA1], beta2 = a[FO_ADAM_BETA2];
    const double wd = a[FO_ADAM_WD];
    const int decoupled = a[FO_ADAM_DECOUPLED] != 0.0;
    const double bias_correction1 = 1.0 - pow(beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(beta2, (double)step);
    hp->gscale = fo_gscale(a[FO_ADAM_MAXIMIZE], a[FO_ADAM_GSCALE]);
    hp->clip = a[FO_ADAM_CLIP];
    hp->l2 = decoupled ? 0.0 : wd;
    hp->l1 = a[FO_ADAM_L1];
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a[FO_ADAM_EPS];
    hp->neg_step_size = -(lr / bias_correction1);
    hp->inv_bc2_sqrt = 1.0 / pow(bias_correction2, 0.5); /* torch: bias_correction2 ** 0.5 */
}

static void fo_sgd_scalars(fo_sgd_hp *hp, const double *a, int64_t step)
{
    hp->gscale = fo_gscale(a[FO_SGD_MAXIMIZE], a[FO_SGD_GSCALE]);
    hp->clip = a[FO_SGD_CLIP];
    hp->l2 = a[FO_SGD_WD];
    hp->l1 = a[FO_SGD_L1];
    hp->neg_lr = -a[FO_SGD_LR];
    hp->momentum = a[FO_SGD_MOMENTUM];
    hp->one_minus_dampening = 1.0 - a[FO_SGD_DAMPENING];
    hp->nesterov = a[FO_SGD_NESTEROV] != 0.0;
    hp->init_buffer = step <= 1;
}

static void fo_probe_scalars(fo_probe_hp *hp, const double *a)
{
    hp->nstreams = (int)a[FO_PROBE_NSTREAMS];
}

static void fo_rmsprop_scalars(fo_rmsprop_hp *hp, const double *a)
{
    hp->gscale = fo_gscale(a[FO_RMSPROP_MAXIMIZE], a[FO_RMSPROP_GSCALE]);
    hp->clip = a[FO_RMSPROP_CLIP];
    hp->l2 = a[FO_RMSPROP_WD];
    hp->l1 = a[FO_RMSPROP_L1];
    hp->alpha = a[FO_RMSPROP_ALPHA];
    hp->one_minus_alpha = 1.0 - a[FO_RMSPROP_ALPHA];
    hp->eps = a[FO_RMSPROP_EPS];
    hp->neg_lr = -a[FO_RMSPROP_LR];
    hp->momentum = a[FO_RMSPROP_MOMENTUM];
    hp->centered = a[FO_RMSPROP_CENTERED] != 0.0;
}

static void fo_adagrad_scalars(fo_adagrad_hp *hp, const double *a, int64_t step)
{
    hp->gscale = fo_gscale(a[FO_ADAGRAD_MAXIMIZE], a[FO_ADAGRAD_GSCALE]);
    hp->clip = a[FO_ADAGRAD_CLIP];
    hp->l2 = a[FO_ADAGRAD_WD];
    hp->l1 = a[FO_ADAGRAD_L1];
    hp->eps = a[FO_ADAGRAD_EPS];
    hp->neg_clr = -(a[FO_ADAGRAD_LR] / (1.0 + (double)(step - 1) * a[FO_ADAGRAD_LR_DECAY]));
}

static void fo_lion_scalars(fo_lion_hp *hp, const double *a)
{
    const double lr = a[FO_LION_LR];
    hp->gscale = fo_gscale(a[FO_LION_MAXIMIZE], a[FO_LION_GSCALE]);
    hp->clip = a[FO_LION_CLIP];
    hp->l1 = a[FO_LION_L1];
    hp->decay = 1.0 - lr * a[FO_LION_WD];
    hp->beta1 = a[FO_LION_BETA1];
    hp->one_minus_beta1 = 1.0 - a[FO_LION_BETA1];
    hp->beta2 = a[FO_LION_BETA2];
    hp->one_minus_beta2 = 1.0 - a[FO_LION_BETA2];
    hp->neg_lr = -lr;
}

static void fo_adamax_scalars(fo_adamax_hp *hp, const double *a, int64_t step)
{
    hp->gscale = fo_gscale(a[FO_ADAMAX_MAXIMIZE], a[FO_ADAMAX_GSCALE]);
    hp->clip = a[FO_ADAMAX_CLIP];
    hp->l2 = a[FO_ADAMAX_WD];
    hp->l1 = a[FO_ADAMAX_L1];
    hp->lerp_weight = 1.0 - a[FO_ADAMAX_BETA1];
    hp->beta2 = a[FO_ADAMAX_BETA2];
    hp->eps = a[FO_ADAMAX_EPS];
    hp->neg_clr = -(a[FO_ADAMAX_LR] / (1.0 - pow(a[FO_ADAMAX_BETA1], (double)step)));
}

static void fo_radam_scalars(fo_radam_hp *hp, const double *a, int64_t step)
{
    const double lr = a[FO_RADAM_LR], beta1 = a[FO_RADAM_BETA1], beta2 = a[FO_RADAM_BETA2];
    const double wd = a[FO_RADAM_WD];
    const int decoupled = a[FO_RADAM_DECOUPLED] != 0.0;
    const double t = (double)step;
    const double bias_correction1 = 1.0 - pow(beta1, t);
    const double bias_correction2 = 1.0 - pow(beta2, t);
    /* torch's expressions, in its order */
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * t * pow(beta2, t) / bias_correction2;
    hp->gscale = fo_gscale(a[FO_RADAM_MAXIMIZE], a[FO_RADAM_GSCALE]);
    hp->clip = a[FO_RADAM_CLIP];
    hp->l2 = decoupled ? 0.0 : wd;
    hp->l1 = a[FO_RADAM_L1];
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a[FO_RADAM_EPS];
    hp->bias_correction1 = bias_correction1;
    hp->lr = lr;
    hp->bc2_sqrt = pow(bias_correction2, 0.5);
    hp->rectify = rho_t > 5.0;
    hp->rect = hp->rectify
        ? pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
              0.5)
        : 1.0;
}

/* NAdam: torch's expressions in its order. mu_product is torch's float32 scalar tensor:
 * `mu_product *= mu` is a float32 multiplication, kept here bit for bit (it changes the
 * result by more than float64's rounding). */
static void fo_nadam_scalars(fo_nadam_hp *hp, const double *a, int64_t step, double *aux)
{
    const double lr = a[FO_NADAM_LR], beta1 = a[FO_NADAM_BETA1], beta2 = a[FO_NADAM_BETA2];
    const double wd = a[FO_NADAM_WD], md = a[FO_NADAM_MOMENTUM_DECAY];
    const int decoupled = a[FO_NADAM_DECOUPLED] != 0.0;
    const double t = (double)step;
    const double mu = beta1 * (1.0 - 0.5 * pow(0.96, t * md));
    const double mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * md));
    const float mu_product = (float)*aux * (float)mu;
    const double mu_product_next = (double)mu_product * mu_next;
    *aux = (double)mu_product;
    hp->gscale = fo_gscale(a[FO_NADAM_MAXIMIZE], a[FO_NADAM_GSCALE]);
    hp->clip = a[FO_NADAM_CLIP];
    hp->l2 = decoupled ? 0.0 : wd;
    hp->l1 = a[FO_NADAM_L1];
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a[FO_NADAM_EPS];
    hp->bias_correction2 = 1.0 - pow(beta2, t);
    hp->coef_grad = -lr * (1.0 - mu) / (1.0 - (double)mu_product);
    hp->coef_avg = (-lr * mu_next) / (1.0 - mu_product_next);
}

int fo_has_aux(int rule) { return rule == FO_RULE_NADAM; }

static void fo_ema_scalars(fo_ema_hp *hp, const double *a)
{
    hp->lerp_weight = 1.0 - a[FO_EMA_DECAY];
}

size_t fo_hp_size(int rule)
{
    switch (rule) {
    case FO_RULE_EMA: return sizeof(fo_ema_hp);
    case FO_RULE_NADAM: return sizeof(fo_nadam_hp);
    case FO_RULE_SGD: return sizeof(fo_sgd_hp);
    case FO_RULE_ADAM: return sizeof(fo_adam_hp);
    case FO_RULE_RMSPROP: return sizeof(fo_rmsprop_hp);
    case FO_RULE_ADAGRAD: return sizeof(fo_adagrad_hp);
    case FO_RULE_LION: return sizeof(fo_lion_hp);
    case FO_RULE_ADAMAX: return sizeof(fo_adamax_hp);
    case FO_RULE_RADAM: return sizeof(fo_radam_hp);
    default: return sizeof(fo_probe_hp);
    }
}

int fo_nargs(int rule)
{
    switch (rule) {
    case FO_RULE_EMA: return FO_EMA_NARGS;
    case FO_RULE_NADAM: return FO_NADAM_NARGS;
    case FO_RULE_SGD: return FO_SGD_NARGS;
    case FO_RULE_ADAM: return FO_ADAM_NARGS;
    case FO_RULE_RMSPROP: return FO_RMSPROP_NARGS;
    case FO_RULE_ADAGRAD: return FO_ADAGRAD_NARGS;
    case FO_RULE_LION: return FO_LION_NARGS;
    case FO_RULE_ADAMAX: return FO_ADAMAX_NARGS;
    case FO_RULE_RADAM: return FO_RADAM_NARGS;
    default: return FO_PROBE_NARGS;
    }
}

void fo_scalars(int rule, void *hp, const double *args, int64_t step, double *aux)
{
    switch (rule) {
    case FO_RULE_SGD: fo_sgd_scalars((fo_sgd_hp *)hp, args, step); break;
    case FO_RULE_ADAM: fo_adam_scalars((fo_adam_hp *)hp, args, step); break;
    case FO_RULE_RMSPROP: fo_rmsprop_scalars((fo_rmsprop_hp *)hp, args); break;
    case FO_RULE_ADAGRAD: fo_adagrad_scalars((fo_adagrad_hp *)hp, args, step); break;
    case FO_RULE_LION: fo_lion_scalars((fo_lion_hp *)hp, args); break;
    case FO_RULE_ADAMAX: fo_adamax_scalars((fo_adamax_hp *)hp, args, step); break;
    case FO_RULE_RADAM: fo_radam_scalars((fo_radam_hp *)hp, args, step); break;
    case FO_RULE_EMA: fo_ema_scalars((fo_ema_hp *)hp, args); break;
    case FO_RULE_NADAM: fo_nadam_scalars((fo_nadam_hp *)hp, args, step, aux); break;
    default: fo_probe_scalars((fo_probe_hp *)hp, args); break;
    }
}

/* ---- segments ---------------------------------------------------------------------------- */

static void fo_run_one(int rule, int is_f64, int64_t off, int64_t n, void *const *ptrs,
                       const void *hp)
{
    const fo_kernel_table *t = fo_active;
    const size_t esz = is_f64 ? sizeof(double) : sizeof(float);
    void *s[FO_MAX_STREAMS];
    for (int k = 0; k < FO_MAX_STREAMS; k++)
        s[k] = ptrs[k] ? (char *)ptrs[k] + (size_t)off * esz : (void *)0;
    (is_f64 ? t->f64 : t->f32)[rule](n, s, hp);
}

/* NumPy's allocations are only 16-byte aligned, and a vector body over misaligned streams splits
 * loads and stores across cache lines: measured here, a 1e6-element float32 Adam step takes
 * ~40% longer when its arrays start 32 bytes off a 64-byte boundary. So the first elements, up
 * to the param's next 64-byte boundary, run on their own (through the kernel's scalar tail) and
 * the vector body starts aligned; NumPy's arrays usually share one offset, so the other streams
 * are then aligned too. Results do not change: tail and body perform the same operations. */
void fo_run_segment(int rule, int is_f64, int64_t off, int64_t n, void *const *ptrs,
                    const void *hp)
{
    const size_t esz = is_f64 ? sizeof(double) : sizeof(float);
    const uintptr_t addr = (uintptr_t)ptrs[FO_P] + (uintptr_t)off * esz;
    const int64_t head = (int64_t)(((64 - addr % 64) % 64) / esz);
    if (n <= 0 || rule < 0 || rule >= FO_NRULES) return;
    if (head > 0 && n > 4 * head) {
        fo_run_one(rule, is_f64, off, head, ptrs, hp);
        off += head;
        n -= head;
    }
    fo_run_one(rule, is_f64, off, n, ptrs, hp);
}

/* ---- gradient norms ----------------------------------------------------------------------- */
/* Reductions of one block of a gradient, accumulated in double in a fixed order, so the norm
 * of a set of gradients is the same whatever the thread count: element i goes to accumulator
 * i % 8 and the eight are combined pairwise. (The compiler may hold the accumulators in vector
 * registers; that keeps each lane's order, so the result does not change.) These are compiled
 * once, for the baseline, so they also do not depend on the instruction set. */

#define FO_NORM_BLOCK(NAME, T, TERM, COMBINE, INIT)                                      \
    static double NAME(int64_t n, const T *x)                                            \
    {                                                                                    \
        double acc[8] = {INIT, INIT, INIT, INIT, INIT, INIT, INIT, INIT};                \
        int64_t i = 0;                                                                   \
        for (; i + 8 <= n; i += 8)                                                       \
            for (int k = 0; k < 8; k++) {                                                \
                const double v = (double)x[i + k];                                       \
                acc[k] = COMBINE(acc[k], TERM(v));                                       \
            }                                                                            \
        for (int k = 0; i < n; i++, k++) {                                               \
            const double v = (double)x[i];                                               \
            acc[k] = COMBINE(acc[k], TERM(v));                                           \
        }                                                                                \
        return COMBINE(COMBINE(COMBINE(acc[0], acc[1]), COMBINE(acc[2], acc[3])),        \
                       COMBINE(COMBINE(acc[4], acc[5]), COMBINE(acc[6], acc[7])));       \
    }

#define FO_SQ(v) ((v) * (v))
#define FO_ABS(v) fabs(v)
#define FO_ADD(a, b) ((a) + (b))
/* NaN-propagating maximum */
#define FO_MAXN(a, b) (((b) > (a) || (b) != (b)) ? (b) : (a))

FO_NORM_BLOCK(fo_sumsq_f32, float, FO_SQ, FO_ADD, 0.0)
FO_NORM_BLOCK(fo_sumsq_f64, double, FO_SQ, FO_ADD, 0.0)
FO_NORM_BLOCK(fo_sumabs_f32, float, FO_ABS, FO_ADD, 0.0)
FO_NORM_BLOCK(fo_sumabs_f64, double, FO_ABS, FO_ADD, 0.0)
FO_NORM_BLOCK(fo_maxabs_f32, float, FO_ABS, FO_MAXN, 0.0)
FO_NORM_BLOCK(fo_maxabs_f64, double, FO_ABS, FO_MAXN, 0.0)

double fo_norm_block(int kind, int is_f64, int64_t n, const void *x)
{
    switch (kind) {
    case FO_NORM_L1:
        return is_f64 ? fo_sumabs_f64(n, (const double *)x) : fo_sumabs_f32(n, (const float *)x);
    case FO_NORM_INF:
        return is_f64 ? fo_maxabs_f64(n, (const double *)x) : fo_maxabs_f32(n, (const float *)x);
    default:
        return is_f64 ? fo_sumsq_f64(n, (const double *)x) : fo_sumsq_f32(n, (const float *)x);
    }
}
