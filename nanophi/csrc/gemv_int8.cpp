// y = (x @ w.T) * scale + b for a few rows of x (fp32) and a plain row-major int8 weight w [N, K] with one
// fp32 scale per output row (symmetric, no zero point), on x86-64 with AVX-512F (checked at run time:
// nanophi/gemv.py uses the op only where gemv_has_avx512()). Built beside gemv_bf16.cpp into one extension.
//
// Activations stay fp32: each weight is widened int8 -> int32 -> fp32 and multiplied and summed in fp32,
// and the row's scale is applied once to the sum. The weight bytes are a quarter of fp32's, so batch-1
// decoding reads a quarter of the memory. Threads and streams as in gemv_bf16.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include <immintrin.h>

namespace {

constexpr int64_t kPrefetchBytes = 4096;  // 4 KB ahead of each stream (tried 2-8 KB: the same within noise)

__attribute__((target("avx512f"))) inline __m512 load_int8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// R weight rows (two streams) against MR rows of x; four accumulators per pair so that the FMAs of one
// 64-wide step do not wait on each other
template <int R, int MR>
__attribute__((target("avx512f"))) void rows_avx512(const float* x, const int8_t* const* wr, const float* scale,
                                                    const float* b, float* y, int64_t K, int64_t N,
                                                    const int64_t* nr) {
  __m512 acc[MR][R][4];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) acc[m][r][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    __m512 wv[R][4];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(wr[r] + k) + kPrefetchBytes, _MM_HINT_T1);  // never faults
      for (int j = 0; j < 4; ++j) wv[r][j] = load_int8(wr[r] + k + 16 * j);
    }
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) {
        __m512 xv = _mm512_loadu_ps(x + m * K + k + 16 * j);
        for (int r = 0; r < R; ++r) acc[m][r][j] = _mm512_fmadd_ps(wv[r][j], xv, acc[m][r][j]);
      }
  }
  for (; k + 16 <= K; k += 16)
    for (int m = 0; m < MR; ++m) {
      __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r][0] = _mm512_fmadd_ps(load_int8(wr[r] + k), xv, acc[m][r][0]);
    }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) {
      __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[m][r][0], acc[m][r][1]), _mm512_add_ps(acc[m][r][2], acc[m][r][3]));
      float s = _mm512_reduce_add_ps(sum);
      for (int64_t kk = k; kk < K; ++kk) s += x[m * K + kk] * float(wr[r][kk]);  // K % 16
      y[m * N + nr[r]] = s * scale[nr[r]] + (b ? b[nr[r]] : 0.f);
    }
}

template <int MR>
__attribute__((target("avx512f"))) void band_avx512(const float* x, const int8_t* w, const float* scale,
                                                    const float* b, float* y, int64_t K, int64_t N,
                                                    int64_t n0, int64_t n1) {
  const int64_t half = (n1 - n0 + 1) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t nr[2] = {n0 + i, n0 + half + i};
    const int8_t* wr[2] = {w + nr[0] * K, w + nr[1] * K};
    if (nr[1] < n1) rows_avx512<2, MR>(x, wr, scale, b, y, K, N, nr);
    else rows_avx512<1, MR>(x, wr, scale, b, y, K, N, nr);
  }
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous() && w.device().is_cpu(),
              "gemv_int8: weight must be a contiguous 2-d int8 CPU tensor");
  TORCH_CHECK(__builtin_cpu_supports("avx512f"), "gemv_int8: this CPU has no AVX-512F");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.size(-1) == K, "gemv_int8: x has ", x.size(-1), " features, the weight ", K);
  at::Tensor s = scale.to(at::kFloat).contiguous();
  TORCH_CHECK(s.numel() == N, "gemv_int8: scale has ", s.numel(), " values, the weight ", N, " rows");
  at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(b.numel() == N, "gemv_int8: bias has ", b.numel(), " values, the weight ", N, " rows");
  }
  const int64_t M = x2.size(0);
  at::Tensor y2 = at::empty({M, N}, x2.options());
  const float* xp = x2.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = s.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y2.data_ptr<float>();
  // bands of 16 rows; small weights (under ~128K values) stay on one thread, where waking the other costs more
  const int64_t band = 16, nbands = (N + band - 1) / band;
  const int64_t grain = std::max<int64_t>(1, 131072 / (band * std::max<int64_t>(K, 1)));
  at::parallel_for(0, nbands, grain, [&](int64_t begin, int64_t end) {
    const int64_t n0 = begin * band, n1 = std::min(N, end * band);
    for (int64_t m = 0; m < M; m += 2) {  // pairs of x rows share one pass over the weight band
      if (M - m >= 2) band_avx512<2>(xp + m * K, wp, sp, bp, yp + m * N, K, N, n0, n1);
      else band_avx512<1>(xp + m * K, wp, sp, bp, yp + m * N, K, N, n0, n1);
    }
  });
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y2.view(shape);
}

at::Tensor gemv_int8_meta(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& bias) {
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  return at::empty(shape, x.options().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nanophi, m) { m.def("gemv_int8(Tensor x, Tensor w, Tensor scale, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(nanophi, CPU, m) { m.impl("gemv_int8", gemv_int8); }
TORCH_LIBRARY_IMPL(nanophi, Meta, m) { m.impl("gemv_int8", gemv_int8_meta); }
