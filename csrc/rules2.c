/*
 * rules2.c -- SparseAdam's rows and Adafactor's tensors (see fo_rules2.h). Compiled for the
 * platform baseline only: these loops are not instantiated per instruction set (the element-
 * wise driver's tables, dispatch.c, are untouched by them).
 */
#include <math.h>
#include <stddef.h>
#include "fastopt.h"
#include "fo_rules2.h"

#if defined(__GNUC__) || defined(__clang__)
#define R2_INLINE inline __attribute__((always_inline))
#define R2_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define R2_INLINE __forceinline
#define R2_RESTRICT __restrict
#else
#define R2_INLINE inline
#define R2_RESTRICT
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FO_NO_CLONES)
#define R2_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define R2_CLONES
#endif

/* the eight lanes combined pairwise, as fo_norm_block */
static double r2_combine(const double *a)
{
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#define R2_T float
#define R2_SQRT sqrtf
#define R2_SFX f32
#include "rules2_body.h"
#undef R2_T
#undef R2_SQRT
#undef R2_SFX
#define R2_T double
#define R2_SQRT sqrt
#define R2_SFX f64
#include "rules2_body.h"
#undef R2_T
#undef R2_SQRT
#undef R2_SFX

int64_t fo_sparse_check(int64_t k, const int64_t *idx, int64_t nrows, int *why)
{
    for (int64_t i = 0; i < k; i++) {
        if (idx[i] < 0 || idx[i] >= nrows) {
            *why = 1;
            return i;
        }
        if (i > 0 && idx[i] <= idx[i - 1]) {
            *why = 2;
            return i;
        }
    }
    *why = 0;
    return -1;
}

void fo_sparse_adam_rows(int dt, int64_t k0, int64_t k1, int64_t rowlen, const int64_t *idx,
                         const void *values, void *p, void *m, void *v,
                         const fo_sparse_adam_hp *hp)
{
    if (k1 <= k0 || rowlen <= 0) return;
    if (dt == FO_DT_F64)
        sparse_adam_rows_f64(k0, k1, rowlen, idx, (const double *)values, (double *)p,
                             (double *)m, (double *)v, hp);
    else if (dt == FO_DT_F32)
        sparse_adam_rows_f32(k0, k1, rowlen, idx, (const float *)values, (float *)p,
                             (float *)m, (float *)v, hp);
}

void fo_adafactor_tensor(int dt, int64_t B, int64_t R, int64_t C, int factored, void *p,
                         const void *g, void *row, void *col, void *var,
                         const fo_adafactor_hp *hp, double *work)
{
    if (dt == FO_DT_F64)
        adafactor_tensor_f64(B, R, C, factored, (double *)p, (const double *)g, (double *)row,
                             (double *)col, (double *)var, hp, work);
    else if (dt == FO_DT_F32)
        adafactor_tensor_f32(B, R, C, factored, (float *)p, (const float *)g, (float *)row,
                             (float *)col, (float *)var, hp, work);
}
