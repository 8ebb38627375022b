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

/* ---- baseline ---------------------------------------------------------------------------- */
#define FO_T float
#define FO_SQRT sqrtf
#define FO_SFX f32_baseline
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_SFX
#define FO_T double
#define FO_SQRT sqrt
#define FO_SFX f64_baseline
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_SFX

#if FO_X86_DISPATCH
/* ---- AVX2 -------------------------------------------------------------------------------- */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define FO_T float
#define FO_SQRT sqrtf
#define FO_SFX f32_avx2
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_SFX
#define FO_T double
#define FO_SQRT sqrt
#define FO_SFX f64_avx2
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_SFX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* ---- AVX-512 ----------------------------------------------------------------------------- */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,prefer-vector-width=512")
#endif
#define FO_T float
#define FO_SQRT sqrtf
#define FO_SFX f32_avx512
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_SFX
#define FO_T double
#define FO_SQRT sqrt
#define FO_SFX f64_avx512
#include "kernels_body.h"
#undef FO_T
#undef FO_SQRT
#undef FO_SFX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* FO_X86_DISPATCH */

#define FO_TABLE(isa)                                                                   \
    {                                                                                   \
        #isa, adam_f32_##isa, adam_f64_##isa, sgd_f32_##isa, sgd_f64_##isa,             \
            probe_f32_##isa, probe_f64_##isa                                            \
    }

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

/* ---- per-step scalars -------------------------------------------------------------------- */

void fo_adam_scalars(fo_adam_hp *hp, const double *a, int64_t step)
{
    const double lr = a[FO_ADAM_LR], beta1 = a[FO_ADAM_BETA1], beta2 = a[FO_ADAM_BETA2];
    const double wd = a[FO_ADAM_WD];
    const int decoupled = a[FO_ADAM_DECOUPLED] != 0.0;
    const double bias_correction1 = 1.0 - pow(beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(beta2, (double)step);
    hp->lerp_weight = 1.0 - beta1;
    hp->beta2 = beta2;
    hp->one_minus_beta2 = 1.0 - beta2;
    hp->eps = a[FO_ADAM_EPS];
    hp->l2 = decoupled ? 0.0 : wd;
    hp->decay = decoupled ? 1.0 - lr * wd : 1.0;
    hp->neg_step_size = -(lr / bias_correction1);
    hp->inv_bc2_sqrt = 1.0 / pow(bias_correction2, 0.5); /* torch: bias_correction2 ** 0.5 */
    hp->sign = a[FO_ADAM_MAXIMIZE] != 0.0 ? -1.0 : 1.0;
}

void fo_sgd_scalars(fo_sgd_hp *hp, const double *a, int64_t step)
{
    hp->neg_lr = -a[FO_SGD_LR];
    hp->l2 = a[FO_SGD_WD];
    hp->momentum = a[FO_SGD_MOMENTUM];
    hp->one_minus_dampening = 1.0 - a[FO_SGD_DAMPENING];
    hp->sign = a[FO_SGD_MAXIMIZE] != 0.0 ? -1.0 : 1.0;
    hp->nesterov = a[FO_SGD_NESTEROV] != 0.0;
    hp->init_buffer = step <= 1;
}

void fo_probe_scalars(fo_probe_hp *hp, const double *a, int64_t step)
{
    (void)step;
    hp->nstreams = (int)a[FO_PROBE_NSTREAMS];
}

size_t fo_hp_size(int rule)
{
    switch (rule) {
    case FO_RULE_SGD: return sizeof(fo_sgd_hp);
    case FO_RULE_ADAM: return sizeof(fo_adam_hp);
    default: return sizeof(fo_probe_hp);
    }
}

void fo_scalars(int rule, void *hp, const double *args, int64_t step)
{
    switch (rule) {
    case FO_RULE_SGD: fo_sgd_scalars((fo_sgd_hp *)hp, args, step); break;
    case FO_RULE_ADAM: fo_adam_scalars((fo_adam_hp *)hp, args, step); break;
    default: fo_probe_scalars((fo_probe_hp *)hp, args, step); break;
    }
}

/* ---- segments ---------------------------------------------------------------------------- */

#define FO_AT(T, k) (ptrs[k] ? (T *)ptrs[k] + off : (T *)0)

static void fo_run_one(int rule, int is_f64, int64_t off, int64_t n, void *const *ptrs,
                       const void *hp)
{
    const fo_kernel_table *t = fo_active;
    if (is_f64) {
        switch (rule) {
        case FO_RULE_ADAM:
            t->adam_f64(n, FO_AT(double, FO_P), FO_AT(double, FO_G), FO_AT(double, FO_S1),
                        FO_AT(double, FO_S2), FO_AT(double, FO_S3), (const fo_adam_hp *)hp);
            break;
        case FO_RULE_SGD:
            t->sgd_f64(n, FO_AT(double, FO_P), FO_AT(double, FO_G), FO_AT(double, FO_S1),
                       (const fo_sgd_hp *)hp);
            break;
        default: {
            double *s[FO_MAX_STREAMS];
            for (int k = 0; k < FO_MAX_STREAMS; k++) s[k] = FO_AT(double, k);
            t->probe_f64(n, s, (const fo_probe_hp *)hp);
        }
        }
    } else {
        switch (rule) {
        case FO_RULE_ADAM:
            t->adam_f32(n, FO_AT(float, FO_P), FO_AT(float, FO_G), FO_AT(float, FO_S1),
                        FO_AT(float, FO_S2), FO_AT(float, FO_S3), (const fo_adam_hp *)hp);
            break;
        case FO_RULE_SGD:
            t->sgd_f32(n, FO_AT(float, FO_P), FO_AT(float, FO_G), FO_AT(float, FO_S1),
                       (const fo_sgd_hp *)hp);
            break;
        default: {
            float *s[FO_MAX_STREAMS];
            for (int k = 0; k < FO_MAX_STREAMS; k++) s[k] = FO_AT(float, k);
            t->probe_f32(n, s, (const fo_probe_hp *)hp);
        }
        }
    }
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
    if (n <= 0) return;
    if (head > 0 && n > 4 * head) {
        fo_run_one(rule, is_f64, off, head, ptrs, hp);
        off += head;
        n -= head;
    }
    fo_run_one(rule, is_f64, off, n, ptrs, hp);
}
