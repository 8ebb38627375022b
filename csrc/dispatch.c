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
#include "fo_half.h"

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
#undef FO_MIXED
#define FO_MIXED 1    /* the float32 bodies: also the fused mixed-storage ones */
#define FO_T float
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_SFX f32_baseline
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#undef FO_MIXED
#define FO_MIXED 0
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
#undef FO_MIXED
#define FO_MIXED 1    /* the float32 bodies: also the fused mixed-storage ones */
#define FO_T float
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_SFX f32_avx2
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#undef FO_MIXED
#define FO_MIXED 0
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
#undef FO_MIXED
#define FO_MIXED 1    /* the float32 bodies: also the fused mixed-storage ones */
#define FO_T float
#define FO_SQRT sqrtf
#define FO_FABS fabsf
#define FO_SFX f32_avx512
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_FABS
#undef FO_SFX
#undef FO_MIXED
#define FO_MIXED 0
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

/* One table per instruction set, indexed by [signature][rule]; the entries come from the
 * X-macro lists in fastopt.h through designated initializers, so an entry's position is its
 * enum value whatever the order of the lists. */
#define FO_E_f32_baseline(E, c) [FO_RULE_##E] = c##_f32_baseline,
#define FO_E_f64_baseline(E, c) [FO_RULE_##E] = c##_f64_baseline,
#define FO_E_f32_avx2(E, c) [FO_RULE_##E] = c##_f32_avx2,
#define FO_E_f64_avx2(E, c) [FO_RULE_##E] = c##_f64_avx2,
#define FO_E_f32_avx512(E, c) [FO_RULE_##E] = c##_f32_avx512,
#define FO_E_f64_avx512(E, c) [FO_RULE_##E] = c##_f64_avx512,
/* the fused mixed-storage entries: Adam's, per storage class (FO_MIX_LIST) */
#define FO_X_baseline(E, c, P, G, S) [FO_MIX_##E] = {[FO_RULE_ADAM] = adam_##c##_f32_baseline},
#define FO_X_avx2(E, c, P, G, S) [FO_MIX_##E] = {[FO_RULE_ADAM] = adam_##c##_f32_avx2},
#define FO_X_avx512(E, c, P, G, S) [FO_MIX_##E] = {[FO_RULE_ADAM] = adam_##c##_f32_avx512},
#define FO_TABLE(isa)                                                                      \
    {#isa,                                                                                 \
     {[FO_SIG_F32] = {FO_RULE_LIST(FO_E_f32_##isa)}, [FO_SIG_F64] = {FO_RULE_LIST(FO_E_f64_##isa)}}, \
     {FO_MIX_LIST(FO_X_##isa)}}

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
    /* (F16C: the 16-bit conversions of these tables, storage.c) */
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("f16c") != 0;
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512vl") != 0
            && __builtin_cpu_supports("f16c") != 0;
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

static void fo_adam_scalars(fo_adam_hp *hp, const fo_adam_args *a, int64_t step, double grad_scale)
{
    const double lr = a->lr, beta1 = a->beta1, beta2 = a->beta2;
    const double wd = a->weight_decay;
    const int decoupled = a->decoupled_weight_decay != 0.0;
    const double bias_correction1 = 1.0 - pow(beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(beta2, (double)step);
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = decoupled ? 0.0 : wd;
    hp->l1 = a->l1;
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a->eps;
    hp->neg_step_size = -(lr / bias_correction1);
    hp->inv_bc2_sqrt = 1.0 / pow(bias_correction2, 0.5); /* torch: bias_correction2 ** 0.5 */
}

static void fo_sgd_scalars(fo_sgd_hp *hp, const fo_sgd_args *a, int64_t step, double grad_scale)
{
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = a->weight_decay;
    hp->l1 = a->l1;
    hp->neg_lr = -a->lr;
    hp->momentum = a->momentum;
    hp->one_minus_dampening = 1.0 - a->dampening;
    hp->nesterov = a->nesterov != 0.0;
    hp->init_buffer = step <= 1;
}

static void fo_probe_scalars(fo_probe_hp *hp, const fo_probe_args *a)
{
    hp->nstreams = (int)a->nstreams;
}

static void fo_rmsprop_scalars(fo_rmsprop_hp *hp, const fo_rmsprop_args *a, double grad_scale)
{
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = a->weight_decay;
    hp->l1 = a->l1;
    hp->alpha = a->alpha;
    hp->one_minus_alpha = 1.0 - a->alpha;
    hp->eps = a->eps;
    hp->neg_lr = -a->lr;
    hp->momentum = a->momentum;
    hp->centered = a->centered != 0.0;
}

static void fo_adagrad_scalars(fo_adagrad_hp *hp, const fo_adagrad_args *a, int64_t step, double grad_scale)
{
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = a->weight_decay;
    hp->l1 = a->l1;
    hp->eps = a->eps;
    hp->neg_clr = -(a->lr / (1.0 + (double)(step - 1) * a->lr_decay));
}

static void fo_lion_scalars(fo_lion_hp *hp, const fo_lion_args *a, double grad_scale)
{
    const double lr = a->lr;
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l1 = a->l1;
    hp->decay = 1.0 - lr * a->weight_decay;
    hp->beta1 = a->beta1;
    hp->one_minus_beta1 = 1.0 - a->beta1;
    hp->beta2 = a->beta2;
    hp->one_minus_beta2 = 1.0 - a->beta2;
    hp->neg_lr = -lr;
}

static void fo_adamax_scalars(fo_adamax_hp *hp, const fo_adamax_args *a, int64_t step, double grad_scale)
{
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = a->weight_decay;
    hp->l1 = a->l1;
    hp->lerp_weight = 1.0 - a->beta1;
    hp->beta2 = a->beta2;
    hp->eps = a->eps;
    hp->neg_clr = -(a->lr / (1.0 - pow(a->beta1, (double)step)));
}

static void fo_radam_scalars(fo_radam_hp *hp, const fo_radam_args *a, int64_t step, double grad_scale)
{
    const double lr = a->lr, beta1 = a->beta1, beta2 = a->beta2;
    const double wd = a->weight_decay;
    const int decoupled = a->decoupled_weight_decay != 0.0;
    const double t = (double)step;
    const double bias_correction1 = 1.0 - pow(beta1, t);
    const double bias_correction2 = 1.0 - pow(beta2, t);
    /* torch's expressions, in its order */
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * t * pow(beta2, t) / bias_correction2;
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = decoupled ? 0.0 : wd;
    hp->l1 = a->l1;
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a->eps;
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
static void fo_nadam_scalars(fo_nadam_hp *hp, const fo_nadam_args *a, int64_t step, double *aux, double grad_scale)
{
    const double lr = a->lr, beta1 = a->beta1, beta2 = a->beta2;
    const double wd = a->weight_decay, md = a->momentum_decay;
    const int decoupled = a->decoupled_weight_decay != 0.0;
    const double t = (double)step;
    const double mu = beta1 * (1.0 - 0.5 * pow(0.96, t * md));
    const double mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * md));
    const float mu_product = (float)*aux * (float)mu;
    const double mu_product_next = (double)mu_product * mu_next;
    *aux = (double)mu_product;
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = decoupled ? 0.0 : wd;
    hp->l1 = a->l1;
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a->eps;
    hp->bias_correction2 = 1.0 - pow(beta2, t);
    hp->coef_grad = -lr * (1.0 - mu) / (1.0 - (double)mu_product);
    hp->coef_avg = (-lr * mu_next) / (1.0 - mu_product_next);
}

/* ASGD: torch's expressions in its order. eta and mu are torch's float32 scalar tensors (aux[0],
 * aux[1]): this step uses the values the previous step stored (eta starts at lr, mu at 1), and
 * stores the next ones rounded to float32, as torch's copy_ into them does. */
static void fo_asgd_scalars(fo_asgd_hp *hp, const fo_asgd_args *a, int64_t step, double *aux,
                            double grad_scale)
{
    const double eta = aux[0], mu = aux[1];
    const double t = (double)step;
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = a->weight_decay;
    hp->l1 = a->l1;
    hp->decay = 1.0 - a->lambd * eta;
    hp->neg_eta = -eta;
    hp->mu = mu;
    hp->copy_avg = mu == 1.0;
    aux[0] = (double)(float)(a->lr / pow(1.0 + a->lambd * a->lr * t, a->alpha));
    aux[1] = (double)(float)(t - a->t0 > 1.0 ? 1.0 / (t - a->t0) : 1.0);  /* 1/max(1, t - t0) */
}

int fo_aux_count(int rule)
{
    switch (rule) {
    case FO_RULE_NADAM: return 1;
    case FO_RULE_ASGD: return 2;
    default: return 0;
    }
}

int fo_has_aux(int rule) { return fo_aux_count(rule) > 0; }

/* LAMB (Apex FusedLAMB, adam_w_mode, grad_averaging): the bias corrections from the step; the
 * trust ratio from the tensor's norms, in fo_reduced. */
static void fo_lamb_scalars(fo_lamb_hp *hp, const fo_lamb_args *a, int64_t step, double grad_scale)
{
    const double t = (double)step;
    const int bc = a->bias_correction != 0.0;
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l1 = a->l1;
    hp->beta1 = a->beta1;
    hp->one_minus_beta1 = 1.0 - a->beta1;
    hp->beta2 = a->beta2;
    hp->one_minus_beta2 = 1.0 - a->beta2;
    hp->bias_correction1 = bc ? 1.0 - pow(a->beta1, t) : 1.0;
    hp->bias_correction2 = bc ? 1.0 - pow(a->beta2, t) : 1.0;
    hp->eps = a->eps;
    hp->weight_decay = a->weight_decay;
    hp->lr = a->lr;
    hp->trust = a->use_nvlamb != 0.0 || a->weight_decay != 0.0;
    hp->neg_ratio = -a->lr;
}

int fo_reduce_count(int rule) { return rule == FO_RULE_LAMB ? 2 : 0; }

/* LAMB's reduction per instruction set (in fo_tables' order) and signature. Every instance
 * performs the same IEEE operations in the same order per accumulator lane (vectorising runs
 * the lanes side by side), so the sums are bitwise the same on every instruction set. */
typedef void (*fo_lamb_reduce_fn)(int64_t, void *const *, const fo_lamb_hp *, double *);
static const fo_lamb_reduce_fn fo_lamb_reduce_fns[][FO_NSIGS] = {
    {[FO_SIG_F32] = lamb_reduce_f32_baseline, [FO_SIG_F64] = lamb_reduce_f64_baseline},
#if FO_X86_DISPATCH
    {[FO_SIG_F32] = lamb_reduce_f32_avx2, [FO_SIG_F64] = lamb_reduce_f64_avx2},
    {[FO_SIG_F32] = lamb_reduce_f32_avx512, [FO_SIG_F64] = lamb_reduce_f64_avx512},
#endif
};

void fo_reduce_block(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                     const void *hp, double *out)
{
    /* compiled signatures only: the driver refuses mixed storage for rules with a reduction */
    out[0] = out[1] = 0.0;
    if (rule != FO_RULE_LAMB || n <= 0) return;
    if (sig != FO_SIG_F32 && sig != FO_SIG_F64) return;
    const size_t esz = sig == FO_SIG_F64 ? sizeof(double) : sizeof(float);
    void *s[FO_MAX_STREAMS];
    for (int k = 0; k < FO_MAX_STREAMS; k++)
        s[k] = ptrs[k] ? (char *)ptrs[k] + (size_t)off * esz : (void *)0;
    fo_lamb_reduce_fns[fo_active - fo_tables][sig](n, s, (const fo_lamb_hp *)hp, out);
}

void fo_reduced(int rule, void *hpv, const double *sums)
{
    if (rule != FO_RULE_LAMB) return;
    fo_lamb_hp *hp = (fo_lamb_hp *)hpv;
    const double pn = sqrt(sums[0]), un = sqrt(sums[1]);
    /* Apex: ratio = (use_nvlamb || decay != 0) && |p| != 0 && |u| != 0 ? lr * |p| / |u| : lr */
    const double ratio = hp->trust && pn != 0.0 && un != 0.0 ? hp->lr * (pn / un) : hp->lr;
    hp->neg_ratio = -ratio;
}

static void fo_ema_scalars(fo_ema_hp *hp, const fo_ema_args *a)
{
    hp->lerp_weight = 1.0 - a->decay;
}

static void fo_adadelta_scalars(fo_adadelta_hp *hp, const fo_adadelta_args *a, double grad_scale)
{
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l2 = a->weight_decay;
    hp->l1 = a->l1;
    hp->rho = a->rho;
    hp->one_minus_rho = 1.0 - a->rho;
    hp->eps = a->eps;
    hp->neg_lr = -a->lr;
}

static void fo_rprop_scalars(fo_rprop_hp *hp, const fo_rprop_args *a, double grad_scale)
{
    hp->gscale = fo_gscale(a->maximize, grad_scale);
    hp->clip = a->clip_value;
    hp->l1 = a->l1;
    hp->etaminus = a->etaminus;
    hp->etaplus = a->etaplus;
    hp->step_size_min = a->step_size_min;
    hp->step_size_max = a->step_size_max;
}

#define FO_HP_SIZE_(E, c) case FO_RULE_##E: return sizeof(fo_##c##_hp);
size_t fo_hp_size(int rule)
{
    switch (rule) { FO_RULE_LIST(FO_HP_SIZE_) default: return 0; }
}
#undef FO_HP_SIZE_

/* The field names of each argument record, and a check that a record is exactly its fields
 * (doubles only, no padding), so that filling it by field index is filling it by name. */
#define FO_NAME_(f) #f,
#define FO_COUNT_(f) +1
#define FO_NAMES_(E, c)                                                                    \
    static const char *const fo_##c##_arg_names[] = {FO_##E##_ARGS(FO_NAME_)};              \
    _Static_assert(sizeof(fo_##c##_args) == (0 FO_##E##_ARGS(FO_COUNT_)) * sizeof(double), \
                   "fo_" #c "_args must hold doubles only");
FO_RULE_LIST(FO_NAMES_)
#undef FO_NAMES_

const char *const *fo_arg_names(int rule, int *count)
{
#define FO_ARGN_(E, c)                                                                     \
    case FO_RULE_##E:                                                                      \
        *count = (int)(sizeof(fo_##c##_arg_names) / sizeof(char *));                      \
        return fo_##c##_arg_names;
    switch (rule) { FO_RULE_LIST(FO_ARGN_) default: *count = 0; return NULL; }
#undef FO_ARGN_
}

int fo_nargs(int rule)
{
    int n = 0;
    fo_arg_names(rule, &n);
    return n;
}

unsigned fo_required_streams(int rule)
{
    const unsigned s1 = 1u << FO_S1, s2 = 1u << FO_S2;
    switch (rule) {
    case FO_RULE_ADAM: case FO_RULE_ADAMAX: case FO_RULE_RADAM: case FO_RULE_NADAM:
    case FO_RULE_ADADELTA: case FO_RULE_RPROP: case FO_RULE_LAMB:
        return s1 | s2;
    case FO_RULE_RMSPROP: case FO_RULE_ADAGRAD: case FO_RULE_LION: case FO_RULE_ASGD:
        return s1;
    default:            /* SGD (its buffer is optional), EMA, the probe (its record's count) */
        return 0;
    }
}

const char *fo_rule_name(int rule)
{
#define FO_RNAME_(E, c) case FO_RULE_##E: return #c;
    switch (rule) { FO_RULE_LIST(FO_RNAME_) default: return NULL; }
#undef FO_RNAME_
}

void fo_scalars(int rule, void *hp, const double *args, int64_t step, double *aux,
                double grad_scale)
{
    switch (rule) {
    case FO_RULE_SGD: fo_sgd_scalars((fo_sgd_hp *)hp, (const fo_sgd_args *)args, step, grad_scale); break;
    case FO_RULE_ADAM: fo_adam_scalars((fo_adam_hp *)hp, (const fo_adam_args *)args, step, grad_scale); break;
    case FO_RULE_RMSPROP: fo_rmsprop_scalars((fo_rmsprop_hp *)hp, (const fo_rmsprop_args *)args, grad_scale); break;
    case FO_RULE_ADAGRAD: fo_adagrad_scalars((fo_adagrad_hp *)hp, (const fo_adagrad_args *)args, step, grad_scale); break;
    case FO_RULE_LION: fo_lion_scalars((fo_lion_hp *)hp, (const fo_lion_args *)args, grad_scale); break;
    case FO_RULE_ADAMAX: fo_adamax_scalars((fo_adamax_hp *)hp, (const fo_adamax_args *)args, step, grad_scale); break;
    case FO_RULE_RADAM: fo_radam_scalars((fo_radam_hp *)hp, (const fo_radam_args *)args, step, grad_scale); break;
    case FO_RULE_EMA: fo_ema_scalars((fo_ema_hp *)hp, (const fo_ema_args *)args); break;
    case FO_RULE_NADAM: fo_nadam_scalars((fo_nadam_hp *)hp, (const fo_nadam_args *)args, step, aux, grad_scale); break;
    case FO_RULE_ADADELTA: fo_adadelta_scalars((fo_adadelta_hp *)hp, (const fo_adadelta_args *)args, grad_scale); break;
    case FO_RULE_LAMB: fo_lamb_scalars((fo_lamb_hp *)hp, (const fo_lamb_args *)args, step, grad_scale); break;
    case FO_RULE_ASGD: fo_asgd_scalars((fo_asgd_hp *)hp, (const fo_asgd_args *)args, step, aux, grad_scale); break;
    case FO_RULE_RPROP: fo_rprop_scalars((fo_rprop_hp *)hp, (const fo_rprop_args *)args, grad_scale); break;
    default: fo_probe_scalars((fo_probe_hp *)hp, (const fo_probe_args *)args); break;
    }
}

/* ---- signatures --------------------------------------------------------------------------- */

int fo_signature(const unsigned char *dt)
{
    /* every present stream float32, or every one float64: the compiled bodies directly */
    const unsigned char p = dt[FO_P];
    int same = dt[FO_M] == FO_DT_NONE;
    for (int k = 0; k < FO_MAX_STREAMS; k++)
        if (dt[k] != FO_DT_NONE && dt[k] != p) same = 0;
    if (same && p == FO_DT_F32) return FO_SIG_F32;
    if (same && p == FO_DT_F64) return FO_SIG_F64;
    /* anything else with float32 compute: the adapter */
    return fo_mixed_signature(dt) ? FO_SIG_MIXED : -1;
}

#define FO_SIGNAME_(E, sfx, dt, T) #sfx,
static const char *const fo_sig_name_list[] = {FO_SIG_LIST(FO_SIGNAME_) "mixed"};
#undef FO_SIGNAME_

const char *const *fo_sig_names(int *count)
{
    *count = FO_NSIGS_ALL;
    return fo_sig_name_list;
}

/* ---- segments ---------------------------------------------------------------------------- */

static void fo_run_one(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                       const unsigned char *dt, const void *hp, const fo_store *st)
{
    const fo_kernel_table *t = fo_active;
    fo_kernel_fn fn;
    if (sig == FO_SIG_MIXED) {
        /* a fused body for this storage class where the rule has one, else the adapter */
        const int c = fo_mixed_class(dt, ptrs, st);
        fn = c >= 0 ? t->mixed[c][rule] : (fo_kernel_fn)0;
        if (!fn) {
            fo_mixed_segment(t->name, t->fn[FO_SIG_F32][rule], off, n, ptrs, dt, hp, st);
            return;
        }
    } else {
        fn = t->fn[sig][rule];
    }
    void *s[FO_MAX_STREAMS];
    for (int k = 0; k < FO_MAX_STREAMS; k++)
        s[k] = ptrs[k] ? (char *)ptrs[k] + (size_t)off * fo_dt_size(dt[k]) : (void *)0;
    fn(n, off, s, hp);
}

/* NumPy's allocations are only 16-byte aligned, and a vector body over misaligned streams splits
 * loads and stores across cache lines: measured here, a 1e6-element float32 Adam step takes
 * ~40% longer when its arrays start 32 bytes off a 64-byte boundary. So the first elements, up
 * to the param's next 64-byte boundary, run on their own (through the kernel's scalar tail) and
 * the vector body starts aligned; NumPy's arrays usually share one offset, so the other streams
 * are then aligned too. Results do not change: tail and body perform the same operations. */
void fo_run_segment(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                    const unsigned char *dt, const void *hp, const fo_store *st)
{
    if (n <= 0 || rule < 0 || rule >= FO_NRULES || sig < 0 || sig >= FO_NSIGS_ALL) return;
    const size_t esz = fo_dt_size(dt[FO_P]);
    const uintptr_t addr = (uintptr_t)ptrs[FO_P] + (uintptr_t)off * esz;
    const int64_t head = (int64_t)(((64 - addr % 64) % 64) / esz);
    /* (not for 8-bit states: their tiles must stay on the blocks of their scales) */
    if (head > 0 && n > 4 * head && !fo_has_q8(dt)) {
        fo_run_one(rule, sig, off, head, ptrs, dt, hp, st);
        off += head;
        n -= head;
    }
    fo_run_one(rule, sig, off, n, ptrs, dt, hp, st);
}

/* ---- gradient norms ----------------------------------------------------------------------- */
/* Reductions of one block of a gradient, accumulated in double in a fixed order, so the norm
 * of a set of gradients is the same whatever the thread count: element i goes to accumulator
 * i % 8 and the eight are combined pairwise. (The compiler may hold the accumulators in vector
 * registers; that keeps each lane's order, so the result does not change.) These are compiled
 * once, for the baseline, so they also do not depend on the instruction set. */

#define FO_NORM_BLOCK(NAME, T, LOAD, TERM, COMBINE, INIT)                                      \
    static double NAME(int64_t n, const T *x)                                            \
    {                                                                                    \
        double acc[8] = {INIT, INIT, INIT, INIT, INIT, INIT, INIT, INIT};                \
        int64_t i = 0;                                                                   \
        for (; i + 8 <= n; i += 8)                                                       \
            for (int k = 0; k < 8; k++) {                                                \
                const double v = LOAD(x[i + k]);                                         \
                acc[k] = COMBINE(acc[k], TERM(v));                                       \
            }                                                                            \
        for (int k = 0; i < n; i++, k++) {                                               \
            const double v = LOAD(x[i]);                                                 \
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

#define FO_LD(x) ((double)(x))
#define FO_LD_BF16(x) ((double)fo_bf16_to_f32(x))
#define FO_LD_F16(x) ((double)fo_f16_to_f32(x))
#define FO_NORM_DTYPES(NAME, TERM, COMBINE)                                               \
    FO_NORM_BLOCK(NAME##_f32, float, FO_LD, TERM, COMBINE, 0.0)                           \
    FO_NORM_BLOCK(NAME##_f64, double, FO_LD, TERM, COMBINE, 0.0)                          \
    FO_NORM_BLOCK(NAME##_bf16, uint16_t, FO_LD_BF16, TERM, COMBINE, 0.0)                  \
    FO_NORM_BLOCK(NAME##_f16, uint16_t, FO_LD_F16, TERM, COMBINE, 0.0)                    \
    static double NAME(int dt, int64_t n, const void *x)                                  \
    {                                                                                     \
        switch (dt) {                                                                     \
        case FO_DT_F64: return NAME##_f64(n, (const double *)x);                          \
        case FO_DT_BF16: return NAME##_bf16(n, (const uint16_t *)x);                      \
        case FO_DT_F16: return NAME##_f16(n, (const uint16_t *)x);                        \
        default: return NAME##_f32(n, (const float *)x);                                  \
        }                                                                                 \
    }
FO_NORM_DTYPES(fo_sumsq, FO_SQ, FO_ADD)
FO_NORM_DTYPES(fo_sumabs, FO_ABS, FO_ADD)
FO_NORM_DTYPES(fo_maxabs, FO_ABS, FO_MAXN)

double fo_norm_block(int kind, int dt, int64_t n, const void *x)
{
    switch (kind) {
    case FO_NORM_L1: return fo_sumabs(dt, n, x);
    case FO_NORM_INF: return fo_maxabs(dt, n, x);
    default: return fo_sumsq(dt, n, x);
    }
}

/* The pre-pass: fo_sumsq's accumulation order exactly (so a clipping norm computed here equals
 * fo_norm_block's), plus `v * 0`, which is NaN exactly when v is NaN or infinite, accumulated
 * alongside in the same read. */
#define FO_PREPASS_BLOCK(NAME, T, LOAD)                                                  \
    static double NAME(int64_t n, const T *x, int *nonfinite)                            \
    {                                                                                    \
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                        \
        double bad = 0.0;                                                                \
        int64_t i = 0;                                                                   \
        for (; i + 8 <= n; i += 8)                                                       \
            for (int k = 0; k < 8; k++) {                                                \
                const double v = LOAD(x[i + k]);                                         \
                acc[k] = acc[k] + v * v;                                                 \
                bad = bad + v * 0.0;                                                     \
            }                                                                            \
        for (int k = 0; i < n; i++, k++) {                                               \
            const double v = LOAD(x[i]);                                                 \
            acc[k] = acc[k] + v * v;                                                     \
            bad = bad + v * 0.0;                                                         \
        }                                                                                \
        *nonfinite = bad != 0.0 || bad != bad;                                           \
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])); \
    }
FO_PREPASS_BLOCK(fo_prepass_f32, float, FO_LD)
FO_PREPASS_BLOCK(fo_prepass_f64, double, FO_LD)
FO_PREPASS_BLOCK(fo_prepass_bf16, uint16_t, FO_LD_BF16)
FO_PREPASS_BLOCK(fo_prepass_f16, uint16_t, FO_LD_F16)

double fo_prepass_block(int dt, int64_t n, const void *x, int *nonfinite)
{
    switch (dt) {
    case FO_DT_F64: return fo_prepass_f64(n, (const double *)x, nonfinite);
    case FO_DT_BF16: return fo_prepass_bf16(n, (const uint16_t *)x, nonfinite);
    case FO_DT_F16: return fo_prepass_f16(n, (const uint16_t *)x, nonfinite);
    default: return fo_prepass_f32(n, (const float *)x, nonfinite);
    }
}
