// A whole decoding step of model.py's GPT for a few rows, one new token each, in one call: the token and
// position embeddings, then per block LayerNorm, the qkv Linear, this token's key and value written into
// the engine's KV cache, attention over the row's cached positions, the output Linear and residual,
// LayerNorm, the MLP with tanh GELU and residual; the final LayerNorm and the vocab projection.
//
// Why: at batch 1 on a 2-core CPU, GPT-2 124M's Linear layers through the gemv kernels take less than
// llama.cpp's whole step, and the ~3.5 ms a token around them went to ~25 small ATen ops per block
// (LayerNorm 4-11 us, GELU 14-30, one-query attention 30-70, views, copies, allocation) and Python.
// Here each of those is a loop over a few KB in cache, and nothing is allocated per step but the logits.
//
// Every row is computed alone (its LayerNorms, its attention, the kernels' own per-row summing order),
// so a row's numbers do not depend on how many rows share the step; the exception is a bf16 weight held
// by fbgemm's fp16 GEMM (weights.py's BF16Linear on a CPU without native bf16), whose sums at 1, 2 and
// 3+ rows differ by float rounding. nanophi/decode.py builds the
// Decoder from a model and says when the engine uses it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/quantized/PackedParams.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemv.h"
#include "simd.h"

namespace {

using simd::kLanes;

// how a Linear's weight is read (decode.py's KINDS)
enum Kind : int64_t { kFp32 = 0, kInt8 = 1, kBf16 = 2, kBlas = 3, kFp16Packed = 4 };

bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }
const float* fptr(const at::Tensor& t) { return present(t) ? t.data_ptr<float>() : nullptr; }

struct Linear {
  int64_t kind = kFp32, N = 0, K = 0;
  at::Tensor w, scale, b;  // kFp16Packed: w is a meta tensor (N, K), the weight and bias are in packed
  c10::intrusive_ptr<LinearPackedParamsBase> packed;  // kInt8: fbgemm's copy of the same values, or none
  int64_t packed_from = 0;  // kInt8 with packed: from this many rows fbgemm's copy (0: never)

  void check(const char* name) const {
    if (kind == kFp16Packed) {
      TORCH_CHECK(w.dim() == 2 && w.is_meta() && packed, "Decoder: ", name, " (fp16 packed) needs a meta (N, K) tensor and the packed weight");
      return;
    }
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(), "Decoder: ", name, " weight must be 2-d, contiguous, on CPU");
    const auto want = kind == kInt8 ? at::kChar : kind == kBf16 ? at::kBFloat16 : at::kFloat;
    TORCH_CHECK(w.scalar_type() == want, "Decoder: ", name, " weight is ", w.scalar_type(), " for kind ", kind);
    TORCH_CHECK(kind != kInt8 || (present(scale) && scale.numel() == N), "Decoder: ", name, " needs a scale per row");
    TORCH_CHECK(!present(b) || b.numel() == N, "Decoder: ", name, " bias has ", b.numel(), " values, not ", N);
  }

  // y[M, N] = x[M, K] @ w.T (* scale) + b
  void operator()(const float* x, float* y, int64_t M) const {
    const float* bp = fptr(b);
    switch (kind) {
      case kFp32: return nanophi::gemv_raw<float>(x, w.data_ptr<float>(), nullptr, bp, y, M, K, N);
      case kInt8:
        if (!packed || !packed_from || M < packed_from)
          return nanophi::gemv_raw<int8_t>(x, w.data_ptr<int8_t>(), scale.data_ptr<float>(), bp, y, M, K, N);
        break;  // fbgemm's int8 GEMM below
      case kBf16:
        return nanophi::gemv_raw<uint16_t>(x, reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), nullptr, bp,
                                           y, M, K, N);
      default:
        break;
    }
    auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor xt = at::from_blob(const_cast<float*>(x), {M, K}, opts), yt = at::from_blob(y, {M, N}, opts);
    if (kind == kFp16Packed) packed->apply_dynamic_out(xt, yt, false);  // fbgemm's fp16 GEMM, bias inside
    else if (kind == kInt8) yt.copy_(packed->apply_dynamic(xt, true));  // fbgemm's int8 (7-bit activations;
    // its int8 weights have no _out form)
    else if (bp) at::addmm_out(yt, b, xt, w.t());  // this machine's BLAS (gemv.fp32_rows_choice found it
    else at::mm_out(yt, xt, w.t());                 // faster at one row)
  }
};

struct Norm {
  at::Tensor w, b;
};

struct Layer {
  Norm ln1, ln2;
  Linear attn, proj, fc, mproj;
};

// fp32 values, or the KV cache's fp16 ones widened (half the memory and the reads at long contexts;
// llama.cpp's default cache too)
inline simd::vec load_kv(const float* p) { return simd::load(p); }
inline simd::vec load_kv(const at::Half* p) { return simd::load_fp16(reinterpret_cast<const uint16_t*>(p)); }
inline float to_f(float v) { return v; }
inline float to_f(at::Half v) { return float(v); }

// y = a * x + y (x fp32 or fp16)
template <typename T>
void axpy(float a, const T* x, float* y, int64_t n) {
  const simd::vec av = simd::set1(a);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) simd::store(y + i, simd::fma(av, load_kv(x + i), simd::load(y + i)));
  for (; i < n; ++i) y[i] += a * to_f(x[i]);
}

void add_into(float* y, const float* x, int64_t n) { axpy(1.f, x, y, n); }

template <typename T>
float dot_kv(const float* q, const T* k, int64_t n) {
  simd::vec acc = simd::zero();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = simd::fma(simd::load(q + i), load_kv(k + i), acc);
  float s = simd::sum(acc);
  for (; i < n; ++i) s += q[i] * to_f(k[i]);
  return s;
}

void put_kv(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
void put_kv(at::Half* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) simd::store_fp16(reinterpret_cast<uint16_t*>(dst + i), simd::load(src + i));
  for (; i < n; ++i) dst[i] = at::Half(src[i]);
}

// y = LayerNorm(x) over n values, eps as model.py's (mean, then the variance about it: two passes in cache)
void layer_norm(const float* x, const Norm& norm, float* y, int64_t n, float eps) {
  simd::vec acc = simd::zero();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = simd::add(acc, simd::load(x + i));
  float s = simd::sum(acc);
  for (; i < n; ++i) s += x[i];
  const float mean = s / n;
  const simd::vec mv = simd::set1(mean);
  acc = simd::zero();
  for (i = 0; i + kLanes <= n; i += kLanes) {
    simd::vec d = simd::sub(simd::load(x + i), mv);
    acc = simd::fma(d, d, acc);
  }
  float var = simd::sum(acc);
  for (; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.f / std::sqrt(var / n + eps);
  const float* w = norm.w.data_ptr<float>();
  const float* b = fptr(norm.b);
  const simd::vec rv = simd::set1(rstd);
  for (i = 0; i + kLanes <= n; i += kLanes) {
    simd::vec v = simd::mul(simd::mul(simd::sub(simd::load(x + i), mv), rv), simd::load(w + i));
    simd::store(y + i, b ? simd::add(v, simd::load(b + i)) : v);
  }
  for (; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + (b ? b[i] : 0.f);
}

// GPT-2's tanh GELU, in place: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
void gelu_tanh(float* x, int64_t n) {
  constexpr float c = 0.7978845608028654f, c3 = 0.7978845608028654f * 0.044715f;
  const simd::vec one = simd::set1(1.f), m2c = simd::set1(-2.f * c), m2c3 = simd::set1(-2.f * c3);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    simd::vec v = simd::load(x + i);
    simd::vec t = simd::mul(v, simd::fma(simd::mul(v, v), m2c3, m2c));  // -2u
    simd::store(x + i, simd::div(v, simd::add(one, simd::exp(t))));
  }
  for (; i < n; ++i) x[i] = 0.5f * x[i] * (1.f + std::tanh(c * x[i] + c3 * x[i] * x[i] * x[i]));
}

// softmax of s[0..n) in place, unnormalised; returns the sum
float exp_shifted(float* s, int64_t n) {
  float m = -INFINITY;
  int64_t i = 0;
  if (n >= kLanes) {
    simd::vec mv = simd::load(s);
    for (i = kLanes; i + kLanes <= n; i += kLanes) mv = simd::max(mv, simd::load(s + i));
    m = simd::hmax(mv);
  }
  for (; i < n; ++i) m = std::max(m, s[i]);
  const simd::vec mv = simd::set1(m);
  simd::vec acc = simd::zero();
  for (i = 0; i + kLanes <= n; i += kLanes) {
    simd::vec e = simd::exp(simd::sub(simd::load(s + i), mv));
    simd::store(s + i, e);
    acc = simd::add(acc, e);
  }
  float total = simd::sum(acc);
  for (; i < n; ++i) total += (s[i] = std::exp(s[i] - m));
  return total;
}

struct Decoder : torch::CustomClassHolder {
  int64_t n_head = 0, C = 0, V = 0;
  double eps = 1e-5;
  at::Tensor wte, wte_scale, wpe;  // wte: fp32, bf16 or int8 (then a scale per token)
  std::vector<Layer> layers;
  Norm ln_f;
  Linear head;
  std::vector<float> x, h, qkv, att, fc;  // per-step buffers (an Engine is driven by one thread)

  // ts: wte, wte_scale, wpe, then per block ln_1 (w, b), c_attn (w, scale, b), attn.c_proj (w, scale, b),
  // ln_2 (w, b), c_fc (w, scale, b), mlp.c_proj (w, scale, b), then ln_f (w, b), lm_head (w, scale, b);
  // an empty tensor where there is none. kinds: each Linear's Kind in the same order; packed: each
  // Linear's fbgemm packed weight (torch.ops.quantized.linear_prepack_fp16) for kFp16Packed, fbgemm's int8
  // copy (linear_prepack) or None for kInt8, else None; int8_packed_from: from this many rows a kInt8
  // Linear with a copy takes it (0: never; nanophi/gemv.py's int8_packed_from measured it).
  Decoder(int64_t n_head_, std::vector<at::Tensor> ts, std::vector<int64_t> kinds, std::vector<c10::IValue> packed,
          double eps_, int64_t int8_packed_from)
      : n_head(n_head_), eps(eps_) {
    TORCH_CHECK(ts.size() >= 3 + 5 && (ts.size() - 3 - 5) % 16 == 0, "Decoder: ", ts.size(), " tensors do not make whole blocks");
    const size_t n_layer = (ts.size() - 8) / 16;
    TORCH_CHECK(kinds.size() == 4 * n_layer + 1 && packed.size() == kinds.size(), "Decoder: ", kinds.size(), " kinds and ",
                packed.size(), " packed weights for ", 4 * n_layer + 1, " Linear layers");
    size_t t = 0, k = 0;
    auto tensor = [&]() { return ts[t++]; };
    auto norm = [&]() {
      Norm n;
      n.w = tensor().contiguous(), n.b = tensor().contiguous();
      TORCH_CHECK(n.w.scalar_type() == at::kFloat && (!present(n.b) || n.b.scalar_type() == at::kFloat),
                  "Decoder: LayerNorm weights must be fp32");
      return n;
    };
    auto linear = [&](const char* name) {
      Linear l;
      const c10::IValue& p = packed[k];
      l.kind = kinds[k++];
      if (l.kind == kFp16Packed || (l.kind == kInt8 && !p.isNone())) {
        TORCH_CHECK(p.isObject() && p.toObject()->type()->name()->qualifiedName() ==
                                        "__torch__.torch.classes.quantized.LinearPackedParamsBase",
                    "Decoder: ", name, "'s packed weight is not torch's LinearPackedParamsBase");
        l.packed = c10::static_intrusive_pointer_cast<LinearPackedParamsBase>(p.toObject()->getSlot(0).toCapsule());
        if (l.kind == kInt8) l.packed_from = int8_packed_from;
      }
      l.w = tensor(), l.scale = tensor(), l.b = tensor();
      l.N = l.w.size(0), l.K = l.w.dim() == 2 ? l.w.size(1) : 0;
      l.check(name);
      return l;
    };
    wte = tensor(), wte_scale = tensor(), wpe = tensor().contiguous();
    TORCH_CHECK(wte.dim() == 2 && wte.is_contiguous() && wpe.dim() == 2 && wpe.scalar_type() == at::kFloat,
                "Decoder: wte must be a contiguous table, wpe an fp32 one");
    C = wte.size(1);
    TORCH_CHECK(wpe.size(1) == C && C % n_head == 0, "Decoder: embedding widths ", C, " and ", wpe.size(1), ", ", n_head, " heads");
    TORCH_CHECK(wte.scalar_type() != at::kChar || (present(wte_scale) && wte_scale.numel() == wte.size(0)),
                "Decoder: an int8 wte needs a scale per token");
    for (size_t i = 0; i < n_layer; ++i) {
      Layer l;
      l.ln1 = norm();
      l.attn = linear("c_attn");
      l.proj = linear("attn.c_proj");
      l.ln2 = norm();
      l.fc = linear("c_fc");
      l.mproj = linear("mlp.c_proj");
      TORCH_CHECK(l.attn.K == C && l.attn.N == 3 * C && l.proj.K == C && l.proj.N == C && l.fc.K == C &&
                      l.mproj.K == l.fc.N && l.mproj.N == C,
                  "Decoder: block ", i, "'s Linear shapes do not fit width ", C);
      layers.push_back(l);
    }
    ln_f = norm();
    head = linear("lm_head");
    TORCH_CHECK(head.K == C, "Decoder: lm_head reads ", head.K, " features, not ", C);
    V = head.N;
  }

  // layer l's attention for every row: this token's key and value into the cache at pos[b], then one
  // query over the row's pos[b] + 1 positions; (row, head) pairs over the threads once the step's
  // attention is worth waking the other one
  template <typename T>
  void attend(int64_t l, T* kp, T* vp, const std::vector<int64_t>& slots, const std::vector<int64_t>& pos, int64_t S,
              int64_t P, int64_t longest) {
    const int64_t B = slots.size(), hs = C / n_head;
    const float scale = 1.f / std::sqrt(float(hs));
    const int64_t grain = std::max<int64_t>(1, 65536 / (longest * hs));
    at::parallel_for(0, B * n_head, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> s(longest);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / n_head, hd = i % n_head, n = pos[b] + 1;
        const float* q = qkv.data() + b * 3 * C + hd * hs;
        const int64_t base = (((l * S) + slots[b]) * n_head + hd) * P * hs;
        T* ks = kp + base;
        T* vs = vp + base;
        put_kv(ks + pos[b] * hs, q + C, hs);  // this token's key and value
        put_kv(vs + pos[b] * hs, q + 2 * C, hs);
        for (int64_t j = 0; j < n; ++j) s[j] = dot_kv(q, ks + j * hs, hs) * scale;
        const float total = exp_shifted(s.data(), n);
        float* out = att.data() + b * C + hd * hs;
        std::fill(out, out + hs, 0.f);
        for (int64_t j = 0; j < n; ++j) axpy(s[j], vs + j * hs, out, hs);
        const float inv = 1.f / total;
        for (int64_t d = 0; d < hs; ++d) out[d] *= inv;
      }
    });
  }

  void embed(int64_t id, int64_t pos, float* out) const {
    const float* p = wpe.data_ptr<float>() + pos * C;
    if (wte.scalar_type() == at::kFloat) {
      const float* e = wte.data_ptr<float>() + id * C;
      for (int64_t i = 0; i < C; ++i) out[i] = e[i] + p[i];
    } else if (wte.scalar_type() == at::kBFloat16) {
      const uint16_t* e = reinterpret_cast<const uint16_t*>(wte.data_ptr<at::BFloat16>()) + id * C;
      for (int64_t i = 0; i < C; ++i) out[i] = simd::to_float(e[i]) + p[i];
    } else {
      const int8_t* e = wte.data_ptr<int8_t>() + id * C;
      const float s = wte_scale.data_ptr<float>()[id];
      for (int64_t i = 0; i < C; ++i) out[i] = float(e[i]) * s + p[i];
    }
  }

  // ids (B,) int64; slots and pos: each row's cache slot and its cached length (the new token's position);
  // k, v: the engine's cache (layers, slots, heads, positions, head size), fp32 or fp16. Returns the logits (B, V).
  at::Tensor step(at::Tensor ids, std::vector<int64_t> slots, std::vector<int64_t> pos, at::Tensor k, at::Tensor v) {
    const int64_t B = ids.numel(), L = layers.size(), hs = C / n_head;
    TORCH_CHECK(ids.scalar_type() == at::kLong && (int64_t)slots.size() == B && (int64_t)pos.size() == B,
                "Decoder.step: ", B, " ids (int64), ", slots.size(), " slots, ", pos.size(), " positions");
    TORCH_CHECK((k.scalar_type() == at::kFloat || k.scalar_type() == at::kHalf) && v.scalar_type() == k.scalar_type() &&
                    k.is_contiguous() && v.is_contiguous() && k.dim() == 5 && k.sizes() == v.sizes() && k.size(0) == L &&
                    k.size(2) == n_head && k.size(4) == hs,
                "Decoder.step: the cache must be two contiguous fp32 or fp16 tensors (", L, ", slots, ", n_head,
                ", positions, ", hs, ")");
    const int64_t S = k.size(1), P = k.size(3);
    const int64_t* idp = ids.contiguous().data_ptr<int64_t>();
    int64_t longest = 0;
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(idp[b] >= 0 && idp[b] < wte.size(0), "Decoder.step: token id ", idp[b], " is not below ", wte.size(0));
      TORCH_CHECK(slots[b] >= 0 && slots[b] < S, "Decoder.step: slot ", slots[b], " is not in the cache's ", S);
      TORCH_CHECK(pos[b] >= 0 && pos[b] < P && pos[b] < wpe.size(0),
                  "Decoder.step: position ", pos[b], " is past the cache (", P, ") or block_size (", wpe.size(0), ")");
      longest = std::max(longest, pos[b] + 1);
    }
    const int64_t F = layers.empty() ? 0 : layers[0].fc.N;
    x.resize(B * C), h.resize(B * C), qkv.resize(B * 3 * C), att.resize(B * C), fc.resize(B * std::max(F, C));
    for (int64_t b = 0; b < B; ++b) embed(idp[b], pos[b], x.data() + b * C);
    for (int64_t l = 0; l < L; ++l) {
      const Layer& ly = layers[l];
      for (int64_t b = 0; b < B; ++b) layer_norm(x.data() + b * C, ly.ln1, h.data() + b * C, C, eps);
      ly.attn(h.data(), qkv.data(), B);
      if (k.scalar_type() == at::kHalf) attend(l, k.data_ptr<at::Half>(), v.data_ptr<at::Half>(), slots, pos, S, P, longest);
      else attend(l, k.data_ptr<float>(), v.data_ptr<float>(), slots, pos, S, P, longest);
      ly.proj(att.data(), h.data(), B);
      add_into(x.data(), h.data(), B * C);
      for (int64_t b = 0; b < B; ++b) layer_norm(x.data() + b * C, ly.ln2, h.data() + b * C, C, eps);
      ly.fc(h.data(), fc.data(), B);
      gelu_tanh(fc.data(), B * F);
      ly.mproj(fc.data(), h.data(), B);
      add_into(x.data(), h.data(), B * C);
    }
    for (int64_t b = 0; b < B; ++b) layer_norm(x.data() + b * C, ln_f, h.data() + b * C, C, eps);
    at::Tensor logits = at::empty({B, V}, at::TensorOptions().dtype(at::kFloat));
    head(h.data(), logits.data_ptr<float>(), B);
    return logits;
  }
};

// model.py's tanh GELU in place on a contiguous fp32 tensor, over the threads: prefill's MLP (12 x 512 x 3072
// values for a 512-token prompt at GPT-2 124M), where ATen's tanh took 6% of a bf16 prefill
void gelu_tanh_(at::Tensor x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "gelu_tanh_: a contiguous fp32 CPU tensor, not ", x.scalar_type(), x.is_contiguous() ? "" : " (strided)");
  float* p = x.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) { gelu_tanh(p + begin, end - begin); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nanophi, m) {
  m.def("gelu_tanh_(Tensor(a!) x) -> ()");
  m.impl("gelu_tanh_", c10::DispatchKey::CPU, TORCH_FN(gelu_tanh_));
  m.class_<Decoder>("Decoder")
      .def(torch::init<int64_t, std::vector<at::Tensor>, std::vector<int64_t>, std::vector<c10::IValue>, double, int64_t>())
      .def("step", &Decoder::step);
}
