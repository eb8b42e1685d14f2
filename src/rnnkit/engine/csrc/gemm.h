// The matrix multiplies of rnnkit's fused kernels: matrices seen through strides (Mat), the BLAS that torch
// links, MKL's packed weights, rnnkit's small-row and panel multiplies, and a step's split over threads.
#pragma once

#include "bf16.h"
#include "common.h"

namespace rnnkit {

// A 2-D matrix seen row-major: element (r, c) at p[r * ld + c], or at p[c * ld + r] when trans.
template <typename T>
struct Mat {
  const T* p = nullptr;
  bool trans = false;
  int64_t ld = 1;
  int64_t rows = 0, cols = 0;
  Tensor keep;  // owns a contiguous copy when the input had no unit stride
};

template <typename T>
Mat<T> mat_of(const Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "rnnkit fused kernel: expected a 2-D weight, got ", w.dim(), "-D");
  Mat<T> m;
  m.rows = w.size(0);
  m.cols = w.size(1);
  Tensor t = w;
  if (!(t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, m.cols)) &&
      !(t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, m.rows))) {
    t = t.contiguous();
  }
  m.keep = t;
  m.p = t.data_ptr<T>();
  if (t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, m.cols)) {
    m.trans = false;
    m.ld = std::max<int64_t>(1, t.stride(0));
  } else {
    m.trans = true;
    m.ld = std::max<int64_t>(1, t.stride(1));
  }
  return m;
}

// Columns [c0, c0 + nc) of a matrix, without a copy.
template <typename T>
Mat<T> cols_of(const Mat<T>& m, int64_t c0, int64_t nc) {
  Mat<T> s = m;
  s.p = m.trans ? m.p + c0 * m.ld : m.p + c0;
  s.cols = nc;
  return s;
}

// Row-major C[m x n] (row stride ldc) = alpha * op(A)[m x k] @ op(B)[k x n] + beta * C.
// A and B are given as Mat-like (pointer, trans, ld). Calls the BLAS that torch links (MKL or
// OpenBLAS, found at load time); falls back to at::mm when none is exported.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);
bool have_blas();

// The recurrent matmul of every step, h_{t-1} (rows x K) @ W (K x N). For float32 with MKL, W is packed
// once per sequence (MKL's packed GEMM: no re-packing of the same weights at every step, as oneDNN's RNNs do)
// and steps with the packed row count use it; anything else takes the plain gemm.
struct PackedWeights {
  std::vector<float> buf;  // MKL's packed copy of W (empty: not packed)
  int64_t rows = 0, k = 0, n = 0;
};
bool pack_recurrent_weights(PackedWeights& pw, const float* W, bool trans, int64_t ld, int64_t rows, int64_t k,
                            int64_t n);
void packed_gemm(const PackedWeights& pw, const float* A, int64_t lda, float beta, float* C, int64_t ldc);

// A few rows (a small batch's step) times a row-major W: BLAS libraries handle 2-8 rows poorly (MKL's
// generic path measured 2-3x slower per row than one row), so rnnkit multiplies them itself, streaming W once
// per step. float32 only; returns false (nothing done) outside 1..kSmallGemmRows rows, n % 8 != 0, or beta
// other than 0 and 1.
constexpr int64_t kSmallGemmRows = 8;
bool small_gemm(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* W, int64_t ldw, float beta,
                float* C, int64_t ldc);

// A call of a single step: a streamed frame (rnnkit.engine.frame). Its multiplies take BLAS on W as stored, threaded
// inside the library: re-laying W out (a contiguous copy, panels, the small-row multiply's strided tiles) or splitting
// the step by units would cost more than the one multiply it serves (measured: 3x the frame's time at H = 256).
inline bool one_frame(int64_t steps) { return steps == 1; }

// C (m x n, ldc) = alpha * X (m x k, row-major ldx) @ W + beta * C; small_ok: rnnkit's small-row multiply may take
// it (see one_frame).
template <typename T>
inline void gemm_xw(int64_t m, const T* X, int64_t ldx, const Mat<T>& W, T alpha, T beta, T* C, int64_t ldc,
                    bool small_ok = true) {
  if constexpr (std::is_same_v<T, float>) {
    if (small_ok && !W.trans && alpha == 1.0f && small_gemm(m, W.cols, W.rows, X, ldx, W.p, W.ld, beta, C, ldc)) {
      return;
    }
  }
  gemm(false, W.trans, m, W.cols, W.rows, alpha, X, ldx, W.p, W.ld, beta, C, ldc);
}

template <typename T>
struct StepGemm {
  Mat<T> w;
  PackedWeights packed;
  bool small_ok;
  StepGemm(const Mat<T>& w_, int64_t rows, bool small_ok_ = true) : w(w_), small_ok(small_ok_) {
    // 1-8 rows of a row-major W take the small-row multiply: MKL's packed one measured 2-3x slower there.
    const bool small = rows <= kSmallGemmRows && !w.trans && w.cols % 8 == 0;
    if constexpr (std::is_same_v<T, float>) {
      if (!small) pack_recurrent_weights(packed, w.p, w.trans, w.ld, rows, w.rows, w.cols);
    }
  }
  bool is_packed() const { return !packed.buf.empty(); }
  // C (n x W.cols, ldc) = X (n x W.rows, ldx) @ W + beta * C
  void operator()(int64_t n, const T* X, int64_t ldx, T beta, T* C, int64_t ldc) const {
    if constexpr (std::is_same_v<T, float>) {
      if (is_packed() && n == packed.rows) {
        packed_gemm(packed, X, ldx, beta, C, ldc);
        return;
      }
    }
    gemm_xw<T>(n, X, ldx, w, T(1), beta, C, ldc, small_ok);
  }
};

// W^T as a Mat, without a copy.
template <typename T>
Mat<T> transposed(const Mat<T>& m) {
  Mat<T> t = m;
  t.trans = !m.trans;
  t.rows = m.cols;
  t.cols = m.rows;
  return t;
}

// C (m x W.rows, ldc) = alpha * D (m x W.cols, ldd) @ W^T + beta * C.
template <typename T>
inline void gemm_dwt(int64_t m, const T* D, int64_t ldd, const Mat<T>& W, T alpha, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && bf16_multiplies()) {  // a bf16 layer's (bf16.h)
      bf16_gemm(m, W.cols, D, false, ldd, transposed(W), beta != 0.0f, C, ldc);
      return;
    }
  }
  gemm(false, !W.trans, m, W.rows, W.cols, alpha, D, ldd, W.p, W.ld, beta, C, ldc);
}

// C (k x n, ldc) = A^T @ D, A (m x k, lda), D (m x n, ldd), over all m rows: a weight gradient.
template <typename T>
inline void gemm_atd(int64_t m, int64_t k, int64_t n, const T* A, int64_t lda, const T* D, int64_t ldd, T beta,
                     T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if ((beta == 0.0f || beta == 1.0f) && m > 0 && bf16_multiplies()) {  // a bf16 layer's (bf16.h)
      Mat<float> d;
      d.p = D, d.ld = ldd, d.rows = m, d.cols = n;
      bf16_gemm(k, m, A, true, lda, d, beta != 0.0f, C, ldc);
      return;
    }
  }
  gemm(true, false, k, n, m, T(1), A, lda, D, ldd, beta, C, ldc);
}

// ---- splitting a step across threads by hidden units --------------------------------------------
// Each thread owns a contiguous range of hidden units: it multiplies the (shared, read-only)
// previous state by *its* columns of every gate block, then runs the elementwise update of its
// units. Every core thus streams only its share of the recurrent weights (which stay in its L2
// from step to step), and threads meet once per step.
struct Units {
  std::vector<int64_t> lo, hi;  // per chunk
  int64_t chunks() const { return static_cast<int64_t>(lo.size()); }
};

// The least work (multiply-adds) per step worth splitting; returns the previous value (tests lower it).
int64_t set_min_step_work(int64_t work);
// How many forwards ran in blocks of rows (loop.h forward_rows) in this process: what the tests check they forced.
void note_row_block_call();
int64_t row_block_calls();

// How many threads a step of `work` multiply-adds is worth (at least 1).
int64_t step_threads(int64_t work);

// How many chunks a step of `rows x k x (gates * units)` multiply-adds is worth (one for a call of one step:
// one_frame).
Units split_units(int64_t units, int64_t rows, int64_t k, int64_t gates, int64_t steps = 0);

// The row count to pack W_h for (MKL's packed multiply, threaded inside MKL) when a step runs as one chunk;
// 0 (no packing) when the step is split over threads, each multiplying its own columns.
inline int64_t pack_rows(const Units& u, int64_t rows) { return u.chunks() == 1 ? rows : 0; }

// W (k x n) re-laid out once per sequence in panels of 16 columns (k rows of 16 contiguous floats; the last
// panel may have 8), for rnnkit's register-tiled multiply: 6 rows x 16 columns of accumulators, each panel
// streamed once per 6 rows from L1. A BLAS call re-packs its B operand at every call, which at a step's sizes
// (the weights of one thread's units, a few rows of h) measured as much copying as multiplying. float32 only.
struct PanelWeights {
  std::vector<float> buf;
  int64_t k = 0, n = 0;
};
bool pack_panels(PanelWeights& pw, const float* W, bool trans, int64_t ld, int64_t k, int64_t n);  // n % 8 == 0
void panel_gemm(const PanelWeights& pw, int64_t m, const float* A, int64_t lda, float beta, float* C, int64_t ldc);
// The same on panels kept elsewhere (a streamed frame's packed weights, frame.cpp): k rows of n columns at P, packed
// by pack_panels_into, which stacks the rows of `blocks` (each n columns wide) into one set of panels. In bfloat16
// (a bf16 model's frame): weights read at half the bytes, widened exactly, multiplied and summed in float32.
void panel_gemm_at(const float* P, int64_t k, int64_t n, int64_t m, const float* A, int64_t lda, float beta,
                   float* C, int64_t ldc);
void panel_gemm_at(const at::BFloat16* P, int64_t k, int64_t n, int64_t m, const float* A, int64_t lda, float beta,
                   float* C, int64_t ldc);
void pack_panels_into(float* out, const std::vector<Mat<float>>& blocks, int64_t n);
void pack_panels_into(at::BFloat16* out, const std::vector<Mat<float>>& blocks, int64_t n);  // (bf16 values: exact)
// bf16 panels on a CPU with AVX512-BF16 (known at compile time: the build targets the CPU it runs on) hold rows in
// pairs, (2i, 2i + 1) side by side per column, for its bf16 dot-product instruction (VDPBF16PS), which multiplies
// A's bf16 operands (the frame rounds them: bf16.h) exactly and sums in float32; an odd k gets a zero row. So a
// panel of k rows holds panel_depth(k) rows in bf16.
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
constexpr bool kPairedBf16Panels = true;
#else
constexpr bool kPairedBf16Panels = false;
#endif
inline int64_t panel_depth(int64_t k, bool bf16) { return bf16 && kPairedBf16Panels ? k + (k & 1) : k; }

// Sequences shorter than this multiply through BLAS or the small-row kernel: packing panels costs about one
// step's multiply.
constexpr int64_t kMinPanelSteps = 4;

template <typename T>
std::vector<Bf16Weights> bf16_blocks(const Mat<T>& w, int64_t gates, int64_t units, const Units& u, int64_t rows,
                                     int64_t steps) {
  if constexpr (std::is_same_v<T, float>) return bf16_chunks(w, gates, units, u, rows, steps);
  return {};
}

// The recurrent multiply of a step, split over threads by units: chunk c owns units [lo, lo + w) of every gate
// block of W (K, gates * units) and writes C[:, q*w : (q+1)*w] = X @ W[:, q*units + lo : q*units + lo + w], its
// gates side by side. A step of one chunk (lo = 0, w = units: the layout of W itself) multiplies W whole, on MKL's
// packed copy when it has more than a few rows; otherwise float32 sequences of several steps use panels packed
// once per call, the rest BLAS or the small-row multiply.
template <typename T>
struct ChunkGemm {
  Mat<T> w;
  int64_t gates, units;
  std::vector<Bf16Weights> bf16;     // [chunk * gates + q]: a bf16 layer's multiplies on bf16 units (bf16.h)
  StepGemm<T> whole;                 // MKL-packed W when the step is one chunk (see pack_rows)
  std::vector<PanelWeights> panels;  // [chunk * gates + q]; empty: BLAS
  bool round_x;                      // a bf16 layer's: X rounded to bf16 (bf16.h), here or on the bf16 units
  ChunkGemm(const Mat<T>& w_, int64_t gates_, int64_t units_, const Units& u, int64_t rows, int64_t steps)
      : w(w_),
        gates(gates_),
        units(units_),
        bf16(bf16_blocks(w_, gates_, units_, u, rows, steps)),
        round_x(std::is_same_v<T, float> && bf16_multiplies()),
        whole(w_, bf16.empty() ? pack_rows(u, rows) : 0, !one_frame(steps)) {
    if constexpr (std::is_same_v<T, float>) {
      if (!bf16.empty() || whole.is_packed() || steps < kMinPanelSteps) return;
      panels.resize(u.chunks() * gates);
      for (int64_t c = 0; c < u.chunks(); ++c) {
        for (int64_t q = 0; q < gates; ++q) {
          const Mat<T> b = cols_of(w, q * units + u.lo[c], u.hi[c] - u.lo[c]);
          if (!pack_panels(panels[c * gates + q], b.p, b.trans, b.ld, b.rows, b.cols)) {
            panels.clear();
            return;
          }
        }
      }
    }
  }
  // C = X @ W and D = X @ next's W, two multiplies of the same X (the reset-after GRU's h @ W_rz and h @ W_n): on the
  // bf16 units, X is rounded once for both.
  void twice(const ChunkGemm& next, int64_t c, int64_t lo, int64_t wd, int64_t m, const T* X, int64_t ldx, T* C,
             T* D, int64_t ldc) const {
    if constexpr (std::is_same_v<T, float>) {
      if (!bf16.empty() && !next.bf16.empty() && w.rows == next.w.rows) {
        const at::BFloat16* a = rounded_rows(m, w.rows, X, ldx);
        bf16_chunk_multiply(&bf16[c * gates], gates, wd, m, a, false, C, ldc);
        bf16_chunk_multiply(&next.bf16[c * next.gates], next.gates, wd, m, a, false, D, ldc);
        return;
      }
    }
    (*this)(c, lo, wd, m, X, ldx, C, ldc);
    next(c, lo, wd, m, X, ldx, D, ldc);
  }
  // beta: 0 (C = X @ W) or 1 (C += X @ W).
  void operator()(int64_t c, int64_t lo, int64_t wd, int64_t m, const T* X, int64_t ldx, T* C, int64_t ldc,
                  T beta = T(0)) const {
    if constexpr (std::is_same_v<T, float>) {
      if (!bf16.empty()) {
        bf16_chunk_multiply(&bf16[c * gates], gates, wd, m, X, ldx, beta != T(0), C, ldc);
        return;
      }
      if (round_x) {
        float* r = rounded_scratch(m * w.rows);
        for (int64_t i = 0; i < m; ++i) round_to_bf16(X + i * ldx, w.rows, r + i * w.rows);
        X = r, ldx = w.rows;
      }
    }
    if (whole.is_packed()) {  // one chunk: all of W at once
      whole(m, X, ldx, beta, C, ldc);
      return;
    }
    for (int64_t q = 0; q < gates; ++q) {
      if constexpr (std::is_same_v<T, float>) {
        if (!panels.empty()) {
          panel_gemm(panels[c * gates + q], m, X, ldx, beta, C + q * wd, ldc);
          continue;
        }
      }
      gemm_xw<T>(m, X, ldx, cols_of(w, q * units + lo, wd), T(1), beta, C + q * wd, ldc);
    }
  }
};

// A recurrent weight as the steps read it: row-major when rnnkit's small-row multiply will read rows of it
// (a small batch over a sequence too short for panels, but more than one_frame; torch-layout weights arrive
// transposed), else as given (BLAS and the panel packing read both orientations). steps 0: any number.
template <typename T>
Mat<T> step_weights(const Tensor& w, int64_t rows, int64_t steps = 0) {
  const bool small =
      std::is_same_v<T, float> && rows <= kSmallGemmRows && steps < kMinPanelSteps && !one_frame(steps);
  return mat_of<T>(small ? w.contiguous() : w);
}

// W_h^T as the backward steps read it (dh = dG @ W_h^T): row-major for a small batch (as step_weights).
template <typename T>
Mat<T> step_weights_t(const Tensor& w, int64_t rows, int64_t steps) {
  return step_weights<T>(w.t(), rows, steps);
}

// Rows [r0, r0 + nr) of a matrix, without a copy.
template <typename T>
Mat<T> rows_of(const Mat<T>& m, int64_t r0, int64_t nr) {
  Mat<T> s = m;
  s.p = m.trans ? m.p + r0 : m.p + r0 * m.ld;
  s.rows = nr;
  return s;
}

// Runs f(chunk) for every chunk, in parallel when there is more than one.
template <typename F>
inline void for_chunks(const Units& u, const F& f) {
  if (u.chunks() == 1) {
    f(int64_t(0));
  } else {
    at::parallel_for(0, u.chunks(), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) f(c);
    });
  }
}

// C (n x N) = X_1 @ W_1 + X_2 @ W_2 ... + beta * C at every step of a sequence (W_k: K_k x N, the row blocks of
// one W or from different tensors), for steps without an elementwise update of their own between multiply and
// barrier (the backward's dh = dG @ W_h^T): split over threads by columns of W when the work is worth it (see
// ChunkGemm). beta: 0 or 1.
template <typename T>
struct SplitGemm {
  Units u;
  std::vector<ChunkGemm<T>> blocks;
  SplitGemm(const std::vector<Mat<T>>& ws, int64_t rows, int64_t steps) {
    int64_t depth = 0;
    for (const Mat<T>& w : ws) depth += w.rows;
    u = split_units(ws[0].cols, rows, depth, 1);
    for (const Mat<T>& w : ws) blocks.emplace_back(w, 1, w.cols, u, rows, steps);
  }
  // xs: X_k (n x K_k), row stride ldx each.
  void operator()(int64_t n, std::initializer_list<const T*> xs, int64_t ldx, T beta, T* C, int64_t ldc) const {
    for_chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], w = u.hi[c] - u.lo[c];
      if (w == 0) return;
      size_t k = 0;
      for (const T* X : xs) blocks[k](c, lo, w, n, X, ldx, C + lo, ldc, k ? T(1) : beta), ++k;
    });
  }
};

}  // namespace rnnkit
