/*
 * storage.c -- 16-bit storage: conversions, rounding, and the mixed-storage adapter.
 *
 * A rule's loop body is written once, for its compute type (kernels_body.h). Tensors whose
 * streams are not all float32 or all float64 (16-bit params, a float32 master copy, 16-bit
 * states, float32 gradients of 16-bit params) run through one adapter: it walks the segment
 * in tiles of FO_TILE elements; per tile it widens each 16-bit stream into a float32 buffer
 * on the stack (float32 streams are used in place), runs the rule's float32 body on the tile,
 * and narrows the written streams back, rounded as the call asks. The tile stays in L1, so
 * memory sees one read and one write of every stream, as for a float32 step; every
 * conversion is per element, so results do not depend on where tiles, segments or thread
 * chunks begin.
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
    case FO_DT_F32: return 4;
    case FO_DT_F64: return 8;
    case FO_DT_F16: case FO_DT_BF16: return 2;
    default: return 0;
    }
}

FO_INLINE int fo_is16(int dt) { return dt == FO_DT_F16 || dt == FO_DT_BF16; }

int fo_mixed_signature(const unsigned char *dt)
{
    const int p = dt[FO_P], g = dt[FO_G], m = dt[FO_M];
    if (!fo_is16(p) && p != FO_DT_F32) return 0;
    if (g != FO_DT_NONE && g != p && g != FO_DT_F32) return 0;
    for (int k = FO_S1; k <= FO_S3; k++)
        if (dt[k] != FO_DT_NONE && dt[k] != FO_DT_F32 && !fo_is16(dt[k])) return 0;
    if (m != FO_DT_NONE && !(fo_is16(p) && (m == FO_DT_F32 || m == p))) return 0;
    return 1;
}

#define FO_TILE 256

void fo_mixed_segment(const char *isa, fo_kernel_fn body, int64_t off, int64_t n,
                      void *const *ptrs, const unsigned char *dt, const void *hp,
                      const fo_store *st)
{
    const fo_cvt *c = fo_cvt_for(isa);
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
            } else {
                c->widen(dt[k], m, (const uint16_t *)ptrs[k] + i0, buf[k]);
                s[k] = buf[k];
            }
        }
        body(m, i0, s, hp);
        /* narrow what was written: states by the call's rounding, then the param */
        for (int k = FO_S1; k <= FO_S3; k++) {
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
