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
// float: branch-free Cephes-style exp so that GCC vectorises the loops (AVX2/FMA with
// -march=native); about 1 ulp. double: libm, exact to the reference.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float sigmoid_s(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double sigmoid_s(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline float tanh_s(float x) {
  // Small |x|: Cephes' odd polynomial (keeps relative accuracy near 0); else 1 - 2 / (e^{2|x|} + 1).
  float a = std::fabs(x);
  float z = x * x;
  float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
                 3.33332819422e-1f) * z * x + x;
  float big = 1.0f - 2.0f / (exp_approx(2.0f * a) + 1.0f);
  big = std::copysign(big, x);
  return a < 0.625f ? small : big;
}
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

// The entry points' input check: packed (total, features) float32/float64 CPU tensors.
void check_float(const Tensor& x, const char* name);

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

// An entry point's dtype dispatch, after its input check: f(T()) with T float or double, as x's dtype.
template <typename F>
auto dispatch_float(const Tensor& x, const char* name, const F& f) {
  check_float(x, name);
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

}  // namespace rnnkit
