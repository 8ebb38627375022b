/*
 * fastopt.h -- the C API of fastopt's kernels.
 *
 * Design note
 * -----------
 * Every optimizer rule is an element-wise update: element i of the parameter and of its state
 * depends only on element i of the inputs. A kernel is therefore one loop over a contiguous range,
 * reading each array once and writing each in-place target once (one fused pass, no temporaries).
 *
 * Layers:
 *   - fo_scalars() turns a row of user hyperparameters and the integer step count into the
 *     per-step scalars of a rule (bias corrections, step size, ...) once, in double precision.
 *   - The loop bodies (kernels_body.h) are written once and compiled per dtype (float, double) and
 *     per instruction set (baseline, AVX2, AVX-512) under per-function target attributes; the
 *     instruction set is chosen at run time (dispatch.c) and recorded in a named table.
 *   - Contraction of a*b+c into FMA is disabled for the whole build (-ffp-contract=off), so every
 *     instruction set, the vector body and the scalar tail perform the same IEEE operations in
 *     the same order: results are bitwise identical whatever the ISA, array offset or thread count.
 *
 * Every kernel has one signature: n elements, FO_MAX_STREAMS stream pointers (param, grad, then
 * up to three state buffers, unused ones NULL), and the rule's per-step scalars.
 *
 * The kernels check nothing: pointers must be valid for n elements, in-place targets must not
 * overlap any other array of the call. All checks live in the Python layer (fastopt/_validation.py)
 * and in the Cython driver (fastopt/_kernels.pyx), which also owns threading.
 */
#ifndef FASTOPT_H
#define FASTOPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Streams of a call, in this order. Unused streams are NULL. */
enum { FO_P = 0, FO_G = 1, FO_S1 = 2, FO_S2 = 3, FO_S3 = 4, FO_MAX_STREAMS = 5 };

/* Rules known to the driver; streams S1..S3 of each:
 *   SGD      momentum_buffer
 *   ADAM     exp_avg, exp_avg_sq, [max_exp_avg_sq]          (Adam, AdamW)
 *   PROBE    any: reads every stream, writes all but the gradient
 *   RMSPROP  square_avg, [momentum_buffer], [grad_avg]
 *   ADAGRAD  sum
 *   LION     exp_avg
 *   ADAMAX   exp_avg, exp_inf
 *   RADAM    exp_avg, exp_avg_sq
 *   EMA      none: stream P is the average (written), stream G the param (read)
 *   NADAM    exp_avg, exp_avg_sq (and a per-tensor scalar: mu_product, see fo_scalars)   */
enum { FO_RULE_SGD = 0, FO_RULE_ADAM = 1, FO_RULE_PROBE = 2, FO_RULE_RMSPROP = 3,
       FO_RULE_ADAGRAD = 4, FO_RULE_LION = 5, FO_RULE_ADAMAX = 6, FO_RULE_RADAM = 7,
       FO_RULE_EMA = 8, FO_RULE_NADAM = 9, FO_NRULES = 10 };

/* ---- hyperparameters as the Python layer passes them: one row of doubles per group ------- */

enum { FO_ADAM_LR, FO_ADAM_BETA1, FO_ADAM_BETA2, FO_ADAM_EPS, FO_ADAM_WD, FO_ADAM_DECOUPLED,
       FO_ADAM_MAXIMIZE, FO_ADAM_L1,
       FO_ADAM_CLIP, FO_ADAM_GSCALE, FO_ADAM_NARGS };
enum { FO_SGD_LR, FO_SGD_MOMENTUM, FO_SGD_DAMPENING, FO_SGD_WD, FO_SGD_NESTEROV,
       FO_SGD_MAXIMIZE, FO_SGD_L1,
       FO_SGD_CLIP, FO_SGD_GSCALE, FO_SGD_NARGS };
enum { FO_PROBE_NSTREAMS, FO_PROBE_NARGS };
enum { FO_EMA_DECAY, FO_EMA_NARGS };
enum { FO_NADAM_LR, FO_NADAM_BETA1, FO_NADAM_BETA2, FO_NADAM_EPS, FO_NADAM_WD,
       FO_NADAM_MOMENTUM_DECAY, FO_NADAM_DECOUPLED, FO_NADAM_MAXIMIZE, FO_NADAM_L1,
       FO_NADAM_CLIP, FO_NADAM_GSCALE, FO_NADAM_NARGS };
enum { FO_RMSPROP_LR, FO_RMSPROP_ALPHA, FO_RMSPROP_EPS, FO_RMSPROP_WD, FO_RMSPROP_MOMENTUM,
       FO_RMSPROP_CENTERED, FO_RMSPROP_MAXIMIZE, FO_RMSPROP_L1,
       FO_RMSPROP_CLIP, FO_RMSPROP_GSCALE, FO_RMSPROP_NARGS };
enum { FO_ADAGRAD_LR, FO_ADAGRAD_LR_DECAY, FO_ADAGRAD_WD, FO_ADAGRAD_EPS, FO_ADAGRAD_MAXIMIZE,
       FO_ADAGRAD_L1,
       FO_ADAGRAD_CLIP, FO_ADAGRAD_GSCALE, FO_ADAGRAD_NARGS };
enum { FO_LION_LR, FO_LION_BETA1, FO_LION_BETA2, FO_LION_WD, FO_LION_MAXIMIZE, FO_LION_L1,
       FO_LION_CLIP, FO_LION_GSCALE, FO_LION_NARGS };
enum { FO_ADAMAX_LR, FO_ADAMAX_BETA1, FO_ADAMAX_BETA2, FO_ADAMAX_EPS, FO_ADAMAX_WD,
       FO_ADAMAX_MAXIMIZE, FO_ADAMAX_L1,
       FO_ADAMAX_CLIP, FO_ADAMAX_GSCALE, FO_ADAMAX_NARGS };
enum { FO_RADAM_LR, FO_RADAM_BETA1, FO_RADAM_BETA2, FO_RADAM_EPS, FO_RADAM_WD,
       FO_RADAM_DECOUPLED, FO_RADAM_MAXIMIZE, FO_RADAM_L1,
       FO_RADAM_CLIP, FO_RADAM_GSCALE, FO_RADAM_NARGS };

/* Every rule's row ends with l1, clip and gscale: clip is the clip_value (0 disables), gscale
 * the gradient's scale for this step (1, or the coefficient of gradient-norm clipping). */

/* ---- per-step scalars ------------------------------------------------------------------- */
/* Common to every rule: gscale (the gradient's factor: -1 when maximizing, times the
 * norm-clipping coefficient), clip (clamp the scaled gradient to [-clip, clip]; 0 disables),
 * l2 (grad += l2*param; 0 disables), l1 (grad += l1*sgn(param); 0 disables), decay (decoupled
 * weight decay: param *= decay). */

typedef struct fo_adam_hp {
    double gscale, clip, l2, l1, decay;
    double lerp_weight;   /* 1 - beta1: exp_avg.lerp_(grad, 1 - beta1) */
    double beta2;
    double one_minus_beta2;
    double eps;
    double neg_step_size; /* -lr / (1 - beta1^step) */
    double inv_bc2_sqrt;  /* 1 / sqrt(1 - beta2^step): multiplied, see kernels_body.h */
} fo_adam_hp;

typedef struct fo_sgd_hp {
    double gscale, clip, l2, l1;
    double neg_lr;
    double momentum;            /* 0: plain SGD, no buffer */
    double one_minus_dampening;
    int nesterov;
    int init_buffer;            /* first step: buffer = grad */
} fo_sgd_hp;

typedef struct fo_probe_hp {
    int nstreams;               /* reads streams 0..nstreams-1, writes all but stream FO_G */
} fo_probe_hp;

typedef struct fo_rmsprop_hp {
    double gscale, clip, l2, l1;
    double alpha, one_minus_alpha;   /* square_avg = alpha*square_avg + (1-alpha)*g*g */
    double eps;
    double neg_lr;
    double momentum;                 /* 0: no buffer */
    int centered;
} fo_rmsprop_hp;

typedef struct fo_adagrad_hp {
    double gscale, clip, l2, l1;
    double eps;
    double neg_clr;             /* -lr / (1 + (step - 1) * lr_decay) */
} fo_adagrad_hp;

typedef struct fo_lion_hp {
    double gscale, clip, l1, decay;
    double beta1, one_minus_beta1, beta2, one_minus_beta2;
    double neg_lr;
} fo_lion_hp;

typedef struct fo_adamax_hp {
    double gscale, clip, l2, l1;
    double lerp_weight, beta2, eps;
    double neg_clr;             /* -lr / (1 - beta1^step) */
} fo_adamax_hp;

typedef struct fo_nadam_hp {
    double gscale, clip, l2, l1, decay;
    double lerp_weight, beta2, one_minus_beta2, eps;
    double bias_correction2;
    double coef_grad;           /* -lr * (1 - mu_t) / (1 - mu_product_t) */
    double coef_avg;            /* -lr * mu_{t+1} / (1 - mu_product_t * mu_{t+1}) */
} fo_nadam_hp;

typedef struct fo_ema_hp {
    double lerp_weight;         /* 1 - decay: average.lerp_(param, 1 - decay) */
} fo_ema_hp;

typedef struct fo_radam_hp {
    double gscale, clip, l2, l1, decay;
    double lerp_weight, beta2, one_minus_beta2, eps;
    double bias_correction1, lr, bc2_sqrt, rect;
    int rectify;                /* rho_t > 5: use the adaptive, rectified step */
} fo_radam_hp;

/* Fill the per-step scalars of a rule from a row of group arguments and the step count.
 * `aux` is the tensor's own scalar state, read and updated (NAdam's mu_product; NULL for the
 * rules without one); fo_has_aux tells which rules use it. */
void fo_scalars(int rule, void *hp, const double *args, int64_t step, double *aux);
int fo_has_aux(int rule);
/* Size in bytes of the per-step scalar struct of a rule; number of arguments in its row. */
size_t fo_hp_size(int rule);
int fo_nargs(int rule);

/* ---- kernels ------------------------------------------------------------------------------ */

typedef void (*fo_kernel_fn)(int64_t n, void *const *streams, const void *hp);

typedef struct fo_kernel_table {
    const char *name;                  /* "baseline", "avx2", "avx512" */
    fo_kernel_fn f32[FO_NRULES];
    fo_kernel_fn f64[FO_NRULES];
} fo_kernel_table;

/* ---- run-time instruction-set choice ------------------------------------------------------ */

/* Names of the tables compiled into this build, best last; *count receives their number. */
const char *const *fo_isa_compiled(int *count);
/* 1 if this CPU and OS can run the named table, else 0 (also 0 for unknown names). */
int fo_isa_supported(const char *name);
/* Make the named table active; NULL or "auto" picks the best supported one. Returns 0 on
 * success, -1 if the name is unknown or unsupported (the active table is then unchanged). */
int fo_isa_select(const char *name);
/* The active table (never NULL). */
const fo_kernel_table *fo_isa_active(void);

/* Run rule `rule` for dtype `is_f64` on elements [off, off + n) of one tensor whose streams are
 * `ptrs` (FO_MAX_STREAMS pointers to element 0, unused ones NULL), with per-step scalars `hp`. */
void fo_run_segment(int rule, int is_f64, int64_t off, int64_t n, void *const *ptrs,
                    const void *hp);

/* ---- gradient norms ----------------------------------------------------------------------- */

/* The partial reduction of n elements for a gradient norm: the sum of squares (FO_NORM_L2), of
 * absolute values (FO_NORM_L1), or the largest absolute value (FO_NORM_INF, NaN-propagating),
 * accumulated in double in an order that depends on n alone. */
enum { FO_NORM_L2 = 0, FO_NORM_L1 = 1, FO_NORM_INF = 2 };
double fo_norm_block(int kind, int is_f64, int64_t n, const void *x);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_H */
