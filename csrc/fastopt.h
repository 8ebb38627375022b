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

/* Streams of a call, in this order. Unused streams are NULL. FO_M belongs to 16-bit params:
 * float32 there is their master copy, the param's own dtype its Kahan compensation (see
 * storage.c); no loop body reads it. FO_A1..FO_A3 belong to 8-bit states: the float32 block
 * scales (absmax) of state S1..S3 (FO_A1 + k - FO_S1), present exactly when that state is
 * 8-bit; no loop body reads them either (the adapter does, storage.c). */
enum { FO_P = 0, FO_G = 1, FO_S1 = 2, FO_S2 = 3, FO_S3 = 4, FO_M = 5, FO_A1 = 6, FO_A2 = 7,
       FO_A3 = 8, FO_MAX_STREAMS = 9 };

/* Storage dtype codes of a stream (FO_DT_NONE: the stream is absent). 8-bit states: FO_DT_Q8S
 * int8 codes of the signed map, FO_DT_Q8U uint8 codes of the unsigned map (one per element),
 * FO_DT_ABSMAX the float32 scale of each FO_Q8_BLOCK-element block (ceil(n / FO_Q8_BLOCK) of
 * them for an n-element tensor). */
enum { FO_DT_NONE = 0, FO_DT_F32 = 1, FO_DT_F64 = 2, FO_DT_F16 = 3, FO_DT_BF16 = 4,
       FO_DT_Q8S = 5, FO_DT_Q8U = 6, FO_DT_ABSMAX = 7 };
enum { FO_Q8_BLOCK = 256 };
/* The size in bytes of an element of that dtype (0 for FO_DT_NONE or an unknown code; 4 for
 * FO_DT_ABSMAX, whose elements are per block, see fo_stream_bytes). */
size_t fo_dt_size(int dt);
/* The byte extent of a stream of dtype `dt` for a tensor of n elements: n * fo_dt_size(dt),
 * or 4 * ceil(n / FO_Q8_BLOCK) for FO_DT_ABSMAX. Every check of bounds and overlaps uses it. */
size_t fo_stream_bytes(int dt, int64_t n);
/* 1 if any stream of these dtypes is an 8-bit state (the tensor then runs in whole blocks:
 * segments start on a multiple of FO_Q8_BLOCK within the tensor). */
int fo_has_q8(const unsigned char *dtypes);

/* How 16-bit values are written where there is no master copy (16-bit params, 16-bit
 * states): to nearest even, or stochastically with draws keyed by `key` (fo_sr_key). */
enum { FO_ROUND_NEAREST = 0, FO_ROUND_STOCHASTIC = 1 };
typedef struct fo_store {
    uint64_t key;
    int rounding;
} fo_store;
/* The stochastic-rounding key of one param at one step (a counter-based hash). */
uint64_t fo_sr_key(uint64_t seed, int64_t param, int64_t step);

/* The rules, one line each: FO_RULE(ENUM_NAME, c_name). The order fixes only the enum values;
 * nothing else depends on it (the Python side looks rules up by name, see fo_rule_name).
 * Streams S1..S3 of each:
 *   SGD      momentum_buffer
 *   ADAM     exp_avg, exp_avg_sq, [max_exp_avg_sq]          (Adam, AdamW)
 *   PROBE    any: reads every stream, writes all but the gradient
 *   RMSPROP  square_avg, [momentum_buffer], [grad_avg]
 *   ADAGRAD  sum
 *   LION     exp_avg
 *   ADAMAX   exp_avg, exp_inf
 *   RADAM    exp_avg, exp_avg_sq
 *   EMA      none: stream P is the average (written), stream G the param (read)
 *   NADAM    exp_avg, exp_avg_sq (and a per-tensor scalar: mu_product, see fo_scalars)
 *   ADADELTA square_avg, acc_delta
 *   RPROP    prev, step_size
 *   ASGD     ax (and two per-tensor scalars: eta, mu, see fo_scalars)
 *   LAMB     exp_avg, exp_avg_sq (and a per-tensor reduction before the step: fo_reduce_block) */
#define FO_RULE_LIST(X)                                                                    \
    X(SGD, sgd) X(ADAM, adam) X(PROBE, probe) X(RMSPROP, rmsprop) X(ADAGRAD, adagrad)      \
    X(LION, lion) X(ADAMAX, adamax) X(RADAM, radam) X(EMA, ema) X(NADAM, nadam)         \
    X(ADADELTA, adadelta) X(RPROP, rprop) X(ASGD, asgd) X(LAMB, lamb)
#define FO_RULE_ENUM_(E, c) FO_RULE_##E,
enum { FO_RULE_LIST(FO_RULE_ENUM_) FO_NRULES };
#undef FO_RULE_ENUM_

/* Storage signatures with compiled loop bodies: FO_SIG(ENUM_NAME, c_suffix, storage dtype of
 * every stream, compute type). One more signature has no table of its own: FO_SIG_MIXED, any
 * tensor whose streams mix storage types (16-bit params, float32 master weights, 16-bit
 * states, float32 gradients of 16-bit params), which runs a fused body of its storage class
 * (FO_MIX_LIST below) where the rule has one, else the float32 bodies through the conversion
 * adapter of storage.c. A tensor's streams select the signature; a combination neither
 * accepts is refused by the driver before anything runs. */
#define FO_SIG_LIST(X) X(F32, f32, FO_DT_F32, float) X(F64, f64, FO_DT_F64, double)
#define FO_SIG_ENUM_(E, s, dt, T) FO_SIG_##E,
enum { FO_SIG_LIST(FO_SIG_ENUM_) FO_NSIGS, FO_SIG_MIXED = FO_NSIGS, FO_NSIGS_ALL };
#undef FO_SIG_ENUM_

/* Mixed storage with fused loop bodies. A mixed-storage tensor of one of these storage
 * classes runs a loop body instantiated for its storage (kernels_body.h's storage hooks: the
 * 16-bit streams converted in the loop, no float32 tile in between), where the rule has such an
 * entry in the kernel table's `mixed` part (today Adam/AdamW); every other mixed tensor, and
 * every rule without an entry, runs through the tile adapter (storage.c). Both give the same
 * bits. FO_MIX(ENUM_NAME, c_suffix, param storage, gradient storage, states storage):
 *   param    FO_PS_MASTER: bfloat16 param written from a float32 master copy (stream FO_M);
 *            FO_PS_BF16: the bfloat16 param carried, rounded to nearest (no stochastic
 *            rounding, no Kahan compensation: those stay on the adapter)
 *   gradient FO_ST_BF16 (the param's dtype) or FO_ST_NATIVE (float32)
 *   states   every present state FO_ST_NATIVE (float32) or every one FO_ST_BF16, rounded to
 *            nearest. fo_mixed_class (storage.c) picks the class of a tensor. */
enum { FO_ST_NATIVE = 0, FO_ST_BF16 = 1 };
enum { FO_PS_OWN = 0, FO_PS_BF16 = 1, FO_PS_MASTER = 2 };
#define FO_MIX_LIST(X)                                                                     \
    X(BF16M, bf16m, FO_PS_MASTER, FO_ST_BF16, FO_ST_NATIVE)                                \
    X(BF16M_G32, bf16m_g32, FO_PS_MASTER, FO_ST_NATIVE, FO_ST_NATIVE)                      \
    X(BF16M_S16, bf16m_s16, FO_PS_MASTER, FO_ST_BF16, FO_ST_BF16)                          \
    X(BF16M_G32_S16, bf16m_g32_s16, FO_PS_MASTER, FO_ST_NATIVE, FO_ST_BF16)                \
    X(BF16, bf16, FO_PS_BF16, FO_ST_BF16, FO_ST_NATIVE)                                    \
    X(BF16_G32, bf16_g32, FO_PS_BF16, FO_ST_NATIVE, FO_ST_NATIVE)                          \
    X(BF16_S16, bf16_s16, FO_PS_BF16, FO_ST_BF16, FO_ST_BF16)                              \
    X(BF16_G32_S16, bf16_g32_s16, FO_PS_BF16, FO_ST_NATIVE, FO_ST_BF16)
#define FO_MIX_ENUM_(E, c, P, G, S) FO_MIX_##E,
enum { FO_MIX_LIST(FO_MIX_ENUM_) FO_NMIX };
#undef FO_MIX_ENUM_

/* ---- hyperparameters: one named record of doubles per rule ------------------------------
 * FO_<RULE>_ARGS lists the record's fields. The Python layer (fastopt/_spec.py) fills a record
 * by field name, through fo_arg_names(), so the order below is private to C: a field that the
 * spec does not name (or a name the record lacks) is an error at import, never a silent
 * mix-up. Flags are 0.0 / 1.0. Every rule that reads a gradient ends with maximize, l1 and
 * clip (clip_value; 0 disables). */
#define FO_ADAM_ARGS(X) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay)                     \
    X(decoupled_weight_decay) X(maximize) X(l1) X(clip_value)
#define FO_SGD_ARGS(X) X(lr) X(momentum) X(dampening) X(weight_decay) X(nesterov)          \
    X(maximize) X(l1) X(clip_value)
#define FO_PROBE_ARGS(X) X(nstreams)
#define FO_EMA_ARGS(X) X(decay)
#define FO_NADAM_ARGS(X) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay) X(momentum_decay)   \
    X(decoupled_weight_decay) X(maximize) X(l1) X(clip_value)
#define FO_RMSPROP_ARGS(X) X(lr) X(alpha) X(eps) X(weight_decay) X(momentum) X(centered)   \
    X(maximize) X(l1) X(clip_value)
#define FO_ADAGRAD_ARGS(X) X(lr) X(lr_decay) X(weight_decay) X(eps) X(maximize) X(l1) X(clip_value)
#define FO_LION_ARGS(X) X(lr) X(beta1) X(beta2) X(weight_decay) X(maximize) X(l1) X(clip_value)
#define FO_ADAMAX_ARGS(X) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay) X(maximize) X(l1)  \
    X(clip_value)
#define FO_RADAM_ARGS(X) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay)                    \
    X(decoupled_weight_decay) X(maximize) X(l1) X(clip_value)
#define FO_ADADELTA_ARGS(X) X(lr) X(rho) X(eps) X(weight_decay) X(maximize) X(l1) X(clip_value)
#define FO_RPROP_ARGS(X) X(etaminus) X(etaplus) X(step_size_min) X(step_size_max) X(maximize) \
    X(l1) X(clip_value)
#define FO_ASGD_ARGS(X) X(lr) X(lambd) X(alpha) X(t0) X(weight_decay) X(maximize) X(l1)     \
    X(clip_value)
#define FO_LAMB_ARGS(X) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay) X(bias_correction)    \
    X(use_nvlamb) X(maximize) X(l1) X(clip_value)

#define FO_ARG_FIELD_(name) double name;
#define FO_ARGS_STRUCT_(E, c) typedef struct fo_##c##_args { FO_##E##_ARGS(FO_ARG_FIELD_) } fo_##c##_args;
FO_RULE_LIST(FO_ARGS_STRUCT_)
#undef FO_ARGS_STRUCT_
#undef FO_ARG_FIELD_

/* The field names of a rule's record, in memory order; *count receives their number. NULL for
 * an unknown rule. */
const char *const *fo_arg_names(int rule, int *count);
/* The rule's C name ("adam", ...), or NULL. */
const char *fo_rule_name(int rule);

/* ---- per-step scalars ------------------------------------------------------------------- */
/* Common to every rule: gscale (the gradient's factor: -1 when maximizing, times the
 * gradient scale of the call: a norm-clipping coefficient and/or 1/loss scale), clip (clamp
 * the scaled gradient to [-clip, clip]; 0 disables), l2 (grad += l2*param; 0 disables), l1
 * (grad += l1*sgn(param); 0 disables), decay (decoupled weight decay: param *= decay). */

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

typedef struct fo_adadelta_hp {
    double gscale, clip, l2, l1;
    double rho, one_minus_rho, eps;
    double neg_lr;
} fo_adadelta_hp;

typedef struct fo_rprop_hp {
    double gscale, clip, l1;
    double etaminus, etaplus;       /* the step size's factors where grad*prev < 0 and > 0 */
    double step_size_min, step_size_max;
} fo_rprop_hp;

typedef struct fo_asgd_hp {
    double gscale, clip, l2, l1;
    double decay;               /* 1 - lambd * eta */
    double neg_eta;
    double mu;
    int copy_avg;               /* mu == 1: ax = param (torch copies instead of averaging) */
} fo_asgd_hp;

typedef struct fo_lamb_hp {
    double gscale, clip, l1;
    double beta1, one_minus_beta1, beta2, one_minus_beta2;
    double bias_correction1, bias_correction2, eps, weight_decay;
    double lr;
    int trust;                  /* use_nvlamb or weight_decay != 0: scale by the trust ratio */
    double neg_ratio;           /* -lr * trust ratio: set by fo_reduced from the tensor's norms */
} fo_lamb_hp;

/* Fill the per-step scalars of a rule from its argument record, the step count and this
 * call's gradient scale. `aux` is the tensor's own scalar state, read and updated (NAdam's
 * mu_product; ASGD's eta and mu, in this order; NULL for the rules without one);
 * fo_aux_count tells how many scalars a rule keeps per tensor (fo_has_aux: whether any). */
void fo_scalars(int rule, void *hp, const double *args, int64_t step, double *aux,
                double grad_scale);
int fo_has_aux(int rule);
int fo_aux_count(int rule);

/* Rules whose step needs per-tensor sums first (LAMB: the squared norms of the param and of
 * its update): fo_reduce_count gives how many (0 for the others). fo_reduce_block adds up the
 * block [off, off + n) of one tensor (streams `ptrs`, per-step scalars `hp` from fo_scalars)
 * into out[0..count-1], reading only, in an order that depends on n alone (8 float64
 * accumulators, as fo_norm_block); the driver adds the blocks of a tensor in order and hands
 * the totals to fo_reduced, which completes the tensor's per-step scalars. */
int fo_reduce_count(int rule);
void fo_reduce_block(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                     const void *hp, double *out);
void fo_reduced(int rule, void *hp, const double *sums);
/* Size in bytes of the per-step scalar struct of a rule; number of fields of its record. */
size_t fo_hp_size(int rule);
int fo_nargs(int rule);
/* The state streams a rule's body reads whenever it runs (bit k: stream k): the driver refuses
 * a stepping tensor without one of them. The optional ones (AMSGrad's maximum, SGD's momentum
 * buffer, RMSprop's momentum buffer and centered average) are read only where present. */
unsigned fo_required_streams(int rule);

/* ---- kernels ------------------------------------------------------------------------------ */

/* A kernel runs n elements; `index` is the global index of the first one within its tensor
 * (for counter-based stochastic rounding; the rules compiled today do not use it). */
typedef void (*fo_kernel_fn)(int64_t n, int64_t index, void *const *streams, const void *hp);

typedef struct fo_kernel_table {
    const char *name;                  /* "baseline", "avx2", "avx512" */
    fo_kernel_fn fn[FO_NSIGS][FO_NRULES];
    /* fused mixed-storage bodies by storage class (FO_MIX_LIST), NULL: the tile adapter */
    fo_kernel_fn mixed[FO_NMIX][FO_NRULES];
} fo_kernel_table;

/* The signature of a tensor whose streams have these storage dtypes (FO_MAX_STREAMS codes;
 * FO_DT_NONE for absent streams), or -1 if no signature accepts them. */
int fo_signature(const unsigned char *dtypes);
/* Names of the signatures ("f32", "f64", "mixed"); *count receives their number. */
const char *const *fo_sig_names(int *count);

/* ---- mixed storage (storage.c) ------------------------------------------------------------ */

/* 1 if these stream dtypes form a mixed-storage tensor the adapter runs: param float16,
 * bfloat16 or float32; gradient the param's dtype or float32; states float32, float16 or
 * bfloat16; FO_M absent, or (16-bit params only) float32 (master) or the param's dtype
 * (Kahan compensation). */
int fo_mixed_signature(const unsigned char *dtypes);
/* The fused storage class (FO_MIX_*) of a mixed-storage tensor with these stream dtypes,
 * pointers and rounding, or -1 (the tile adapter runs it). -1 for every tensor while fusion is
 * switched off by fo_mixed_fusion(0) (tests compare the two paths; the default is on);
 * fo_mixed_fusion returns the previous setting, and a negative argument only reads it. */
int fo_mixed_class(const unsigned char *dtypes, void *const *ptrs, const fo_store *st);
int fo_mixed_fusion(int on);
/* Run the float32 loop body `body` over elements [off, off + n) of a mixed-storage tensor,
 * with the conversions of instruction set `isa` (the tile adapter). */
void fo_mixed_segment(const char *isa, fo_kernel_fn body, int64_t off, int64_t n,
                      void *const *ptrs, const unsigned char *dtypes, const void *hp,
                      const fo_store *st);
/* Convert n elements with the conversions of instruction set `isa`: 16-bit `dt` (FO_DT_F16 or
 * FO_DT_BF16) to float32 (to16 = 0) or float32 to `dt` rounded by `rounding` (element i of the
 * call drawing as element index + i under `key`). Returns 0, or -1 for another dt. */
int fo_convert(const char *isa, int dt, int to16, int rounding, uint64_t key, int64_t index,
               int64_t n, const void *src, void *dst);
/* Float32 bit patterns narrowed (nearest and stochastic; all 2^32 with `full`, else 2^23 that
 * hold every rounding case) and every 16-bit pattern widened by the instruction set's loops,
 * against the scalar reference: the number of mismatches. */
int64_t fo_convert_check_all(const char *isa, int dt, int full);

/* ---- 8-bit states (storage.c) -------------------------------------------------------------- */

/* Build the quantization maps and their lookup tables (idempotent; call once before any
 * thread runs: the driver does at import). Returns 0, or -1 if a table failed its own check. */
int fo_q8_init(void);
/* The 256 float32 values of a map: signed (index code + 128 for int8 code) or unsigned (index
 * the uint8 code); sorted ascending, each with an exact 0 (signed code 0, unsigned code 0). */
const float *fo_q8_map(int is_signed);
/* Quantize n float32 values (blocks from values[0]) to codes (int8 for FO_DT_Q8S, uint8 for
 * FO_DT_Q8U) and ceil(n / FO_Q8_BLOCK) scales; or dequantize (to_q = 0) codes and scales to
 * float32; with the loops of instruction set `isa` (every one gives the same bits). Returns
 * 0, or -1 for another dt. */
int fo_q8_convert(const char *isa, int dt, int to_q, int64_t n, float *values, void *codes,
                  float *absmax);
/* Every float32 x with |x| <= 1 (both signs) quantized, and every code dequantized at a few
 * scales, by the instruction set's loops against the exact table method: the number of
 * mismatches (-1 for another dt). */
int64_t fo_q8_check_all(const char *isa, int dt);

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

/* Run rule `rule` with signature `sig` on elements [off, off + n) of one tensor whose streams
 * are `ptrs` (FO_MAX_STREAMS pointers to element 0, unused ones NULL) of storage `dtypes`,
 * with per-step scalars `hp` and (mixed storage) the rounding `st`. */
void fo_run_segment(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                    const unsigned char *dtypes, const void *hp, const fo_store *st);

/* ---- gradient norms ----------------------------------------------------------------------- */

/* The partial reduction of n elements for a gradient norm: the sum of squares (FO_NORM_L2), of
 * absolute values (FO_NORM_L1), or the largest absolute value (FO_NORM_INF, NaN-propagating),
 * accumulated in double in an order that depends on n alone; x has storage dtype dt (FO_DT_*,
 * 16-bit values widened exactly). */
enum { FO_NORM_L2 = 0, FO_NORM_L1 = 1, FO_NORM_INF = 2 };
double fo_norm_block(int kind, int dt, int64_t n, const void *x);
/* The gradient pre-pass of one block: its sum of squares (bitwise what fo_norm_block gives for
 * FO_NORM_L2) and, in the same read, whether any element is NaN or infinite. */
double fo_prepass_block(int dt, int64_t n, const void *x, int *nonfinite);

#ifdef __cplusplus
}
#endif
#endif /* FASTOPT_H */
