// Shared pieces of rnnkit's fused recurrent kernels (CPU): the step schedule, elementwise math, inputs.
//
// Layout conventions used by every kernel:
// * Sequences are "packed" as in torch's PackedSequence: step t owns the rows
//   [off[t], off[t] + n[t]) of a (total, features) matrix, n[t] is non-increasing, and row b of
//   step t belongs to the same sequence as row b of step t - 1 (sequences sorted by length,
//   longest first). A batch without lengths is the special case n[t] = B, off[t] = t * B.
// * Weights are row-major in the "x @ W" orientation, (in, out); a transposed view (torch's
//   (out, in) weights seen through .t()) is accepted without a copy (see Mat).
// * State buffers (B, size) hold the state of every sequence; rows past n[t] are frozen, which
//   is what makes the final state the state at each sequence's last valid step.
#pragma once

// Per-operator headers instead of <ATen/ATen.h>: the same API at a fraction of the compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include "rk_math.h"

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <utility>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace rnnkit {

using at::Tensor;

struct Schedule {
  std::vector<int64_t> n;    // active rows of each step
  std::vector<int64_t> off;  // first packed row of each step
  int64_t total = 0;
  int64_t steps() const { return static_cast<int64_t>(n.size()); }
};

Schedule schedule_of(const Tensor& batch_sizes);

// ---- elementwise math ------------------------------------------------------------------------
// float: rk_math.h's (branch-free, vectorisable, about 1 ulp; shared with compiled cells' generated code);
// double: libm, exact to the reference.
inline float exp_approx(float x) { return rk_exp_f(x); }
inline float sigmoid_s(float x) { return rk_sigmoid_f(x); }
inline double sigmoid_s(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline float tanh_s(float x) { return rk_tanh_f(x); }
inline double tanh_s(double x) { return std::tanh(x); }

template <typename T>
inline void sigmoid_inplace(T* __restrict__ x, int64_t n, T shift = T(0)) {
  for (int64_t j = 0; j < n; ++j) x[j] = sigmoid_s(x[j] + shift);
}

template <typename T>
inline void tanh_inplace(T* __restrict__ x, int64_t n) {
  for (int64_t j = 0; j < n; ++j) x[j] = tanh_s(x[j]);
}

// The least elements per thread worth a parallel region in an elementwise pass (RNNKIT_MIN_ROW_WORK).
int64_t min_row_work();

// Runs f(b0, b1) over rows [0, n), in parallel when the work is large enough to pay for threads.
template <typename F>
inline void for_rows(int64_t n, int64_t width, const F& f) {
  const int64_t grain = std::max<int64_t>(1, min_row_work() / std::max<int64_t>(1, width));
  if (n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

// ---- the entry points' inputs -------------------------------------------------------------------
inline bool has(const c10::optional<Tensor>& t) { return t.has_value() && t->defined(); }

Tensor contig(const Tensor& t);

// A (rows, cols) buffer for a kernel's own use within one call, that does not outlive it (a bf16 inference pass's
// projected gates): the calling thread keeps the memory between calls, up to kCallScratchBytes, so that a
// sequence's gates land on pages already mapped. (A fresh buffer of 10 MB, (100, 32, 768) float32 gates, faulted
// its pages in on every call: about 12% of a bf16 GRU's inference at (100, 32, 128, 256).) Larger: a fresh tensor.
constexpr int64_t kCallScratchBytes = int64_t(64) << 20;
Tensor call_scratch(int64_t rows, int64_t cols, const at::TensorOptions& options);

// The entry points' input check: packed (total, features) float32/float64 CPU tensors.
void check_float(const Tensor& x, const char* name, bool bf16_ok = false);

// An optional input, contiguous, and its data (nullptr when absent): one line per optional argument.
template <typename T>
struct Opt {
  Tensor keep;
  const T* p = nullptr;
  explicit Opt(const std::optional<Tensor>& t) {
    if (has(t)) {
      keep = contig(*t);
      p = keep.data_ptr<T>();
    }
  }
};

// An optional vector input, contiguous, or n zeros when absent (a bias the loops read unconditionally).
inline Tensor contig_or_zeros(const std::optional<Tensor>& t, int64_t n, const at::TensorOptions& options) {
  return has(t) ? contig(*t) : at::zeros({n}, options);
}

// An entry point's dtype dispatch, after its input check: f(T()) with T float or double, as x's dtype. bf16_x: a
// family's forward, which also takes a bf16 layer's x as it came (float32 weights; loop.h project_inputs reads it),
// with T float.
template <typename F>
auto dispatch_float(const Tensor& x, const char* name, const F& f, bool bf16_x = false) {
  check_float(x, name, bf16_x);
  if (x.scalar_type() == at::kDouble) return f(double());
  return f(float());
}

// The next state from the step's outputs, times the per-sequence state mask when there is one.
template <typename T>
inline void store_state(T* __restrict__ h, const T* __restrict__ y, const T* __restrict__ mask, int64_t w) {
  if (mask) {
    for (int64_t j = 0; j < w; ++j) h[j] = y[j] * mask[j];
  } else {
    std::memcpy(h, y, sizeof(T) * w);
  }
}

#if defined(__AVX512F__)
// out (16 x 16 floats, row-major) = the transpose of the 16 x 16 block at src (row stride ld); any 32-bit values.
void transpose_tile(const float* src, int64_t ld, float* out);
#endif

}  // namespace rnnkit
