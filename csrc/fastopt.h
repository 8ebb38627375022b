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
 *   - fo_<rule>_scalars() turns user hyperparameters and the integer step count into the per-step
 *     scalars (bias corrections, step size) once, in double precision.
 *   - The loop bodies (kernels_body.h) are written once and compiled per dtype (float, double) and
 *     per instruction set (baseline, AVX2, AVX-512) under per-function target attributes; the
 *     instruction set is chosen at run time (dispatch.c) and recorded in a named table.
 *   - Contraction of a*b+c into FMA is disabled for the whole build (-ffp-contract=off), so every
 *     instruction set, the vector body and the scalar tail perform the same IEEE operations in
 *     the same order: results are bitwise identical whatever the ISA, array offset or thread count.
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

/* Streams of a multi-tensor call, in this order. Unused streams are NULL. */
enum { FO_P = 0, FO_G = 1, FO_S1 = 2, FO_S2 = 3, FO_S3 = 4, FO_MAX_STREAMS = 5 };

/* Rules known to the driver. */
enum { FO_RULE_SGD = 0, FO_RULE_ADAM = 1, FO_RULE_PROBE = 2, FO_NRULES = 3 };

/* ---- per-step scalars ------------------------------------------------------------------ */

typedef struct fo_adam_hp {
    double lerp_weight;   /* 1 - beta1: exp_avg.lerp_(grad, 1 - beta1) */
    double beta2;
    double one_minus_beta2;
    double eps;
    double l2;            /* coupled (Adam) weight decay: grad += l2 * param; 0 disables */
    double decay;         /* decoupled (AdamW): param *= decay = 1 - lr * weight_decay; 1 disables */
    double neg_step_size; /* -lr / (1 - beta1^step) */
    double inv_bc2_sqrt;  /* 1 / sqrt(1 - beta2^step): multiplied, see kernels_body.h */
    double sign;          /* -1 when maximizing, else 1 */
} fo_adam_hp;

typedef struct fo_sgd_hp {
    double neg_lr;
    double l2;                  /* grad += l2 * param; 0 disables */
    double momentum;            /* 0: plain SGD, no buffer */
    double one_minus_dampening;
    double sign;                /* -1 when maximizing, else 1 */
    int nesterov;
    int init_buffer;            /* first step: buffer = grad */
} fo_sgd_hp;

typedef struct fo_probe_hp {
    int nstreams;               /* reads streams 0..nstreams-1, writes all but stream FO_G */
} fo_probe_hp;

/* Hyperparameters as the Python layer passes them, one row of doubles per param group. */
enum { FO_ADAM_LR, FO_ADAM_BETA1, FO_ADAM_BETA2, FO_ADAM_EPS, FO_ADAM_WD, FO_ADAM_DECOUPLED,
       FO_ADAM_MAXIMIZE, FO_ADAM_NARGS };
enum { FO_SGD_LR, FO_SGD_MOMENTUM, FO_SGD_DAMPENING, FO_SGD_WD, FO_SGD_NESTEROV,
       FO_SGD_MAXIMIZE, FO_SGD_NARGS };
enum { FO_PROBE_NSTREAMS, FO_PROBE_NARGS };

void fo_adam_scalars(fo_adam_hp *hp, const double *args, int64_t step);
void fo_sgd_scalars(fo_sgd_hp *hp, const double *args, int64_t step);
void fo_probe_scalars(fo_probe_hp *hp, const double *args, int64_t step);

/* ---- kernels ----------------------------------------------------------------------------- */

/* One contiguous range of one tensor; s3 (max_exp_avg_sq) may be NULL for Adam, s1 (momentum
 * buffer) NULL for SGD without momentum. */
typedef void (*fo_adam_f32_fn)(int64_t n, float *p, const float *g, float *m, float *v,
                               float *vmax, const fo_adam_hp *hp);
typedef void (*fo_adam_f64_fn)(int64_t n, double *p, const double *g, double *m, double *v,
                               double *vmax, const fo_adam_hp *hp);
typedef void (*fo_sgd_f32_fn)(int64_t n, float *p, const float *g, float *buf,
                              const fo_sgd_hp *hp);
typedef void (*fo_sgd_f64_fn)(int64_t n, double *p, const double *g, double *buf,
                              const fo_sgd_hp *hp);
/* The probe: the memory traffic of a rule with no arithmetic (a sum of the streams is written
 * back to every stream but the gradient). It is the physical limit the benchmark compares to. */
typedef void (*fo_probe_f32_fn)(int64_t n, float *const *s, const fo_probe_hp *hp);
typedef void (*fo_probe_f64_fn)(int64_t n, double *const *s, const fo_probe_hp *hp);

typedef struct fo_kernel_table {
    const char *name;      /* "baseline", "avx2", "avx512" */
    fo_adam_f32_fn adam_f32;
    fo_adam_f64_fn adam_f64;
    fo_sgd_f32_fn sgd_f32;
    fo_sgd_f64_fn sgd_f64;
    fo_probe_f32_fn probe_f32;
    fo_probe_f64_fn probe_f64;
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

/* ---- the multi-tensor segment interface used by the driver --------------------------------- */

/* Run rule `rule` for dtype `is_f64` on elements [off, off + n) of one tensor whose streams are
 * `ptrs` (FO_MAX_STREAMS pointers, unused ones NULL), with the per-step scalars `hp`. */
void fo_run_segment(int rule, int is_f64, int64_t off, int64_t n, void *const *ptrs,
                    const void *hp);
/* Size in bytes of the per-step scalar struct of a rule. */
size_t fo_hp_size(int rule);
/* Fill the per-step scalars of a rule from a row of group arguments and the step count. */
void fo_scalars(int rule, void *hp, const double *args, int64_t step);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_H */
