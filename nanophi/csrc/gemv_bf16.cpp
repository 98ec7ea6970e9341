// y = x @ w.T + b for a few rows of x (fp32) and a plain row-major bf16 weight w [N, K], on x86-64
// with AVX-512F or AVX2+FMA (simd.h: the build's flags choose, nanophi/gemv.py builds the one this CPU
// runs). Built by nanophi/gemv.py (torch.utils.cpp_extension.load); why it exists is said there.
//
// bf16 is the top half of an fp32, so widening a weight is a shift or a mask: every product and sum is
// done in fp32 with the fp32 activations. Each thread takes a band of output rows (torch's own
// thread pool, at::parallel_for) and streams its rows of w once for all rows of x.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#include "simd.h"

namespace {

// Each thread streams its share of w as two sequential streams (the rows of its first and second
// half, in pairs): two streams per core and software prefetches 8 KB ahead of each reach the
// bandwidth of MKL's fp32 gemv (Sapphire Rapids); with one stream the hardware prefetchers alone
// reach ~70%, with the prefetches ~93%.
constexpr int64_t kPrefetchBytes = 8192;
constexpr int64_t kBlock = 2 * simd::kLanes;  // bf16 per register: kLanes even ones and kLanes odd ones

// A block of kBlock bf16 is kLanes lanes of 32 bits: the even elements are the low halves (widened by
// a shift), the odd ones the high halves (widened by masking the low half off); xs holds x in that
// order (reorder_x).
template <int R, int MR>
void rows_simd(const float* x, const float* xs, const uint16_t* const* wr, const float* b, float* y, int64_t K,
               int64_t N, const int64_t* nr) {
  using simd::kLanes;
  simd::vec acc[MR][R][2];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) acc[m][r][0] = acc[m][r][1] = simd::zero();
  int64_t k = 0;
  for (; k + kBlock <= K; k += kBlock) {
    simd::vec even[R], odd[R];
    for (int r = 0; r < R; ++r) {
      if (k % 32 == 0)  // one cache line of bf16 per row: never faults
        _mm_prefetch(reinterpret_cast<const char*>(wr[r] + k) + kPrefetchBytes, _MM_HINT_T1);
      simd::load_bf16_pairs(wr[r] + k, even[r], odd[r]);
    }
    for (int m = 0; m < MR; ++m) {
      simd::vec xe = simd::load(xs + m * K + k), xo = simd::load(xs + m * K + k + kLanes);
      for (int r = 0; r < R; ++r) {
        acc[m][r][0] = simd::fma(even[r], xe, acc[m][r][0]);
        acc[m][r][1] = simd::fma(odd[r], xo, acc[m][r][1]);
      }
    }
  }
  for (; k + kLanes <= K; k += kLanes)
    for (int m = 0; m < MR; ++m) {
      simd::vec xv = simd::load(x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r][0] = simd::fma(simd::load(wr[r] + k), xv, acc[m][r][0]);
    }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) {
      float s = simd::sum(simd::add(acc[m][r][0], acc[m][r][1]));
      for (int64_t kk = k; kk < K; ++kk) s += x[m * K + kk] * simd::to_float(wr[r][kk]);  // K % kLanes
      y[m * N + nr[r]] = s + (b ? b[nr[r]] : 0.f);
    }
}

template <int MR>
void band_simd(const float* x, const float* xs, const uint16_t* w, const float* b, float* y, int64_t K, int64_t N,
               int64_t n0, int64_t n1) {
  const int64_t half = (n1 - n0 + 1) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t nr[2] = {n0 + i, n0 + half + i};
    const uint16_t* wr[2] = {w + nr[0] * K, w + nr[1] * K};
    if (nr[1] < n1) rows_simd<2, MR>(x, xs, wr, b, y, K, N, nr);
    else rows_simd<1, MR>(x, xs, wr, b, y, K, N, nr);
  }
}

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.device().is_cpu(),
              "gemv_bf16: weight must be a contiguous 2-d bf16 CPU tensor");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(simd::cpu_ok(), "gemv_bf16: this CPU has no ", simd::kIsa);
  TORCH_CHECK(x.size(-1) == K, "gemv_bf16: x has ", x.size(-1), " features, the weight ", K);
  at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(b.numel() == N, "gemv_bf16: bias has ", b.numel(), " values, the weight ", N, " rows");
  }
  const int64_t M = x2.size(0);
  at::Tensor y2 = at::empty({M, N}, x2.options());
  const float* xp = x2.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y2.data_ptr<float>();
  at::Tensor xs2 = at::empty_like(x2);  // x reordered for the fast loop (rows_simd)
  float* xsp = xs2.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = xp + m * K;
    float* xsm = xsp + m * K;
    int64_t k = 0;
    for (; k + kBlock <= K; k += kBlock)
      for (int i = 0; i < simd::kLanes; ++i) xsm[k + i] = xm[k + 2 * i], xsm[k + simd::kLanes + i] = xm[k + 2 * i + 1];
    for (; k < K; ++k) xsm[k] = xm[k];
  }
  // bands of 16 rows; small weights (under ~64K values) stay on one thread, where waking the other costs more
  const int64_t band = 16, nbands = (N + band - 1) / band;
  const int64_t grain = std::max<int64_t>(1, 65536 / (band * K));
  at::parallel_for(0, nbands, grain, [&](int64_t begin, int64_t end) {
    const int64_t n0 = begin * band, n1 = std::min(N, end * band);
    for (int64_t m = 0; m < M; m += 2) {  // pairs of x rows share one pass over the weight band
      const int64_t mr = std::min<int64_t>(2, M - m);
      if (mr == 2) band_simd<2>(xp + m * K, xsp + m * K, wp, bp, yp + m * N, K, N, n0, n1);
      else band_simd<1>(xp + m * K, xsp + m * K, wp, bp, yp + m * N, K, N, n0, n1);
    }
  });
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y2.view(shape);
}

// shapes only, for torch.compile's tracing (sample.py --compile compiles the MLPs)
at::Tensor gemv_bf16_meta(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  return at::empty(shape, x.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY(nanophi, m) {
  m.def("gemv_bf16(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("gemv_cpu_ok() -> bool", simd::cpu_ok);  // this CPU runs the instruction set the build chose
}

TORCH_LIBRARY_IMPL(nanophi, CPU, m) { m.impl("gemv_bf16", gemv_bf16); }
TORCH_LIBRARY_IMPL(nanophi, Meta, m) { m.impl("gemv_bf16", gemv_bf16_meta); }
