// cuda_bf16.h for cuda_on_cpu: the part of CUDA's bfloat16 header that als.cu uses, for g++.
//
// Test support only. __nv_bfloat16 is the top half of a float32's bits (1 sign, 8 exponent,
// 7 mantissa bits), two bytes, trivially copyable, as on the GPU. The conversions do what
// sm_80+ hardware does (cvt.rn.bf16.f32 and the exact widening):
// * __float2bfloat16_rn rounds to nearest, ties to even; a value past the largest bfloat16
//   becomes infinity; subnormals stay subnormal (no flush to zero); every NaN becomes the one
//   quiet NaN 0x7FFF.
// * __float2bfloat16_rz truncates (rounds toward zero), NaN as above.
// * __bfloat162float is exact: the 16 bits, shifted up, with zeros below.
// No arithmetic operators: als.cu widens to float to compute, so a kernel that added two
// bfloat16 values directly would not compile here (on the GPU it would round at every step).

#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t bits;
};
static_assert(sizeof(__nv_bfloat16) == 2);

inline __nv_bfloat16 __float2bfloat16_rn(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};  // NaN, whatever its payload
    // the dropped 16 bits round up when above half, or at exactly half with an odd kept part
    const uint32_t dropped = bits & 0xffffu, kept = bits >> 16;
    const bool up = dropped > 0x8000u || (dropped == 0x8000u && (kept & 1u));
    return __nv_bfloat16{static_cast<uint16_t>(kept + (up ? 1u : 0u))};  // a carry moves the exponent, as it should
}

// Toward zero (truncation), as CUDA's: not used by als.cu; the tests plant it as a rounding bug.
inline __nv_bfloat16 __float2bfloat16_rz(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
    return __nv_bfloat16{static_cast<uint16_t>(bits >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 value) {
    const uint32_t bits = static_cast<uint32_t>(value.bits) << 16;
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}
