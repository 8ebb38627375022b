/*
 * fo_half.h -- scalar float32 <-> bfloat16 / float16 conversions, round to nearest even.
 * The reference that every vector path is checked against (storage.c), also used by the
 * gradient norms of 16-bit arrays (dispatch.c). See storage.c for the rules they follow.
 */
#ifndef FO_HALF_H
#define FO_HALF_H
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define FO_HINLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FO_HINLINE static __forceinline
#else
#define FO_HINLINE static inline
#endif

FO_HINLINE uint32_t fo_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
FO_HINLINE float fo_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

FO_HINLINE float fo_bf16_to_f32(uint16_t h) { return fo_float((uint32_t)h << 16); }

FO_HINLINE uint16_t fo_f32_to_bf16(float f)
{
    /* round to nearest even on the bits; NaN: the quiet NaN of its sign (masks, not a branch,
     * so that the loops vectorise). Written so that the select is on 32-bit lanes and the
     * shift comes last: GCC then narrows once (vpackusdw) instead of narrowing each operand
     * of the select (three packs), which counted in the fused bodies (kernels_body.h). The
     * same bits as the first formulation (u + 0x7fff + lsb) >> 16, NaN by an integer compare,
     * for all 2^32 inputs (checked exhaustively). */
    const uint32_t u = fo_bits(f);
    const uint32_t nanm = 0u - (uint32_t)(f != f);
    const uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    const uint32_t nan = (u & 0x80000000u) | 0x7fc00000u;
    return (uint16_t)(((r & ~nanm) | (nan & nanm)) >> 16);
}

FO_HINLINE float fo_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return fo_float(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));
    if (e == 0) {
        const float v = (float)m * 5.9604644775390625e-8f;     /* m * 2^-24, exact */
        return fo_float(sign | fo_bits(v));
    }
    return fo_float(sign | ((e + 112u) << 23) | (m << 13));
}

FO_HINLINE uint16_t fo_f32_to_f16(float f)
{
    const uint32_t u = fo_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);   /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;         /* >= 65520: Inf (ties to even) */
    if (a < 0x38800000u) {                                /* below 2^-14: subnormal or 0 */
        if (a < 0x33000000u) return sign;                 /* below 2^-25: 0 */
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;                  /* 14 .. 24 */
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return sign | (uint16_t)q;
    }
    const uint32_t r = a - 0x38000000u;                   /* rebias the exponent */
    return sign | (uint16_t)((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
}

#endif /* FO_HALF_H */
