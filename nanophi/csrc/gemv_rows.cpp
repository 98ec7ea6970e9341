// y = (x @ w.T) * scale + b for a few rows of x (fp32) and a plain row-major weight w [N, K], on x86-64
// with AVX-512F or AVX2+FMA (simd.h: the build's flags choose, nanophi/gemv.py builds the one this CPU
// runs). Two ops, built beside gemv_bf16.cpp into one extension:
//   gemv_int8: int8 w with one fp32 scale per output row (symmetric, no zero point). Each weight is
//              widened int8 -> int32 -> fp32, multiplied and summed in fp32 with the fp32 activations,
//              and the row's scale applied once to the sum: a quarter of fp32's bytes per token.
//   gemv_fp32: fp32 w, for batched decoding, where MKL's sgemm at 4-8 rows takes 2-3x its 1-row time.
// Up to 8 rows of x share one pass over the weight (more: one pass per 8), so a step of 8 rows costs
// little more than one. Every output is summed in the same order whatever the number of rows (one
// accumulator per row pair): a row's numbers do not depend on the rows sharing its step.
// Threads and streams as in gemv_bf16.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "gemv.h"
#include "simd.h"

namespace {

constexpr int64_t kPrefetchBytes = 4096;  // 4 KB ahead of each stream (tried 2-8 KB: the same within noise)
constexpr int64_t kChunk = 64;            // weights per row and step of the main loop

// R weight rows (two streams) against MR rows of x. One accumulator per (x row, weight row): more would
// change the order of the sums with MR (batch-dependent rounding), and was no faster (memory-bound)
template <typename W, int R, int MR>
void rows_simd(const float* x, const W* const* wr, const float* scale, const float* b, float* y, int64_t K,
               int64_t N, const int64_t* nr) {
  using simd::kLanes;
  constexpr int64_t line = 64 / sizeof(W);  // weights per cache line
  simd::vec acc[MR][R];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = simd::zero();
  int64_t k = 0;
  for (; k + kChunk <= K; k += kChunk) {
    for (int r = 0; r < R; ++r)
      for (int64_t c = 0; c < kChunk; c += line)  // never faults
        _mm_prefetch(reinterpret_cast<const char*>(wr[r] + k + c) + kPrefetchBytes, _MM_HINT_T1);
    for (int j = 0; j < kChunk / kLanes; ++j) {
      simd::vec wv[R];
      for (int r = 0; r < R; ++r) wv[r] = simd::load(wr[r] + k + kLanes * j);
      for (int m = 0; m < MR; ++m) {
        simd::vec xv = simd::load(x + m * K + k + kLanes * j);
        for (int r = 0; r < R; ++r) acc[m][r] = simd::fma(wv[r], xv, acc[m][r]);
      }
    }
  }
  for (; k + kLanes <= K; k += kLanes)
    for (int m = 0; m < MR; ++m) {
      simd::vec xv = simd::load(x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r] = simd::fma(simd::load(wr[r] + k), xv, acc[m][r]);
    }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) {
      float s = simd::sum(acc[m][r]);
      for (int64_t kk = k; kk < K; ++kk) s += x[m * K + kk] * simd::to_float(wr[r][kk]);  // K % kLanes
      y[m * N + nr[r]] = s * (scale ? scale[nr[r]] : 1.f) + (b ? b[nr[r]] : 0.f);
    }
}

template <typename W, int MR>
void band_simd(const float* x, const W* w, const float* scale, const float* b, float* y, int64_t K, int64_t N,
               int64_t n0, int64_t n1) {
  const int64_t half = (n1 - n0 + 1) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t nr[2] = {n0 + i, n0 + half + i};
    const W* wr[2] = {w + nr[0] * K, w + nr[1] * K};
    if (nr[1] < n1) rows_simd<W, 2, MR>(x, wr, scale, b, y, K, N, nr);
    else rows_simd<W, 1, MR>(x, wr, scale, b, y, K, N, nr);
  }
}

// up to max_rows rows of x share one pass over a band of the weight. AVX2 has 16 vector registers: 8 rows
// x 2 weight streams of accumulators spill, which costs more than a second pass over int8/bf16 weights
// (compute-bound there: 8 rows of GPT-2 124M's layers, bf16 28.5 -> 20.4 ms) but less than one over fp32's
// 4 bytes a weight (memory-bound: 27.5 -> 35.3 ms), so fp32 keeps 8 (2-core AMD EPYC, AVX2)
template <typename W>
constexpr int64_t max_rows() { return simd::kLanes == 8 && sizeof(W) < 4 ? 4 : 8; }

template <typename W>
void band(int64_t mr, const float* x, const W* w, const float* scale, const float* b, float* y, int64_t K,
          int64_t N, int64_t n0, int64_t n1) {
  switch (mr) {
    case 1: return band_simd<W, 1>(x, w, scale, b, y, K, N, n0, n1);
    case 2: return band_simd<W, 2>(x, w, scale, b, y, K, N, n0, n1);
    case 3: return band_simd<W, 3>(x, w, scale, b, y, K, N, n0, n1);
    case 4: return band_simd<W, 4>(x, w, scale, b, y, K, N, n0, n1);
    case 5: return band_simd<W, 5>(x, w, scale, b, y, K, N, n0, n1);
    case 6: return band_simd<W, 6>(x, w, scale, b, y, K, N, n0, n1);
    case 7: return band_simd<W, 7>(x, w, scale, b, y, K, N, n0, n1);
    default: return band_simd<W, 8>(x, w, scale, b, y, K, N, n0, n1);
  }
}

}  // namespace

namespace nanophi {

// y[M, N] = (x[M, K] @ w[N, K].T) * scale + b: bands of 16 weight rows over torch's threads; small
// weights (under ~128K values) stay on one thread, where waking the other costs more
template <typename W>
void gemv_raw(const float* x, const W* w, const float* scale, const float* b, float* y, int64_t M, int64_t K,
              int64_t N) {
  const int64_t nbands = (N + 15) / 16;
  const int64_t grain = std::max<int64_t>(1, 131072 / (16 * std::max<int64_t>(K, 1)));
  at::parallel_for(0, nbands, grain, [&](int64_t begin, int64_t end) {
    const int64_t n0 = begin * 16, n1 = std::min(N, end * 16);
    for (int64_t m = 0; m < M; m += max_rows<W>())
      band<W>(std::min(max_rows<W>(), M - m), x + m * K, w, scale, b, y + m * N, K, N, n0, n1);
  });
}
template void gemv_raw<float>(const float*, const float*, const float*, const float*, float*, int64_t, int64_t, int64_t);
template void gemv_raw<int8_t>(const float*, const int8_t*, const float*, const float*, float*, int64_t, int64_t, int64_t);
template void gemv_raw<uint16_t>(const float*, const uint16_t*, const float*, const float*, float*, int64_t, int64_t,
                                 int64_t);

}  // namespace nanophi

namespace {

template <typename W>
at::Tensor gemv_rows(const char* name, const at::Tensor& x, const at::Tensor& w, const float* sp,
                     const c10::optional<at::Tensor>& bias) {
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.size(-1) == K, name, ": x has ", x.size(-1), " features, the weight ", K);
  at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(b.numel() == N, name, ": bias has ", b.numel(), " values, the weight ", N, " rows");
  }
  const int64_t M = x2.size(0);
  at::Tensor y2 = at::empty({M, N}, x2.options());
  nanophi::gemv_raw<W>(x2.data_ptr<float>(), static_cast<const W*>(w.const_data_ptr()),  // bf16 read as its 16 bits
                       sp, b.defined() ? b.data_ptr<float>() : nullptr, y2.data_ptr<float>(), M, K, N);
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y2.view(shape);
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous() && w.device().is_cpu(),
              "gemv_int8: weight must be a contiguous 2-d int8 CPU tensor");
  TORCH_CHECK(simd::cpu_ok(), "gemv_int8: this CPU has no ", simd::kIsa);
  at::Tensor s = scale.to(at::kFloat).contiguous();
  TORCH_CHECK(s.numel() == w.size(0), "gemv_int8: scale has ", s.numel(), " values, the weight ", w.size(0), " rows");
  return gemv_rows<int8_t>("gemv_int8", x, w, s.data_ptr<float>(), bias);
}

at::Tensor gemv_fp32(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.device().is_cpu(),
              "gemv_fp32: weight must be a contiguous 2-d fp32 CPU tensor");
  TORCH_CHECK(simd::cpu_ok(), "gemv_fp32: this CPU has no ", simd::kIsa);
  return gemv_rows<float>("gemv_fp32", x, w, nullptr, bias);
}

// bf16 w for 3+ rows (batched decoding on CPUs without native bf16, where oneDNN's bf16 is emulated):
// up to 8 rows per pass over the weight, where gemv_bf16.cpp's kernel makes one pass per 2 rows
at::Tensor gemv_bf16_rows(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.device().is_cpu(),
              "gemv_bf16_rows: weight must be a contiguous 2-d bf16 CPU tensor");
  TORCH_CHECK(simd::cpu_ok(), "gemv_bf16_rows: this CPU has no ", simd::kIsa);
  return gemv_rows<uint16_t>("gemv_bf16_rows", x, w, nullptr, bias);
}

at::Tensor gemv_fp32_meta(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  return at::empty(shape, x.options().dtype(at::kFloat));
}

at::Tensor gemv_int8_meta(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& bias) {
  return gemv_fp32_meta(x, w, bias);  // the same output shape
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nanophi, m) {
  m.def("gemv_int8(Tensor x, Tensor w, Tensor scale, Tensor? bias) -> Tensor");
  m.def("gemv_fp32(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("gemv_bf16_rows(Tensor x, Tensor w, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(nanophi, CPU, m) {
  m.impl("gemv_int8", gemv_int8);
  m.impl("gemv_fp32", gemv_fp32);
  m.impl("gemv_bf16_rows", gemv_bf16_rows);
}
TORCH_LIBRARY_IMPL(nanophi, Meta, m) {
  m.impl("gemv_int8", gemv_int8_meta);
  m.impl("gemv_fp32", gemv_fp32_meta);
  m.impl("gemv_bf16_rows", gemv_fp32_meta);
}
