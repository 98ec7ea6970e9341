// The vector type gemv_bf16.cpp, gemv_rows.cpp and decode.cpp are written over, chosen by the build's flags:
// nanophi/gemv.py builds the extension once per instruction set, with -mavx512f (16 fp32 lanes) or
// -mavx2 -mfma -mf16c (8 lanes), and loads the one this CPU runs (as llama.cpp and oneDNN dispatch at run
// time). The loops are the same for both; only the width and these few operations differ.
#pragma once

#include <cstdint>
#include <cstring>

#include <immintrin.h>

namespace simd {

// one weight widened to fp32, for the tails of the loops (bf16 is the top half of an fp32)
inline float to_float(float v) { return v; }
inline float to_float(int8_t v) { return float(v); }
inline float to_float(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr const char* kIsa = "avx512f";
using vec = __m512;
inline bool cpu_ok() { return __builtin_cpu_supports("avx512f"); }
inline vec zero() { return _mm512_setzero_ps(); }
inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline vec load(const int8_t* p) {  // kLanes int8 widened int8 -> int32 -> fp32
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline vec load(const uint16_t* p) {  // kLanes bf16: the top half of an fp32, widened by a shift
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// 2 * kLanes bf16 in one register: the even elements widened by a shift, the odd ones by masking the
// low half off (two cheap ops per 2 * kLanes weights instead of a widen and a shift per kLanes)
inline void load_bf16_pairs(const uint16_t* p, vec& even, vec& odd) {
  __m512i v = _mm512_loadu_si512(p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int32_t(0xFFFF0000u))));
}
inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline float sum(vec a) { return _mm512_reduce_add_ps(a); }
// kLanes fp16 (a KV cache) widened to fp32, and back with round-to-nearest-even (as torch converts)
inline vec load_fp16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline void store_fp16(uint16_t* p, vec a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline vec set1(float v) { return _mm512_set1_ps(v); }
inline void store(float* p, vec a) { _mm512_storeu_ps(p, a); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
inline vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
inline vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
inline float hmax(vec a) { return _mm512_reduce_max_ps(a); }
inline vec round(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vec pow2(vec n) {  // 2^n for whole n in [-126, 127]: n + 127 put in the exponent bits
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr int kLanes = 8;
constexpr const char* kIsa = "avx2";
using vec = __m256;
inline bool cpu_ok() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
inline vec zero() { return _mm256_setzero_ps(); }
inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline vec load(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline vec load(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void load_bf16_pairs(const uint16_t* p, vec& even, vec& odd) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int32_t(0xFFFF0000u))));
}
inline vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec load_fp16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void store_fp16(uint16_t* p, vec a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline vec set1(float v) { return _mm256_set1_ps(v); }
inline void store(float* p, vec a) { _mm256_storeu_ps(p, a); }
inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
inline vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
inline vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
inline float hmax(vec a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
inline vec round(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vec pow2(vec n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline float sum(vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#else
#error "nanophi gemv kernels: build with -mavx512f or with -mavx2 -mfma -mf16c (nanophi/gemv.py chooses)"
#endif

// e^x in every lane, within 2 ulp of std::exp over [-87, 88] (inputs are clamped there: below, e^x is
// ~1e-38 instead of 0, which no softmax or GELU notices). Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
// e^r by a degree-5 polynomial, times 2^n through the exponent bits
inline vec exp(vec x) {
  x = min(max(x, set1(-87.3f)), set1(88.3f));
  vec n = round(mul(x, set1(1.44269504089f)));
  vec r = sub(x, mul(n, set1(0.693359375f)));
  r = sub(r, mul(n, set1(-2.12194440e-4f)));
  vec p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  vec e = fma(p, mul(r, r), add(r, set1(1.f)));
  return mul(e, pow2(n));
}

}  // namespace simd
