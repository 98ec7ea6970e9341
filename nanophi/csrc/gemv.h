// The rows kernels of gemv_rows.cpp as plain C++ calls on raw buffers, for decode.cpp (the whole
// decoding step in one call): y[M, N] = (x[M, K] @ w[N, K].T) * scale + b, scale and b may be null,
// w float, int8_t or bf16 read as uint16_t, every row of x summed in the same order whatever M.
#pragma once

#include <cstdint>

namespace nanophi {
template <typename W>
void gemv_raw(const float* x, const W* w, const float* scale, const float* b, float* y, int64_t M, int64_t K,
              int64_t N);
}  // namespace nanophi
