// The vector type gemv_bf16.cpp and gemv_rows.cpp are written over, chosen by the build's flags:
// nanophi/gemv.py builds the extension once per instruction set, with -mavx512f (16 fp32 lanes) or
// -mavx2 -mfma (8 lanes), and loads the one this CPU runs (as llama.cpp and oneDNN dispatch at run
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

#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;
constexpr const char* kIsa = "avx2";
using vec = __m256;
inline bool cpu_ok() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
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
inline float sum(vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#else
#error "nanophi gemv kernels: build with -mavx512f or with -mavx2 -mfma (nanophi/gemv.py chooses)"
#endif

}  // namespace simd
