/*
 * fo_rules2.h -- the rules that do not fit the element-wise driver (csrc/rules2.c):
 * SparseAdam's row-sparse step and Adafactor's per-tensor step with factored second moments.
 *
 * Both run on float32 or float64 arrays (FO_DT_F32 / FO_DT_F64; every array of a call has
 * the same dtype), C-contiguous, checked by the caller (fastopt/_kernels.pyx). Nothing here
 * allocates, takes the GIL or writes outside the arrays it is given.
 */
#ifndef FO_RULES2_H
#define FO_RULES2_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- SparseAdam (torch.optim.SparseAdam) --------------------------------------------------
 * Per touched row x (indices unique, strictly increasing) and element j of the row, with
 * g = gsign*value (gsign -1 to maximize):
 *   dm = (g - m) * (1 - beta1);  m = m + dm;
 *   dv = (g*g - v) * (1 - beta2); v = v + dv;
 *   p = p + neg_step_size * (m / (sqrt(v) + eps)),  neg_step_size = -lr*sqrt(bc2)/bc1
 * torch's operations in its order (its `numer` is dm + m_old, the new m bit for bit). */
typedef struct fo_sparse_adam_hp {
    double gsign, one_minus_beta1, one_minus_beta2, eps, neg_step_size;
} fo_sparse_adam_hp;

/* Checks k indices against nrows: returns -1 when every index is in [0, nrows) and each is
 * greater than the one before; else the position of the first that is not, with *why = 1 (out
 * of range) or 2 (not increasing: a duplicate or out of order). Reads only. */
int64_t fo_sparse_check(int64_t k, const int64_t *idx, int64_t nrows, int *why);

/* Rows [k0, k1) of a call: idx[k] the row of p, m, v (each row `rowlen` elements) that
 * values row k updates. */
void fo_sparse_adam_rows(int dt, int64_t k0, int64_t k1, int64_t rowlen, const int64_t *idx,
                         const void *values, void *p, void *m, void *v,
                         const fo_sparse_adam_hp *hp);

/* ---- Adafactor (torch.optim.Adafactor) -----------------------------------------------------
 * One tensor. Factored (2+ dims, seen as B x R x C, C the last dimension): row (B x R) and col
 * (B x C) are its row_var and col_var; otherwise `var` (n elements) is its variance. Scalars:
 * w = step^beta2_decay (the lerp weight), rho = min(lr, 1/sqrt(step)), eps1 (its square is
 * the variance floor), eps2, d, decay = 1 - lr*weight_decay (applied when `decayed`), gsign.
 * Sums of squares and means accumulate in float64 in fixed orders: a row's sum over its C
 * elements and a whole tensor's sum (param and update norms) element i to accumulator i % 8,
 * the eight combined pairwise (fo_norm_block's order); a column's sum over the R rows and
 * row_var's mean over R in order. So the result does not depend on the thread count.
 * `work` holds R + C + B doubles. */
typedef struct fo_adafactor_hp {
    double w, rho, eps1, eps2, d, decay, gsign;
    int decayed;
} fo_adafactor_hp;

void fo_adafactor_tensor(int dt, int64_t B, int64_t R, int64_t C, int factored, void *p,
                         const void *g, void *row, void *col, void *var,
                         const fo_adafactor_hp *hp, double *work);

#ifdef __cplusplus
}
#endif
#endif /* FO_RULES2_H */
