/*
 * storage.c -- 16-bit storage: conversions, rounding, and the mixed-storage adapter.
 *
 * A rule's loop body is written once, for its compute type (kernels_body.h). Tensors whose
 * streams are not all float32 or all float64 (16-bit params, a float32 master copy, 16-bit
 * states, float32 gradients of 16-bit params) run in one of two ways:
 *   - fused: the storage classes of FO_MIX_LIST (fastopt.h; today bfloat16 params with a
 *     float32 master or carried and rounded to nearest, bfloat16 or float32 gradients and
 *     states), for the rules with an entry in the kernel table's `mixed` part (today
 *     Adam/AdamW), run the rule's body instantiated with storage hooks that convert the
 *     16-bit streams in the loop itself (kernels_body.h); fo_mixed_class picks the class.
 *   - the tile adapter (fo_mixed_segment), everything else: it walks the segment in tiles of
 *     FO_TILE elements; per tile it widens each 16-bit stream into a float32 buffer on the
 *     stack (float32 streams are used in place), runs the rule's float32 body on the tile,
 *     and narrows the written streams back, rounded as the call asks. The tile stays in L1,
 *     so memory sees one read and one write of every stream, as for a float32 step, but each
 *     16-bit stream also makes a float32 round trip through L1 (a profile of bfloat16
 *     Adam with a float32 master put a quarter of the step in the widen/narrow loops).
 * Both convert with the same per-element functions (the scalar ones of fo_half.h or vector
 * loops equal to them bit for bit), so they give the same bits (where two different NaNs
 * meet in one operation, which propagates is the compiler's operand order, as between
 * instruction sets), and results do not depend on where tiles, segments or thread chunks
 * begin.
 *
 * Param storage, by the dtype of stream FO_M:
 *   none          the 16-bit param itself is carried: read, updated in float32, rounded back
 *                 (nearest or stochastic);
 *   float32       master weights: the body updates the master in place, the param is written
 *                 from it, rounded to nearest even;
 *   param's dtype Kahan compensation: the value carried is param + comp (both widened and
 *                 added in float32); after the update x, param = nearest(x) and comp =
 *                 nearest(x - param) (x - param is exact in float32).
 * 16-bit states are rounded back by the call's rounding mode.
 *
 * Round to nearest even, float32 -> bfloat16: integer arithmetic on the bits (vectorised by
 * the compiler); NaN becomes the quiet NaN of its sign (ml_dtypes' bits), subnormals are kept.
 * AVX-512 BF16's vcvtneps2bf16 is not used: it flushes subnormal inputs and outputs to zero.
 * float32 <-> float16: F16C (vcvtps2ph/vcvtph2ps) on the AVX2 and AVX-512 tables, a portable
 * scalar path on the baseline; both round to nearest even with subnormals and overflow to Inf
 * as IEEE 754 says, and both quiet a NaN keeping its sign and leading payload bits.
 *
 * Stochastic rounding draws 16 random bits per element from a counter-based hash of (the
 * tensor's key, the element's index, the stream): the key is fo_sr_key(seed, param id, step),
 * so a draw depends on nothing else (thread count, SIMD path, tiling, a resumed run). The
 * value rounds away from zero when the draw is below its dropped bits (bfloat16: the 16
 * dropped bits; float16: the 13 dropped bits of a normal result, the dropped bits truncated to
 * 16 of a subnormal one), so over the 2^16 draws it rounds up in exactly that fraction. NaN
 * and Inf are rounded to nearest (they pass through); a finite value above the largest finite
 * 16-bit value may round to Inf, never to NaN.
 */
#include <math.h>
#include <string.h>
#include "fastopt.h"
#include "fo_half.h"

#if defined(__GNUC__) || defined(__clang__)
#define FO_INLINE static inline __attribute__((always_inline))
#define FO_RESTRICT __restrict__
#define FO_ALIGN64 __attribute__((aligned(64)))
#elif defined(_MSC_VER)
#define FO_INLINE static __forceinline
#define FO_RESTRICT __restrict
#define FO_ALIGN64 __declspec(align(64))
#else
#define FO_INLINE static inline
#define FO_RESTRICT
#define FO_ALIGN64
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FO_X86_F16C 1
#include <immintrin.h>
#else
#define FO_X86_F16C 0
#endif

/* ---- the random draws ------------------------------------------------------------------- */

FO_INLINE uint32_t fo_mix32(uint32_t x)
{
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static uint64_t fo_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t fo_sr_key(uint64_t seed, int64_t param, int64_t step)
{
    return fo_mix64(seed ^ fo_mix64((uint64_t)param ^ fo_mix64((uint64_t)step)));
}

/* 16 random bits for element `index` under tensor key (klo, khi); fo_draw_hi is the part that
 * depends on the upper 32 bits of the index only (hoisted out of the loops). */
FO_INLINE uint32_t fo_draw_hi(uint32_t khi, int64_t index)
{
    return fo_mix32(khi ^ (uint32_t)((uint64_t)index >> 32));
}
FO_INLINE uint32_t fo_draw_lo(uint32_t klo, uint32_t hi, uint32_t index_lo)
{
    return fo_mix32((index_lo * 0x9e3779b1u) ^ klo ^ hi) >> 16;
}
FO_INLINE uint32_t fo_draw(uint32_t klo, uint32_t khi, int64_t index)
{
    return fo_draw_lo(klo, fo_draw_hi(khi, index), (uint32_t)index);
}

/* Branch-free (selects only), so that the loops vectorise. */
FO_INLINE uint16_t fo_f32_to_bf16_sr(float f, uint32_t r)
{
    const uint32_t u = fo_bits(f);
    const uint32_t a = u & 0x7fffffffu;
    const uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    const uint32_t special = a > 0x7f800000u ? nan : u >> 16;       /* NaN; Inf as it is */
    return (uint16_t)((a & 0x7f800000u) == 0x7f800000u ? special : (u + r) >> 16);
}

FO_INLINE uint16_t fo_f32_to_f16_sr(float f, uint32_t r)
{
    const uint32_t u = fo_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    /* normal results: the 13 dropped bits against the upper 13 of the draw */
    const uint32_t b = a - 0x38000000u;
    const uint32_t hn = (b >> 13) + ((r >> 3) < (b & 0x1fffu));
    /* subnormal results (|f| < 2^-14), quantum 2^-24: m / 2^shift with the fraction cut to
     * 16 bits; 32-bit arithmetic only, m < 2^24 */
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;                      /* >= 14 where it is used */
    const uint32_t sc = shift < 31u ? shift : 31u;
    const uint32_t q = m >> sc;
    const uint32_t rem = m & ((1u << sc) - 1u);
    const uint32_t s16 = (shift - 16u) < 24u ? shift - 16u : 0u;
    uint32_t frac16 = shift >= 16u ? rem >> s16 : rem << ((16u - shift) & 15u);
    frac16 = shift >= 40u ? 0u : frac16;                  /* (float32 subnormals too) */
    const uint32_t hs = q + (r < frac16);
    uint32_t h = a < 0x38800000u ? hs : hn;
    h = a >= 0x47800000u ? 0x7c00u : h;                   /* >= 65536: beyond any rounding */
    /* Inf as it is, NaN quieted keeping its sign and leading payload (as fo_f32_to_f16);
     * bit masks rather than selects here: one more select and GCC no longer if-converts */
    const uint32_t nanm = 0u - (uint32_t)(a > 0x7f800000u);
    const uint32_t special = 0x7c00u | (nanm & (0x200u | ((a >> 13) & 0x3ffu)));
    const uint32_t spm = 0u - (uint32_t)(a >= 0x7f800000u);
    h = (h & ~spm) | (special & spm);
    return (uint16_t)(sign | h);
}

/* ---- conversion loops, one copy per instruction set ------------------------------------- */

typedef struct fo_cvt {
    void (*widen)(int dt, int64_t n, const void *src, float *dst);
    void (*narrow)(int dt, int64_t n, const float *src, void *dst);
    void (*narrow_sr)(int dt, int64_t n, const float *src, void *dst, uint64_t key,
                      int64_t index);
} fo_cvt;

#define FO_CVT_LOOPS(SFX, F16_WIDEN, F16_NARROW, BF16_NARROW)                             \
    static void fo_widen_##SFX(int dt, int64_t n, const void *src, float *FO_RESTRICT dst) \
    {                                                                                     \
        const uint16_t *FO_RESTRICT h = (const uint16_t *)src;                            \
        if (dt == FO_DT_BF16) {                                                           \
            for (int64_t i = 0; i < n; i++) dst[i] = fo_bf16_to_f32(h[i]);                \
        } else {                                                                          \
            F16_WIDEN;                                                                    \
        }                                                                                 \
    }                                                                                     \
    static void fo_narrow_##SFX(int dt, int64_t n, const float *FO_RESTRICT src, void *dst) \
    {                                                                                     \
        uint16_t *FO_RESTRICT h = (uint16_t *)dst;                                        \
        if (dt == FO_DT_BF16) {                                                           \
            BF16_NARROW;                                                                  \
        } else {                                                                          \
            F16_NARROW;                                                                   \
        }                                                                                 \
    }                                                                                     \
    static void fo_narrow_sr_##SFX(int dt, int64_t n, const float *FO_RESTRICT src,       \
                                   void *dst, uint64_t key, int64_t index)                \
    {                                                                                     \
        uint16_t *FO_RESTRICT h = (uint16_t *)dst;                                        \
        const uint32_t klo = (uint32_t)key, khi = (uint32_t)(key >> 32);                  \
        while (n > 0) {     /* runs within which the index's upper 32 bits are constant */ \
            const uint32_t lo = (uint32_t)index;                                          \
            const int64_t room = (int64_t)((1ull << 32) - lo);                            \
            const int64_t cap = room < (1ll << 30) ? room : (1ll << 30);                  \
            const int32_t m = (int32_t)(n < cap ? n : cap);                               \
            const uint32_t hi = fo_draw_hi(khi, index);                                   \
            if (dt == FO_DT_BF16) {                                                       \
                for (int32_t i = 0; i < m; i++)                                           \
                    h[i] = fo_f32_to_bf16_sr(src[i], fo_draw_lo(klo, hi, lo + (uint32_t)i)); \
            } else {                                                                      \
                for (int32_t i = 0; i < m; i++)                                           \
                    h[i] = fo_f32_to_f16_sr(src[i], fo_draw_lo(klo, hi, lo + (uint32_t)i)); \
            }                                                                             \
            n -= m; index += m; src += m; h += m;                                         \
        }                                                                                 \
    }

#define FO_F16_WIDEN_SCALAR for (int64_t i = 0; i < n; i++) dst[i] = fo_f16_to_f32(h[i])
#define FO_F16_NARROW_SCALAR for (int64_t i = 0; i < n; i++) h[i] = fo_f32_to_f16(src[i])
/* bfloat16 nearest: the compiler vectorises fo_f32_to_bf16's integer arithmetic, but its
 * 32-to-16-bit narrowing of the result is slow; AVX2 below packs explicitly */
#define FO_BF16_NARROW_SCALAR for (int64_t i = 0; i < n; i++) h[i] = fo_f32_to_bf16(src[i])

FO_CVT_LOOPS(baseline, FO_F16_WIDEN_SCALAR, FO_F16_NARROW_SCALAR, FO_BF16_NARROW_SCALAR)

#if FO_X86_F16C
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif
#define FO_F16_WIDEN_AVX2                                                                 \
    int64_t i = 0;                                                                        \
    for (; i + 8 <= n; i += 8)                                                            \
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)))); \
    for (; i < n; i++) dst[i] = fo_f16_to_f32(h[i])
#define FO_F16_NARROW_AVX2                                                                \
    int64_t i = 0;                                                                        \
    for (; i + 8 <= n; i += 8)                                                            \
        _mm_storeu_si128((__m128i *)(h + i),                                              \
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i),                        \
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));  \
    for (; i < n; i++) h[i] = fo_f32_to_f16(src[i])
/* fo_f32_to_bf16 on 8 lanes (the same bits): round to nearest even on the bits, NaN -> the
 * quiet NaN of its sign; the results (< 2^16 each) are then packed 16 at a time */
static inline __m256i fo_bf16_round_avx2(__m256 x)
{
    const __m256i u = _mm256_castps_si256(x);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(0x8000)),
                                        _mm256_set1_epi32(0x7fc0));
    const __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, nan, isnan);
}
#define FO_BF16_NARROW_AVX2                                                               \
    int64_t i = 0;                                                                        \
    for (; i + 16 <= n; i += 16) {                                                        \
        const __m256i r0 = fo_bf16_round_avx2(_mm256_loadu_ps(src + i));                  \
        const __m256i r1 = fo_bf16_round_avx2(_mm256_loadu_ps(src + i + 8));              \
        /* packus interleaves the 128-bit lanes: (r0 lo, r1 lo, r0 hi, r1 hi) */           \
        _mm256_storeu_si256((__m256i *)(h + i),                                           \
                            _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xd8)); \
    }                                                                                     \
    for (; i < n; i++) h[i] = fo_f32_to_bf16(src[i])
FO_CVT_LOOPS(avx2, FO_F16_WIDEN_AVX2, FO_F16_NARROW_AVX2, FO_BF16_NARROW_AVX2)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,f16c,prefer-vector-width=512")
#endif
#define FO_F16_WIDEN_AVX512                                                               \
    int64_t i = 0;                                                                        \
    for (; i + 16 <= n; i += 16)                                                          \
        _mm512_storeu_ps(dst + i,                                                         \
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));  \
    for (; i < n; i++) dst[i] = fo_f16_to_f32(h[i])
#define FO_F16_NARROW_AVX512                                                              \
    int64_t i = 0;                                                                        \
    for (; i + 16 <= n; i += 16)                                                          \
        _mm256_storeu_si256((__m256i *)(h + i),                                           \
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i),                     \
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); \
    for (; i < n; i++) h[i] = fo_f32_to_f16(src[i])
/* fo_f32_to_bf16 on 16 lanes (the same bits), narrowed by vpmovdw (the results are < 2^16) */
static inline __m256i fo_bf16_round_avx512(__m512 x)
{
    const __m512i u = _mm512_castps_si512(x);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i nan = _mm512_or_si512(_mm512_and_si512(hi, _mm512_set1_epi32(0x8000)),
                                        _mm512_set1_epi32(0x7fc0));
    const __mmask16 isnan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, isnan, nan));
}
#define FO_BF16_NARROW_AVX512                                                             \
    int64_t i = 0;                                                                        \
    for (; i + 16 <= n; i += 16)                                                          \
        _mm256_storeu_si256((__m256i *)(h + i),                                           \
                            fo_bf16_round_avx512(_mm512_loadu_ps(src + i)));              \
    for (; i < n; i++) h[i] = fo_f32_to_bf16(src[i])
FO_CVT_LOOPS(avx512, FO_F16_WIDEN_AVX512, FO_F16_NARROW_AVX512, FO_BF16_NARROW_AVX512)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* FO_X86_F16C */

static const fo_cvt fo_cvt_baseline = {fo_widen_baseline, fo_narrow_baseline,
                                       fo_narrow_sr_baseline};
#if FO_X86_F16C
static const fo_cvt fo_cvt_avx2 = {fo_widen_avx2, fo_narrow_avx2, fo_narrow_sr_avx2};
static const fo_cvt fo_cvt_avx512 = {fo_widen_avx512, fo_narrow_avx512, fo_narrow_sr_avx512};
#endif

static const fo_cvt *fo_cvt_for(const char *isa)
{
#if FO_X86_F16C
    if (isa && strcmp(isa, "avx512") == 0) return &fo_cvt_avx512;
    if (isa && strcmp(isa, "avx2") == 0) return &fo_cvt_avx2;
#endif
    (void)isa;
    return &fo_cvt_baseline;
}

/* ---- public conversions (tests, and the NumPy frontend's conversion helpers) ------------ */

int fo_convert(const char *isa, int dt, int to16, int rounding, uint64_t key, int64_t index,
               int64_t n, const void *src, void *dst)
{
    const fo_cvt *c = fo_cvt_for(isa);
    if (dt != FO_DT_BF16 && dt != FO_DT_F16) return -1;
    if (!to16) c->widen(dt, n, src, (float *)dst);
    else if (rounding == FO_ROUND_STOCHASTIC) c->narrow_sr(dt, n, (const float *)src, dst, key, index);
    else c->narrow(dt, n, (const float *)src, dst);
    return 0;
}

int64_t fo_convert_check_all(const char *isa, int dt, int full)
{
    /* Float32 bit patterns through the named table's nearest and stochastic narrowing (one
     * fixed key), against the scalar functions above: all 2^32 of them (full), or every
     * pattern of the upper 20 bits with 8 patterns of the lower 12 that hold every rounding
     * case (exact, just below, at and above a tie of either 16-bit type); then every 16-bit
     * pattern widened. Returns the number of mismatches (NaN results compare by bits too). */
    enum { B = 4096 };
    static const uint32_t lows[8] = {0x000, 0x001, 0x7ff, 0x800, 0x801, 0xfff, 0x5a5, 0xa5a};
    const fo_cvt *c = fo_cvt_for(isa);
    uint32_t in[B];
    uint16_t out[B];
    float wide[B];
    int64_t bad = 0;
    const uint64_t key = fo_sr_key(12345, 7, 3);
    const uint32_t klo = (uint32_t)key, khi = (uint32_t)(key >> 32);
    const uint64_t total = full ? (1ull << 32) : (1ull << 23);
    if (dt != FO_DT_BF16 && dt != FO_DT_F16) return -1;
    for (uint64_t base = 0; base < total; base += B) {
        for (int j = 0; j < B; j++) {
            const uint64_t x = base + (uint64_t)j;
            in[j] = full ? (uint32_t)x : (uint32_t)(((x >> 3) << 12) | lows[x & 7]);
        }
        c->narrow(dt, B, (const float *)in, out);
        for (int j = 0; j < B; j++) {
            const float f = fo_float(in[j]);
            const uint16_t want = dt == FO_DT_BF16 ? fo_f32_to_bf16(f) : fo_f32_to_f16(f);
            bad += out[j] != want;
        }
        c->narrow_sr(dt, B, (const float *)in, out, key, (int64_t)base);
        for (int j = 0; j < B; j++) {
            const float f = fo_float(in[j]);
            const uint32_t r = fo_draw(klo, khi, (int64_t)(base + (uint64_t)j));
            const uint16_t want = dt == FO_DT_BF16 ? fo_f32_to_bf16_sr(f, r) : fo_f32_to_f16_sr(f, r);
            bad += out[j] != want;
        }
    }
    for (uint32_t base = 0; base < 65536u; base += B) {
        for (int j = 0; j < B; j++) out[j] = (uint16_t)(base + (uint32_t)j);
        c->widen(dt, B, out, wide);
        for (int j = 0; j < B; j++) {
            const float want = dt == FO_DT_BF16 ? fo_bf16_to_f32(out[j]) : fo_f16_to_f32(out[j]);
            bad += fo_bits(wide[j]) != fo_bits(want);
        }
    }
    return bad;
}

/* ---- the adapter -------------------------------------------------------------------------- */

size_t fo_dt_size(int dt)
{
    switch (dt) {
    case FO_DT_F32: case FO_DT_ABSMAX: return 4;
    case FO_DT_F64: return 8;
    case FO_DT_F16: case FO_DT_BF16: return 2;
    case FO_DT_Q8S: case FO_DT_Q8U: return 1;
    default: return 0;
    }
}

size_t fo_stream_bytes(int dt, int64_t n)
{
    if (n <= 0) return 0;
    if (dt == FO_DT_ABSMAX) return 4 * (size_t)((n + FO_Q8_BLOCK - 1) / FO_Q8_BLOCK);
    return (size_t)n * fo_dt_size(dt);
}

FO_INLINE int fo_isq8(int dt) { return dt == FO_DT_Q8S || dt == FO_DT_Q8U; }

int fo_has_q8(const unsigned char *dt)
{
    for (int k = FO_S1; k <= FO_S3; k++)
        if (fo_isq8(dt[k])) return 1;
    return 0;
}

/* ---- 8-bit states: the maps, quantization, dequantization --------------------------------
 *
 * Block-wise quantization: a state of n elements is kept as n one-byte codes and one float32
 * scale per block of FO_Q8_BLOCK elements (the last block may be partial), the block's
 * largest magnitude (absmax). Element value = map[code] * absmax, in float32.
 *
 * The maps are dynamic (a decade exponent and a linear fraction, the published design of
 * bitsandbytes' dynamic-tree map, constructed here on its own): for level i = 0..6 the values
 * 10^(i-6) * (0.1 + (k + 1/2) * 0.9 / c_i), k = 0..c_i - 1, i.e. the midpoints of c_i equal
 * parts of [0.1, 1] scaled into the decade [10^(i-6) / 10, 10^(i-6)], computed in double and
 * rounded once to float32.
 *   unsigned (uint8 codes): 0, levels 0..6 with c_i = 2^(i+1) (254 values), 1: 256 values;
 *   signed (int8 codes):    code 0 is 0; positive codes 1..127 the levels 1..6 with c_i = 2^i
 *                           (126 values) and 1; negative codes -1..-128 the negated levels
 *                           0..6 with c_i = 2^i (127 values) and -1. So +-1 are exact (the
 *                           block's absmax element is stored exactly, whatever its sign) and
 *                           only the smallest negative magnitude (5.5e-7) has no positive
 *                           twin.
 * Sorted: signed map index = code + 128, unsigned index = code.
 *
 * Requantizing a block (after the rule's float32 body updated it):
 *   - a NaN or Inf anywhere in the block: its scale is stored as NaN and every code as 0, so
 *     the whole block reads NaN (a float32 state would hold NaN in that element only; the
 *     update of the block's other elements is lost either way once they read NaN);
 *   - absmax 0 (or an empty block): scale 0, codes 0 (reads 0);
 *   - otherwise scale = absmax and each element x = v / absmax (float32 division; |x| <= 1) is
 *     given the code of the map value nearest to x, exactly: the midpoints between
 *     neighbouring map values are the decision points, compared exactly; a value exactly on
 *     a midpoint takes the code of the smaller magnitude (ties toward zero). Unsigned maps
 *     give negative values (which the rules using them never produce) code 0.
 * Zero is code 0 of both maps, so 0 maps to 0 exactly and a state element whose inputs stay
 * zero stays zero.
 *
 * The exact nearest code without a search: per side (magnitudes toward +, toward -), the
 * thresholds thr[j] between magnitudes j and j + 1 are kept as float32 (the midpoint itself
 * when float32 holds it, else the float32 just below it: |x| > thr[j] exactly when |x| lies
 * beyond the midpoint, for every float32 |x|), and a table indexed by the top bits of |x|
 * (its exponent and leading 8 mantissa bits, from 2^-24 up to 1) holds the magnitude index of
 * the bucket's smallest value. No bucket holds two thresholds (fo_q8_init checks each), so
 * j = table[bucket] + (|x| > thr[table[bucket]]) is the exact answer. The baseline uses this
 * table method, and it is the oracle of the others (fo_q8_check_all).
 *
 * The AVX2 and AVX-512 quantizers compute the code instead, since a table lookup there is a
 * gather, and gathers are slow on some CPUs (an AMD EPYC VM: ~25 cycles for 8 lanes; the gathering
 * quantizer took a third of an 8-bit Adam step):
 *   1. the level, exactly: the count of level boundaries below |x|, compared with broadcast
 *      constants. The boundaries are the thr[] entries that separate two levels (and 0 from
 *      the first level, the last level from 1), so the count is exact like thr[] itself:
 *      0 is code 0, 1..7 levels 0..6, 8 the magnitude 1. The signed map's sides share their
 *      levels 1..6 with the same values (so the same thresholds: fo_q8_init checks), the
 *      negative side's magnitude indices one higher: only the first two boundaries differ by
 *      sign (the positive side has no level 0, both are its threshold above 0).
 *   2. within level i (decade d, c values h = 0.9 / c apart in units of d), float32
 *      u = |x| * s_i - o_i with s_i = 1 / (d h), o_i = 0.1 / h: the value k lies at
 *      u = k + 1/2, the threshold between values k and k + 1 at u = k + 1, so
 *      k = clamp(floor(u), 0, c - 1); the per-level constants are picked from one register
 *      each by the level (permutevar8x32), and the code is the level's first index + k.
 *   3. u is not exact: the rounding of s_i, o_i, the product and the difference, and the
 *      float32 map values and thresholds off the real midpoints, move it by less than 3e-5
 *      of a spacing (2.3e-5 at the worst threshold), so a lane is certain when u is more
 *      than FO_Q8_EPS = 2^-10 from an integer: then no threshold can lie between u and the
 *      exact value, and floor(u) is exact. The other lanes (~0.2% of the nonzero ones) take
 *      the table method. That this gives exactly the table's code for every float32 x in
 *      [-1, 1] is not left to the argument: fo_q8_check_all runs all 2^31 of them
 *      (tests/test_quantized.py); x = v / absmax is never beyond 1 in magnitude (|v| <=
 *      absmax and the division rounds correctly).
 */

#define FO_Q8_LO 0x33800000u                    /* 2^-24: smaller |x| share bucket 0 */
#define FO_Q8_NB (((0x3f800000u - FO_Q8_LO) >> 15) + 1)

typedef struct fo_q8_side {
    float thr[257];                             /* thresholds above magnitude j (then +inf) */
    unsigned char bucket[FO_Q8_NB];             /* magnitude index of each bucket's low end */
    int count;                                  /* magnitudes, 0 included */
} fo_q8_side;

static float fo_q8_maps[2][256];                /* [0] unsigned, [1] signed */
static fo_q8_side fo_q8_sides[3];               /* unsigned, signed +, signed - */
static int fo_q8_ready = 0;
/* The lookup table of each map, both sides together so that one lookup serves either sign:
 * side 0 toward +, side 1 toward - (unsigned: side 0 only), packed[side * FO_Q8_NB + b]: the
 * quantizers read one 32-bit entry per bucket: the
 * bucket's magnitude index j << 16, and in the low 16 bits the offset of the one threshold
 * within the bucket from the bucket's first bit pattern (0xffff: none). A threshold within a
 * bucket shares the bucket's upper bits (exponent and 8 mantissa bits), so |x| is beyond it
 * exactly when the low 15 bits of |x| exceed that offset: one lookup per element. */
typedef struct fo_q8_tab {
    uint32_t packed[2 * FO_Q8_NB];
} fo_q8_tab;
static fo_q8_tab fo_q8_tabs[2];                   /* [0] unsigned, [1] signed */

/* The arithmetic quantizer's constants of a map (see the design note), 8 entries each so
 * that one register holds a column: bound[t] the t-th level boundary; entry t = (boundaries
 * below |x|) - 1 = level t (7: the magnitude 1): the level's scale s and offset o of
 * u = |x| * s - o, its first magnitude index base and its last k (count - 1). Signed: the
 * negative side's boundaries and the positive side's bases (the negative side's index is
 * one higher); on the positive side the first two boundaries are both pos0, its threshold
 * above 0, so no positive |x| counts 1 (level 0 is the negative side's alone). */
typedef struct fo_q8_arith {
    float bound[8], s[8], o[8];
    int32_t base[8], kmax[8];
    float pos0;
} fo_q8_arith;
static fo_q8_arith fo_q8_ariths[2];             /* [0] unsigned, [1] signed */

static const double fo_q8_decade[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};

/* Level i's values in ascending order, appended to out (double, rounded once to float32). */
static int fo_q8_level(float *out, int at, int level, int count)
{
    const double *decade = fo_q8_decade;
    for (int k = 0; k < count; k++)
        out[at++] = (float)(decade[level] * (0.1 + ((double)k + 0.5) * 0.9 / (double)count));
    return at;
}

static int fo_q8_build_side(fo_q8_side *sd, const float *mag, int count)
{
    /* mag: count ascending magnitudes, mag[0] = 0 */
    for (int j = 0; j + 1 < count; j++) {
        const double mid = ((double)mag[j] + (double)mag[j + 1]) * 0.5;
        float t = (float)mid;
        if ((double)t > mid) t = nextafterf(t, 0.0f);
        sd->thr[j] = t;
    }
    for (int j = count - 1; j < 257; j++) sd->thr[j] = INFINITY;
    sd->count = count;
    int bad = 0;
    for (uint32_t b = 0; b < FO_Q8_NB; b++) {
        /* the bucket's values: bits [lo, hi]; bucket 0 also holds everything below 2^-24 */
        const uint32_t lo = b == 0 ? 0u : FO_Q8_LO + (b << 15);
        uint32_t hi = FO_Q8_LO + (b << 15) + 0x7fffu;
        if (hi > 0x3f800000u) hi = 0x3f800000u;
        const float xlo = fo_float(lo), xhi = fo_float(hi);
        int j = 0;
        while (xlo > sd->thr[j]) j++;
        sd->bucket[b] = (unsigned char)j;
        /* at most one threshold within (xlo, xhi] */
        if (xhi > sd->thr[j] && xhi > sd->thr[j + 1]) bad = 1;
    }
    return bad;
}

/* The arithmetic constants of a side whose levels 0..6 have 2^(i + shift) values each
 * (magnitude 0 is zero, then the levels, then 1), from its exact thresholds sd->thr; bases
 * lowered by base0. */
static void fo_q8_build_arith(fo_q8_arith *ar, const fo_q8_side *sd, int shift, int base0)
{
    int base = 1;
    for (int i = 0; i <= 6; i++) {
        const int count = 1 << (i + shift);
        const double h = 0.9 / (double)count;
        ar->bound[i] = sd->thr[base - 1];       /* between magnitude base - 1 and the level */
        ar->s[i] = (float)(1.0 / (fo_q8_decade[i] * h));
        ar->o[i] = (float)(0.1 / h);
        ar->base[i] = base - base0;
        ar->kmax[i] = count - 1;
        base += count;
    }
    /* the magnitude 1: u = 0.5, never near an integer */
    ar->bound[7] = sd->thr[base - 1];
    ar->s[7] = 0.0f;
    ar->o[7] = -0.5f;
    ar->base[7] = base - base0;
    ar->kmax[7] = 0;
}

int fo_q8_init(void)
{
    if (fo_q8_ready) return fo_q8_ready > 0 ? 0 : -1;
    float u[256], pos[128], neg[129];
    int n = 0;
    u[n++] = 0.0f;
    for (int i = 0; i <= 6; i++) n = fo_q8_level(u, n, i, 2 << i);
    u[n++] = 1.0f;
    int np = 0, nn = 0;
    pos[np++] = 0.0f;
    for (int i = 1; i <= 6; i++) np = fo_q8_level(pos, np, i, 1 << i);
    pos[np++] = 1.0f;
    neg[nn++] = 0.0f;
    for (int i = 0; i <= 6; i++) nn = fo_q8_level(neg, nn, i, 1 << i);
    neg[nn++] = 1.0f;
    /* n == 256, np == 128 (codes 0..127), nn == 129 (codes 0..-128) */
    memcpy(fo_q8_maps[0], u, sizeof u);
    for (int j = 0; j < 128; j++) fo_q8_maps[1][128 + j] = pos[j];
    for (int j = 1; j < 129; j++) fo_q8_maps[1][128 - j] = -neg[j];
    int bad = fo_q8_build_side(&fo_q8_sides[0], u, 256);
    bad |= fo_q8_build_side(&fo_q8_sides[1], pos, 128);
    bad |= fo_q8_build_side(&fo_q8_sides[2], neg, 129);
    bad |= n != 256 || np != 128 || nn != 129;
    for (int t = 0; t < 3; t++) bad |= !(fo_q8_sides[t].thr[0] > fo_float(FO_Q8_LO));
    fo_q8_build_arith(&fo_q8_ariths[0], &fo_q8_sides[0], 1, 0);
    fo_q8_build_arith(&fo_q8_ariths[1], &fo_q8_sides[2], 0, 1);
    fo_q8_ariths[1].pos0 = fo_q8_sides[1].thr[0];
    /* the signed sides share their thresholds from level 1 on, one magnitude apart */
    for (int j = 1; j < 128; j++) bad |= fo_q8_sides[1].thr[j] != fo_q8_sides[2].thr[j + 1];
    static const int side_of[2][2] = {{0, 0}, {1, 2}};
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < 2; h++) {
            const fo_q8_side *sd = &fo_q8_sides[side_of[t][h]];
            for (uint32_t k = 0; k < FO_Q8_NB; k++) {
                /* the bucket's bit patterns: [FO_Q8_LO + (k << 15), + 0x7fff] (bucket 0 also
                 * takes everything below 2^-24, which stays below every threshold) */
                const uint32_t lo = FO_Q8_LO + (k << 15), j = sd->bucket[k];
                const uint32_t tb = fo_bits(sd->thr[j]);
                const uint32_t off = tb >= lo && tb - lo <= 0x7fffu ? tb - lo : 0xffffu;
                fo_q8_tabs[t].packed[h * FO_Q8_NB + k] = (j << 16) | off;
            }
        }
    fo_q8_ready = bad ? -1 : 1;
    return bad ? -1 : 0;
}

const float *fo_q8_map(int is_signed)
{
    fo_q8_init();
    return fo_q8_maps[is_signed ? 1 : 0];
}

FO_INLINE uint32_t fo_q8_index(const fo_q8_tab *t, uint32_t a, uint32_t side)
{
    /* a: the bits of |x|, |x| <= 1; side 0 (x >= 0) or 1 (x < 0) */
    const uint32_t d = (a < FO_Q8_LO ? FO_Q8_LO : a) - FO_Q8_LO;
    const uint32_t e = t->packed[side * FO_Q8_NB + (d >> 15)];
    return (e >> 16) + ((d & 0x7fffu) > (e & 0xffffu));
}

/* The block's scale from the bits of its values: for float32 bit patterns without the sign,
 * unsigned integer order is magnitude order and NaN/Inf are the patterns >= 0x7f800000, so
 * one integer maximum (which vectorises, exact in any order) gives the absmax and tells a
 * non-finite block. Returns 1 where the codes are all 0 (absmax 0, or NaN: stored as NaN). */
FO_INLINE int fo_q8_scale_from(int64_t j, int64_t m, const float *v, uint32_t mx,
                                float *absmax)
{
    /* elements [j, m) joined to the maximum mx of those before (the SIMD scales' tail) */
    const uint32_t *u = (const uint32_t *)v;
    for (; j < m; j++) {
        const uint32_t a = u[j] & 0x7fffffffu;
        mx = a > mx ? a : mx;
    }
    if (mx >= 0x7f800000u) { *absmax = NAN; return 1; }
    *absmax = fo_float(mx);
    return mx == 0;
}

static int fo_q8_scale(int64_t m, const float *v, float *absmax)
{
    return fo_q8_scale_from(0, m, v, 0, absmax);
}

/* The exact code of x (its bits b) by the tables: the sign picks the side and negates the
 * index, branch-free; unsigned maps give x < 0 code 0. */
FO_INLINE unsigned char fo_q8_code1(int dt, uint32_t b)
{
    if (dt == FO_DT_Q8U) return (unsigned char)fo_q8_index(&fo_q8_tabs[0], b & ((b >> 31) - 1u), 0);
    const uint32_t sg = b >> 31;
    const uint32_t k = fo_q8_index(&fo_q8_tabs[1], b & 0x7fffffffu, sg);
    return (unsigned char)((k ^ (0u - sg)) + sg);
}

/* The SIMD quantizers' unsure lanes (set bits of `bits`, from element at on) recoded by the
 * tables, from the exact x = v / amax. */
FO_INLINE void fo_q8_recode(int is_signed, unsigned bits, int64_t at, const float *v,
                            float amax, unsigned char *c)
{
    for (; bits; bits &= bits - 1) {
        const int64_t l = at + __builtin_ctz(bits);
        c[l] = fo_q8_code1(is_signed ? FO_DT_Q8S : FO_DT_Q8U, fo_bits(v[l] / amax));
    }
}

/* The codes of one block whose absmax (finite, > 0) is amax: x = v / amax, then the exact
 * nearest code (see the design note). Scalar: every instruction set's tail, and baseline. */
static void fo_q8_codes_scalar(int dt, int64_t j0, int64_t m, const float *FO_RESTRICT v,
                               float amax, void *codes)
{
    unsigned char *c = (unsigned char *)codes;
    if (dt == FO_DT_Q8U) {
        for (int64_t j = j0; j < m; j++) c[j] = fo_q8_code1(FO_DT_Q8U, fo_bits(v[j] / amax));
    } else {
        for (int64_t j = j0; j < m; j++) c[j] = fo_q8_code1(FO_DT_Q8S, fo_bits(v[j] / amax));
    }
}

static void fo_q8_unblock_scalar(int dt, int64_t j0, int64_t m, const void *codes, float scale,
                                 float *FO_RESTRICT out)
{
    if (dt == FO_DT_Q8U) {
        const float *map = fo_q8_maps[0];
        const unsigned char *c = (const unsigned char *)codes;
        for (int64_t j = j0; j < m; j++) out[j] = map[c[j]] * scale;
    } else {
        const float *map = fo_q8_maps[1] + 128;
        const signed char *c = (const signed char *)codes;
        for (int64_t j = j0; j < m; j++) out[j] = map[c[j]] * scale;
    }
}

typedef struct fo_q8_fns {
    /* the block's scale (fo_q8_scale's contract) */
    int (*scale)(int64_t m, const float *v, float *absmax);
    /* codes of elements [0, m) of a block (x = v / amax, amax finite and > 0) */
    void (*codes)(int dt, int64_t m, const float *v, float amax, void *codes);
    /* elements [0, m) of a block: map[code] * scale */
    void (*unblock)(int dt, int64_t m, const void *codes, float scale, float *out);
} fo_q8_fns;

static void fo_q8_codes_baseline(int dt, int64_t m, const float *v, float amax, void *codes)
{
    fo_q8_codes_scalar(dt, 0, m, v, amax, codes);
}

static void fo_q8_unblock_baseline(int dt, int64_t m, const void *codes, float scale,
                                   float *out)
{
    fo_q8_unblock_scalar(dt, 0, m, codes, scale, out);
}

static const fo_q8_fns fo_q8_baseline = {fo_q8_scale, fo_q8_codes_baseline,
                                          fo_q8_unblock_baseline};

#if FO_X86_F16C
/* AVX2: the arithmetic quantizer (see the design note), its codes bitwise the table's; the
 * division is IEEE's in both. Dequantizing loads the map
 * values one by one (a gather of the map measured slower than scalar loads on an AMD EPYC)
 * but multiplies and stores 8 at a time: 2x the scalar loop on codes in L1, about the same
 * within a step (where the codes' first loads dominate). */

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
/* fo_q8_scale 8 lanes at a time (the baseline build has no unsigned 32-bit max to vectorise
 * it with): the integer maximum is the same in any order. */
static int fo_q8_scale_avx2(int64_t m, const float *v, float *absmax)
{
    const __m256i abs = _mm256_set1_epi32(0x7fffffff);
    __m256i mx8 = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 8 <= m; j += 8)
        mx8 = _mm256_max_epu32(mx8, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(v + j)),
                                                     abs));
    __m128i mx4 = _mm_max_epu32(_mm256_castsi256_si128(mx8), _mm256_extracti128_si256(mx8, 1));
    mx4 = _mm_max_epu32(mx4, _mm_shuffle_epi32(mx4, _MM_SHUFFLE(1, 0, 3, 2)));
    mx4 = _mm_max_epu32(mx4, _mm_shuffle_epi32(mx4, _MM_SHUFFLE(2, 3, 0, 1)));
    return fo_q8_scale_from(j, m, v, (uint32_t)_mm_cvtsi128_si32(mx4), absmax);
}

/* The codes of 8 x by the map's columns k (see the design note); signed: the positive
 * side's first two boundaries pos0. *unsure: the lanes whose u is within FO_Q8_EPS of an
 * integer, for the table method. */
#define FO_Q8_EPS 0x1p-10f
typedef struct fo_q8_cols {
    __m256 bound[8], s, o;
    __m256i base, kmax;
} fo_q8_cols;

FO_INLINE __m256i fo_q8_code8(const fo_q8_cols *k, int is_signed, __m256 pos0, __m256 x,
                              __m256 *unsure)
{
    /* unsigned: x < 0 counts as 0 (code 0); signed: sg = -1 where x < 0 */
    const __m256i sg = _mm256_srai_epi32(_mm256_castps_si256(x), 31);
    const __m256 a = is_signed ? _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)
                               : _mm256_andnot_ps(_mm256_castsi256_ps(sg), x);
    /* blendv takes the sign bit of x itself: the negative side's boundaries */
    const __m256 b0 = is_signed ? _mm256_blendv_ps(pos0, k->bound[0], x) : k->bound[0];
    const __m256 b1 = is_signed ? _mm256_blendv_ps(pos0, k->bound[1], x) : k->bound[1];
    /* boundaries below |x|, counted negatively: idx = count - 1 = ~(-count); zero lanes
     * (count 0) get idx 7, the magnitude 1's entry: u = 0.5, never unsure */
    const __m256 nz = _mm256_cmp_ps(a, b0, _CMP_GT_OQ);
    __m256i cnt = _mm256_add_epi32(_mm256_castps_si256(nz),
                                   _mm256_castps_si256(_mm256_cmp_ps(a, b1, _CMP_GT_OQ)));
    for (int t = 2; t < 8; t++)
        cnt = _mm256_add_epi32(cnt, _mm256_castps_si256(_mm256_cmp_ps(a, k->bound[t],
                                                                      _CMP_GT_OQ)));
    const __m256i idx = _mm256_xor_si256(cnt, _mm256_set1_epi32(-1));
    const __m256 u = _mm256_sub_ps(_mm256_mul_ps(a, _mm256_permutevar8x32_ps(k->s, idx)),
                                   _mm256_permutevar8x32_ps(k->o, idx));
    const __m256 r = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 dist = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(u, r));
    *unsure = _mm256_cmp_ps(dist, _mm256_set1_ps(FO_Q8_EPS), _CMP_LT_OQ);
    /* truncation is floor for u >= 0 and gives 0 on (-1, 0), which the clamp gives anyway */
    __m256i j = _mm256_max_epi32(_mm256_cvttps_epi32(u), _mm256_setzero_si256());
    j = _mm256_min_epi32(j, _mm256_permutevar8x32_epi32(k->kmax, idx));
    j = _mm256_add_epi32(j, _mm256_permutevar8x32_epi32(k->base, idx));
    /* the negative side's index is one higher, negated: -(j + 1) = j ^ -1 */
    return _mm256_and_si256(_mm256_xor_si256(j, sg), _mm256_castps_si256(nz));
}

static void fo_q8_cols_load(fo_q8_cols *k, const fo_q8_arith *ar)
{
    for (int t = 0; t < 8; t++) k->bound[t] = _mm256_set1_ps(ar->bound[t]);
    k->s = _mm256_loadu_ps(ar->s);
    k->o = _mm256_loadu_ps(ar->o);
    k->base = _mm256_loadu_si256((const __m256i *)ar->base);
    k->kmax = _mm256_loadu_si256((const __m256i *)ar->kmax);
}

static void fo_q8_unblock_avx2(int dt, int64_t m, const void *codes, float scale,
                               float *FO_RESTRICT out)
{
    const __m256 s = _mm256_set1_ps(scale);
    int64_t j = 0;
    if (dt == FO_DT_Q8U) {
        const float *map = fo_q8_maps[0];
        const unsigned char *c = (const unsigned char *)codes;
        for (; j + 8 <= m; j += 8)
            _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_setr_ps(
                map[c[j]], map[c[j + 1]], map[c[j + 2]], map[c[j + 3]], map[c[j + 4]],
                map[c[j + 5]], map[c[j + 6]], map[c[j + 7]]), s));
    } else {
        const float *map = fo_q8_maps[1] + 128;
        const signed char *c = (const signed char *)codes;
        for (; j + 8 <= m; j += 8)
            _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_setr_ps(
                map[c[j]], map[c[j + 1]], map[c[j + 2]], map[c[j + 3]], map[c[j + 4]],
                map[c[j + 5]], map[c[j + 6]], map[c[j + 7]]), s));
    }
    fo_q8_unblock_scalar(dt, j, m, codes, scale, out);
}

/* 32 elements at a time: the 32-bit codes of 4 vectors packed to bytes in one store. */
FO_INLINE void fo_q8_codes32(int is_signed, int64_t m, const float *v, float amax,
                             unsigned char *c)
{
    const __m256 s = _mm256_set1_ps(amax);
    fo_q8_cols k;
    fo_q8_cols_load(&k, &fo_q8_ariths[is_signed]);
    const __m256 pos0 = _mm256_set1_ps(fo_q8_ariths[1].pos0);
    /* the packs interleave the 128-bit lanes: dwords (0 lo, 1 lo, 2 lo, 3 lo, 0 hi, ...) */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t j = 0; j + 32 <= m; j += 32) {
        __m256 un[4];
        __m256i q[4];
        for (int h = 0; h < 4; h++)
            q[h] = fo_q8_code8(&k, is_signed, pos0,
                               _mm256_div_ps(_mm256_loadu_ps(v + j + 8 * h), s), &un[h]);
        /* signed codes fit int8, unsigned ones uint8: saturation never acts */
        const __m256i w = is_signed
            ? _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]))
            : _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]),
                                  _mm256_packus_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(c + j), _mm256_permutevar8x32_epi32(w, order));
        const __m256 any = _mm256_or_ps(_mm256_or_ps(un[0], un[1]), _mm256_or_ps(un[2], un[3]));
        if (_mm256_testz_ps(any, any)) continue;
        for (int h = 0; h < 4; h++)
            fo_q8_recode(is_signed, (unsigned)_mm256_movemask_ps(un[h]), j + 8 * h, v, amax, c);
    }
}

static void fo_q8_codes_avx2(int dt, int64_t m, const float *v, float amax, void *codes)
{
    if (dt == FO_DT_Q8U) fo_q8_codes32(0, m, v, amax, (unsigned char *)codes);
    else fo_q8_codes32(1, m, v, amax, (unsigned char *)codes);
    fo_q8_codes_scalar(dt, m & ~(int64_t)31, m, v, amax, codes);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

static const fo_q8_fns fo_q8_avx2 = {fo_q8_scale_avx2, fo_q8_codes_avx2, fo_q8_unblock_avx2};

/* AVX-512: the same arithmetic quantizer on 16 lanes (compare masks instead of counted
 * compare vectors, the level's constants picked by vpermps from 16 entries: each 8-entry
 * column twice, so the zero lanes' index -1 reads entry 7 as on AVX2), its codes narrowed by
 * vpmovdb (the 32-bit codes are in [-128, 255], so truncation is the byte). Dequantizing
 * looks the map up in registers: its 256 values are 16 vectors, vpermt2ps picks within 32
 * of them by the code's low 5 bits, and three masked blends by bits 5, 6 and 7 choose among
 * the eight pairs (no gather: their speed varies by CPU and microcode). The products are
 * map[code] * scale, as everywhere. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,prefer-vector-width=512")
#endif
static int fo_q8_scale_avx512(int64_t m, const float *v, float *absmax)
{
    const __m512i abs = _mm512_set1_epi32(0x7fffffff);
    __m512i mx16 = _mm512_setzero_si512();
    int64_t j = 0;
    for (; j + 16 <= m; j += 16)
        mx16 = _mm512_max_epu32(mx16, _mm512_and_si512(_mm512_loadu_si512(v + j), abs));
    return fo_q8_scale_from(j, m, v, (uint32_t)_mm512_reduce_max_epu32(mx16), absmax);
}

typedef struct fo_q8_cols16 {
    __m512 bound[8], s, o;
    __m512i base, kmax;
} fo_q8_cols16;

static void fo_q8_cols16_load(fo_q8_cols16 *k, const fo_q8_arith *ar)
{
    FO_ALIGN64 float s[16], o[16];
    FO_ALIGN64 int32_t base[16], kmax[16];
    for (int t = 0; t < 16; t++) {
        s[t] = ar->s[t & 7];
        o[t] = ar->o[t & 7];
        base[t] = ar->base[t & 7];
        kmax[t] = ar->kmax[t & 7];
    }
    for (int t = 0; t < 8; t++) k->bound[t] = _mm512_set1_ps(ar->bound[t]);
    k->s = _mm512_load_ps(s);
    k->o = _mm512_load_ps(o);
    k->base = _mm512_load_si512(base);
    k->kmax = _mm512_load_si512(kmax);
}

/* fo_q8_code8 on 16 lanes, step for step (the same roundings, so the same codes) */
FO_INLINE __m512i fo_q8_code16(const fo_q8_cols16 *k, int is_signed, __m512 pos0, __m512 x,
                               __mmask16 *unsure)
{
    const __m512i xi = _mm512_castps_si512(x);
    const __m512i sg = _mm512_srai_epi32(xi, 31);
    const __mmask16 neg = _mm512_cmplt_epi32_mask(xi, _mm512_setzero_si512());
    const __m512 a = is_signed
        ? _mm512_castsi512_ps(_mm512_and_si512(xi, _mm512_set1_epi32(0x7fffffff)))
        : _mm512_castsi512_ps(_mm512_andnot_si512(sg, xi));
    const __m512 b0 = is_signed ? _mm512_mask_blend_ps(neg, pos0, k->bound[0]) : k->bound[0];
    const __m512 b1 = is_signed ? _mm512_mask_blend_ps(neg, pos0, k->bound[1]) : k->bound[1];
    const __m512i one = _mm512_set1_epi32(1);
    const __mmask16 nz = _mm512_cmp_ps_mask(a, b0, _CMP_GT_OQ);
    __m512i idx = _mm512_mask_add_epi32(_mm512_set1_epi32(-1), nz, _mm512_set1_epi32(-1), one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, b1, _CMP_GT_OQ), idx, one);
    for (int t = 2; t < 8; t++)
        idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, k->bound[t], _CMP_GT_OQ), idx,
                                    one);
    const __m512 u = _mm512_sub_ps(_mm512_mul_ps(a, _mm512_permutexvar_ps(idx, k->s)),
                                   _mm512_permutexvar_ps(idx, k->o));
    const __m512 r = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 dist = _mm512_castsi512_ps(_mm512_and_si512(
        _mm512_castps_si512(_mm512_sub_ps(u, r)), _mm512_set1_epi32(0x7fffffff)));
    *unsure = _mm512_cmp_ps_mask(dist, _mm512_set1_ps(FO_Q8_EPS), _CMP_LT_OQ);
    __m512i j = _mm512_max_epi32(_mm512_cvttps_epi32(u), _mm512_setzero_si512());
    j = _mm512_min_epi32(j, _mm512_permutexvar_epi32(idx, k->kmax));
    j = _mm512_add_epi32(j, _mm512_permutexvar_epi32(idx, k->base));
    return _mm512_maskz_mov_epi32(nz, _mm512_xor_si512(j, sg));
}

FO_INLINE void fo_q8_codes16(int is_signed, int64_t m, const float *v, float amax,
                             unsigned char *c)
{
    const __m512 s = _mm512_set1_ps(amax);
    fo_q8_cols16 k;
    fo_q8_cols16_load(&k, &fo_q8_ariths[is_signed]);
    const __m512 pos0 = _mm512_set1_ps(fo_q8_ariths[1].pos0);
    for (int64_t j = 0; j + 16 <= m; j += 16) {
        __mmask16 un;
        const __m512i q = fo_q8_code16(&k, is_signed, pos0,
                                       _mm512_div_ps(_mm512_loadu_ps(v + j), s), &un);
        _mm_storeu_si128((__m128i *)(c + j), _mm512_cvtepi32_epi8(q));
        fo_q8_recode(is_signed, un, j, v, amax, c);
    }
}

static void fo_q8_codes_avx512(int dt, int64_t m, const float *v, float amax, void *codes)
{
    if (dt == FO_DT_Q8U) fo_q8_codes16(0, m, v, amax, (unsigned char *)codes);
    else fo_q8_codes16(1, m, v, amax, (unsigned char *)codes);
    fo_q8_codes_scalar(dt, m & ~(int64_t)15, m, v, amax, codes);
}

static void fo_q8_unblock_avx512(int dt, int64_t m, const void *codes, float scale,
                                 float *FO_RESTRICT out)
{
    /* the sorted map: unsigned index = code, signed index = code + 128 = the byte ^ 0x80 */
    const float *map = fo_q8_maps[dt == FO_DT_Q8S];
    __m512 t[16];
    for (int q = 0; q < 16; q++) t[q] = _mm512_loadu_ps(map + 16 * q);
    const __m512 s = _mm512_set1_ps(scale);
    const __m512i flip = _mm512_set1_epi32(dt == FO_DT_Q8S ? 0x80 : 0);
    const __m512i bit5 = _mm512_set1_epi32(32), bit6 = _mm512_set1_epi32(64);
    const __m512i bit7 = _mm512_set1_epi32(128);
    const unsigned char *c = (const unsigned char *)codes;
    int64_t j = 0;
    for (; j + 16 <= m; j += 16) {
        const __m512i idx = _mm512_xor_si512(
            _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j))), flip);
        __m512 r[8];
        for (int q = 0; q < 8; q++) r[q] = _mm512_permutex2var_ps(t[2 * q], idx, t[2 * q + 1]);
        const __mmask16 k5 = _mm512_test_epi32_mask(idx, bit5);
        const __mmask16 k6 = _mm512_test_epi32_mask(idx, bit6);
        const __mmask16 k7 = _mm512_test_epi32_mask(idx, bit7);
        for (int q = 0; q < 4; q++) r[q] = _mm512_mask_blend_ps(k5, r[2 * q], r[2 * q + 1]);
        for (int q = 0; q < 2; q++) r[q] = _mm512_mask_blend_ps(k6, r[2 * q], r[2 * q + 1]);
        _mm512_storeu_ps(out + j, _mm512_mul_ps(_mm512_mask_blend_ps(k7, r[0], r[1]), s));
    }
    fo_q8_unblock_scalar(dt, j, m, codes, scale, out);
}
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

static const fo_q8_fns fo_q8_avx512 = {fo_q8_scale_avx512, fo_q8_codes_avx512,
                                        fo_q8_unblock_avx512};
#endif /* FO_X86_F16C */

static const fo_q8_fns *fo_q8_for(const char *isa)
{
#if FO_X86_F16C
    if (isa && strcmp(isa, "avx512") == 0) return &fo_q8_avx512;
    if (isa && strcmp(isa, "avx2") == 0) return &fo_q8_avx2;
#endif
    (void)isa;
    return &fo_q8_baseline;
}

int64_t fo_q8_check_all(const char *isa, int dt)
{
    /* Every x the quantizer can see (|x| <= 1: x = v / absmax with |v| <= absmax, correctly
     * rounded), both signs, through the named table's codes against the exact table lookup;
     * then every code at a few scales through its dequantization against map[code] * scale. */
    enum { B = 4096 };
    if (!fo_isq8(dt) || fo_q8_init() != 0) return -1;
    const fo_q8_fns *q = fo_q8_for(isa);
    uint32_t in[B];
    unsigned char got[B], want[B];
    int64_t bad = 0;
    for (uint32_t sign = 0; sign < 2; sign++)
        for (uint32_t a0 = 0; a0 <= 0x3f800000u; a0 += B) {
            const int m = 0x3f800000u - a0 < B ? (int)(0x3f800000u - a0) + 1 : B;
            for (int j = 0; j < m; j++) in[j] = (sign << 31) | (a0 + (uint32_t)j);
            q->codes(dt, m, (const float *)in, 1.0f, got);
            fo_q8_codes_scalar(dt, 0, m, (const float *)in, 1.0f, want);
            for (int j = 0; j < m; j++) bad += got[j] != want[j];
        }
    static const float scales[6] = {1.0f, 0.5f, 3.0e-5f, 1.7e38f, 1.0e-38f, 0.123456789f};
    const float *map = fo_q8_maps[dt == FO_DT_Q8S];
    unsigned char c[256];
    float out[256];
    for (int j = 0; j < 256; j++) c[j] = (unsigned char)(dt == FO_DT_Q8S ? j - 128 : j);
    for (int t = 0; t < 6; t++) {
        q->unblock(dt, 256, c, scales[t], out);
        for (int j = 0; j < 256; j++) bad += fo_bits(out[j]) != fo_bits(map[j] * scales[t]);
    }
    return bad;
}

/* Requantize one block of m <= FO_Q8_BLOCK float32 values (see the design note). */
static void fo_q8_block(const fo_q8_fns *q, int dt, int64_t m, const float *v, void *codes,
                        float *absmax)
{
    if (q->scale(m, v, absmax)) {
        memset(codes, 0, (size_t)m);
        return;
    }
    q->codes(dt, m, v, *absmax, codes);
}

int fo_q8_convert(const char *isa, int dt, int to_q, int64_t n, float *values, void *codes,
                  float *absmax)
{
    if (!fo_isq8(dt) || fo_q8_init() != 0) return -1;
    const fo_q8_fns *q = fo_q8_for(isa);
    for (int64_t i0 = 0, b = 0; i0 < n; i0 += FO_Q8_BLOCK, b++) {
        const int64_t m = n - i0 < FO_Q8_BLOCK ? n - i0 : FO_Q8_BLOCK;
        if (to_q) fo_q8_block(q, dt, m, values + i0, (unsigned char *)codes + i0, absmax + b);
        else q->unblock(dt, m, (const unsigned char *)codes + i0, absmax[b], values + i0);
    }
    return 0;
}

FO_INLINE int fo_is16(int dt) { return dt == FO_DT_F16 || dt == FO_DT_BF16; }

int fo_mixed_signature(const unsigned char *dt)
{
    const int p = dt[FO_P], g = dt[FO_G], m = dt[FO_M];
    if (!fo_is16(p) && p != FO_DT_F32) return 0;
    if (g != FO_DT_NONE && g != p && g != FO_DT_F32) return 0;
    for (int k = FO_S1; k <= FO_S3; k++) {
        if (dt[k] != FO_DT_NONE && dt[k] != FO_DT_F32 && !fo_is16(dt[k]) && !fo_isq8(dt[k]))
            return 0;
        /* an 8-bit state and its scales come together */
        if (fo_isq8(dt[k]) != (dt[FO_A1 + k - FO_S1] == FO_DT_ABSMAX)) return 0;
        if (!fo_isq8(dt[k]) && dt[FO_A1 + k - FO_S1] != FO_DT_NONE) return 0;
    }
    if (m != FO_DT_NONE && !(fo_is16(p) && (m == FO_DT_F32 || m == p))) return 0;
    return 1;
}

/* ---- fused storage classes ---------------------------------------------------------------
 * The mixed tensors whose rule has a fused body (FO_MIX_LIST in fastopt.h, the kernel table's
 * `mixed` entries): bfloat16 params with a float32 master or carried and rounded to nearest,
 * gradients bfloat16 or float32, states all float32 or all bfloat16 rounded to nearest. They
 * read and write the same bits as the adapter below: the same widening and round-to-nearest
 * (fo_bf16_to_f32, fo_f32_to_bf16, which the adapter's vector loops equal bit for bit:
 * fo_convert_check_all), the same float32 body per element. */

static int fo_fusion_on = 1;

int fo_mixed_fusion(int on)
{
    const int was = fo_fusion_on;
    if (on >= 0) fo_fusion_on = on != 0;
    return was;
}

int fo_mixed_class(const unsigned char *dt, void *const *ptrs, const fo_store *st)
{
#define FO_MIX_ROW_(E, c, P, G, S) {P, G, S},
    static const int rows[FO_NMIX][3] = {FO_MIX_LIST(FO_MIX_ROW_)};
#undef FO_MIX_ROW_
    if (!fo_fusion_on || dt[FO_P] != FO_DT_BF16 || !ptrs[FO_P] || !ptrs[FO_G]) return -1;
    const int sr = st && st->rounding == FO_ROUND_STOCHASTIC;
    int ps;
    if (dt[FO_M] == FO_DT_F32 && ptrs[FO_M]) ps = FO_PS_MASTER;
    else if (dt[FO_M] == FO_DT_NONE && !sr) ps = FO_PS_BF16;
    else return -1;                                      /* Kahan, stochastic rounding */
    int gs;
    if (dt[FO_G] == FO_DT_BF16) gs = FO_ST_BF16;
    else if (dt[FO_G] == FO_DT_F32) gs = FO_ST_NATIVE;
    else return -1;
    int ss = -1;
    for (int k = FO_S1; k <= FO_S3; k++) {
        if (dt[FO_A1 + k - FO_S1] != FO_DT_NONE) return -1;      /* 8-bit states */
        if (dt[k] == FO_DT_NONE || !ptrs[k]) {
            if (dt[k] != FO_DT_NONE || ptrs[k]) return -1;
            continue;
        }
        const int k_st = dt[k] == FO_DT_F32 ? FO_ST_NATIVE
                       : dt[k] == FO_DT_BF16 && !sr ? FO_ST_BF16 : -1;
        if (k_st < 0 || (ss >= 0 && k_st != ss)) return -1;
        ss = k_st;
    }
    if (ss < 0) ss = FO_ST_NATIVE;                         /* no state at all */
    for (int c = 0; c < FO_NMIX; c++)
        if (rows[c][0] == ps && rows[c][1] == gs && rows[c][2] == ss) return c;
    return -1;
}

#define FO_TILE 256      /* = FO_Q8_BLOCK: a tile of an 8-bit state is one of its blocks */

void fo_mixed_segment(const char *isa, fo_kernel_fn body, int64_t off, int64_t n,
                      void *const *ptrs, const unsigned char *dt, const void *hp,
                      const fo_store *st)
{
    const fo_cvt *c = fo_cvt_for(isa);
    const fo_q8_fns *q = fo_q8_for(isa);
    FO_ALIGN64 float buf[FO_MAX_STREAMS][FO_TILE];
    const int p16 = fo_is16(dt[FO_P]);
    const int master = p16 && dt[FO_M] == FO_DT_F32;
    const int kahan = p16 && dt[FO_M] == dt[FO_P];
    const int sr = st && st->rounding == FO_ROUND_STOCHASTIC;
    const uint64_t key = st ? st->key : 0;
    for (int64_t i0 = off; i0 < off + n; i0 += FO_TILE) {
        const int64_t m = (off + n - i0) < FO_TILE ? (off + n - i0) : FO_TILE;
        void *s[FO_MAX_STREAMS] = {0};
        /* the param as the body sees it */
        if (master) {
            s[FO_P] = (float *)ptrs[FO_M] + i0;
        } else if (p16) {
            c->widen(dt[FO_P], m, (const uint16_t *)ptrs[FO_P] + i0, buf[FO_P]);
            if (kahan) {
                c->widen(dt[FO_M], m, (const uint16_t *)ptrs[FO_M] + i0, buf[FO_M]);
                for (int64_t j = 0; j < m; j++) buf[FO_P][j] = buf[FO_P][j] + buf[FO_M][j];
            }
            s[FO_P] = buf[FO_P];
        } else {
            s[FO_P] = (float *)ptrs[FO_P] + i0;
        }
        for (int k = FO_G; k <= FO_S3; k++) {
            if (dt[k] == FO_DT_NONE || !ptrs[k]) continue;
            if (dt[k] == FO_DT_F32) {
                s[k] = (float *)ptrs[k] + i0;
            } else if (fo_isq8(dt[k])) {
                /* i0 is a multiple of FO_Q8_BLOCK (the driver cuts such tensors on blocks) */
                const float *scale = (const float *)ptrs[FO_A1 + k - FO_S1];
                q->unblock(dt[k], m, (const unsigned char *)ptrs[k] + i0,
                           scale[i0 / FO_Q8_BLOCK], buf[k]);
                s[k] = buf[k];
            } else {
                c->widen(dt[k], m, (const uint16_t *)ptrs[k] + i0, buf[k]);
                s[k] = buf[k];
            }
        }
        body(m, i0, s, hp);
        /* narrow what was written: states by the call's rounding, then the param */
        for (int k = FO_S1; k <= FO_S3; k++) {
            if (fo_isq8(dt[k]) && ptrs[k]) {
                float *scale = (float *)ptrs[FO_A1 + k - FO_S1];
                fo_q8_block(q, dt[k], m, buf[k], (unsigned char *)ptrs[k] + i0,
                            &scale[i0 / FO_Q8_BLOCK]);
                continue;
            }
            if (!fo_is16(dt[k]) || !ptrs[k]) continue;
            if (sr) c->narrow_sr(dt[k], m, buf[k], (uint16_t *)ptrs[k] + i0,
                                 key ^ (0x5bd1e995ull * (uint64_t)k), i0);
            else c->narrow(dt[k], m, buf[k], (uint16_t *)ptrs[k] + i0);
        }
        if (master) {
            c->narrow(dt[FO_P], m, (const float *)s[FO_P], (uint16_t *)ptrs[FO_P] + i0);
        } else if (kahan) {
            uint16_t *pp = (uint16_t *)ptrs[FO_P] + i0;
            c->narrow(dt[FO_P], m, buf[FO_P], pp);
            c->widen(dt[FO_P], m, pp, buf[FO_G]);     /* the gradient's tile is spent */
            for (int64_t j = 0; j < m; j++) buf[FO_G][j] = buf[FO_P][j] - buf[FO_G][j];
            c->narrow(dt[FO_M], m, buf[FO_G], (uint16_t *)ptrs[FO_M] + i0);
        } else if (p16) {
            if (sr) c->narrow_sr(dt[FO_P], m, buf[FO_P], (uint16_t *)ptrs[FO_P] + i0, key, i0);
            else c->narrow(dt[FO_P], m, buf[FO_P], (uint16_t *)ptrs[FO_P] + i0);
        }
    }
}
