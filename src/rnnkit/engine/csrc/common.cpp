// BLAS access and the step schedule, shared by the kernels.
#include "gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>

namespace rnnkit {

Schedule schedule_of(const Tensor& batch_sizes) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong && batch_sizes.device().is_cpu(),
              "rnnkit fused kernel: batch_sizes must be a 1-D int64 CPU tensor");
  Tensor bs = batch_sizes.contiguous();
  const int64_t* p = bs.data_ptr<int64_t>();
  Schedule s;
  s.n.assign(p, p + bs.numel());
  s.off.resize(s.n.size());
  for (size_t t = 0; t < s.n.size(); ++t) {
    TORCH_CHECK(s.n[t] >= 0 && (t == 0 || s.n[t] <= s.n[t - 1]),
                "rnnkit fused kernel: batch_sizes must be non-negative and non-increasing");
    s.off[t] = s.total;
    s.total += s.n[t];
  }
  return s;
}

Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

Tensor call_scratch(int64_t rows, int64_t cols, const at::TensorOptions& options) {
  const int64_t bytes = rows * cols * static_cast<int64_t>(options.dtype().itemsize());
  if (bytes > kCallScratchBytes) return at::empty({rows, cols}, options);
  thread_local Tensor kept;
  if (!kept.defined() || kept.numel() < bytes) kept = at::empty({std::max<int64_t>(bytes, 1)}, at::kByte);
  return at::from_blob(kept.data_ptr(), {rows, cols}, options);
}

void check_float(const Tensor& x, const char* name, bool bf16_ok) {
  TORCH_CHECK(x.device().is_cpu(), "rnnkit ", name, ": the compiled kernels run on CPU tensors, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                  (bf16_ok && x.scalar_type() == at::kBFloat16),
              "rnnkit ", name, ": expected float32 or float64", bf16_ok ? " (or bfloat16 inputs)" : "", ", got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 2, "rnnkit ", name, ": expected packed inputs (total, features), got ", x.dim(), "-D");
}

namespace {
// A parallel region costs a few microseconds: split only steps with enough multiply-adds per thread.
std::atomic<int64_t> g_min_step_work{[] {
  const char* env = std::getenv("RNNKIT_MIN_STEP_WORK");
  return env ? std::atoll(env) : int64_t(1) << 15;
}()};
}  // namespace

int64_t min_row_work() {
  static const int64_t work = [] {
    const char* env = std::getenv("RNNKIT_MIN_ROW_WORK");
    return env ? std::max<int64_t>(1, std::atoll(env)) : int64_t(4096);
  }();
  return work;
}

int64_t set_min_step_work(int64_t work) { return g_min_step_work.exchange(std::max<int64_t>(1, work)); }

namespace {
std::atomic<int64_t> g_row_block_calls{0};
}  // namespace

void note_row_block_call() { g_row_block_calls.fetch_add(1, std::memory_order_relaxed); }
int64_t row_block_calls() { return g_row_block_calls.load(std::memory_order_relaxed); }

int64_t step_threads(int64_t work) {
  return std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(1, work / g_min_step_work.load()));
}

Units split_units(int64_t units, int64_t rows, int64_t k, int64_t gates, int64_t steps) {
  int64_t chunks = one_frame(steps) ? 1 : step_threads(rows * k * gates * units);
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, units / 8));  // at least 8 units (a vector) each
  Units u;
  for (int64_t c = 0; c < chunks; ++c) {
    // Boundaries on multiples of 8 units keep each chunk's loops aligned to whole vectors.
    int64_t lo = (units * c / chunks) / 8 * 8, hi = c + 1 == chunks ? units : (units * (c + 1) / chunks) / 8 * 8;
    u.lo.push_back(lo);
    u.hi.push_back(hi);
  }
  return u;
}

namespace {

// Fortran BLAS (column-major), as exported by the MKL or OpenBLAS that torch is linked with.
using sgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
using dgemm_t = void (*)(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                         const int*, const double*, const int*, const double*, double*, const int*);

struct Blas {
  sgemm_t s = nullptr;
  dgemm_t d = nullptr;
  Blas() {
    // Our library links libtorch_cpu, so its exported symbols are in our lookup scope.
    s = reinterpret_cast<sgemm_t>(dlsym(RTLD_DEFAULT, "sgemm_"));
    d = reinterpret_cast<dgemm_t>(dlsym(RTLD_DEFAULT, "dgemm_"));
    if (!s || !d) {
      void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
      if (h) {
        if (!s) s = reinterpret_cast<sgemm_t>(dlsym(h, "sgemm_"));
        if (!d) d = reinterpret_cast<dgemm_t>(dlsym(h, "dgemm_"));
      }
    }
  }
};

const Blas& blas() {
  static Blas b;
  return b;
}

bool fits_int(int64_t v) { return v >= 0 && v <= 2147483647LL; }


// Fallback through ATen when no Fortran BLAS symbol is exported: wraps the buffers without copies.
template <typename T>
void gemm_aten(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, const T* B,
               int64_t ldb, T beta, T* C, int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = ta ? at::from_blob(const_cast<T*>(A), {k, m}, {lda, 1}, opts).t()
                : at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opts);
  Tensor b = tb ? at::from_blob(const_cast<T*>(B), {n, k}, {ldb, 1}, opts).t()
                : at::from_blob(const_cast<T*>(B), {k, n}, {ldb, 1}, opts);
  Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

template <typename T, typename F>
void gemm_impl(F fn, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (!fn || !fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) || !fits_int(ldc)) {
    gemm_aten<T>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
  const char transb = tb ? 'T' : 'N', transa = ta ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDB = static_cast<int>(ldb), LDA = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  fn(&transb, &transa, &M, &N, &K, &alpha, B, &LDB, A, &LDA, &beta, C, &LDC);
}

}  // namespace

namespace {
// MKL's packed GEMM (CBLAS), when the linked BLAS is MKL.
using pack_size_t = size_t (*)(int, int, int, int);
using pack_t = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using compute_t = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

struct PackedApi {
  pack_size_t size = nullptr;
  pack_t pack = nullptr;
  compute_t compute = nullptr;
  PackedApi() {
    if (std::getenv("RNNKIT_NO_PACKED_GEMM")) return;
    void* h = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    auto find = [h](const char* name) {
      void* f = dlsym(RTLD_DEFAULT, name);
      return (!f && h) ? dlsym(h, name) : f;
    };
    size = reinterpret_cast<pack_size_t>(find("cblas_sgemm_pack_get_size"));
    pack = reinterpret_cast<pack_t>(find("cblas_sgemm_pack"));
    compute = reinterpret_cast<compute_t>(find("cblas_sgemm_compute"));
  }
  bool ok() const { return size && pack && compute; }
};

const PackedApi& packed_api() {
  static PackedApi api;
  return api;
}
}  // namespace

bool pack_recurrent_weights(PackedWeights& pw, const float* W, bool trans, int64_t ld, int64_t rows, int64_t k,
                            int64_t n) {
  const PackedApi& api = packed_api();
  // A single row is a matrix-vector product: nothing to gain from packing.
  if (!api.ok() || rows < 2 || !fits_int(rows) || !fits_int(k) || !fits_int(n) || !fits_int(ld)) return false;
  const size_t bytes = api.size(kBMatrix, static_cast<int>(rows), static_cast<int>(n), static_cast<int>(k));
  pw.buf.assign(bytes / sizeof(float) + 1, 0.0f);
  api.pack(kRowMajor, kBMatrix, trans ? kTrans : kNoTrans, static_cast<int>(rows), static_cast<int>(n),
           static_cast<int>(k), 1.0f, W, static_cast<int>(ld), pw.buf.data());
  pw.rows = rows;
  pw.k = k;
  pw.n = n;
  return true;
}

void packed_gemm(const PackedWeights& pw, const float* A, int64_t lda, float beta, float* C, int64_t ldc) {
  packed_api().compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(pw.rows), static_cast<int>(pw.n),
                       static_cast<int>(pw.k), A, static_cast<int>(lda), pw.buf.data(), static_cast<int>(pw.n), beta,
                       C, static_cast<int>(ldc));
}

namespace {
// GCC/Clang vector extension: AVX on x86 with -march=native, NEON on ARM, plain code elsewhere.
typedef float v8f __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

// Loads a vector of W into a register of its own. Left alone, GCC folds the load into every FMA that reads it
// when registers allow (tiles of 1-4 rows): one load per FMA instead of one per tile row, and perf showed those
// tiles bound by loads at about half their FMA rate.
inline v8f load8_reg(const float* p) {
  v8f v = load8(p);
#if defined(__x86_64__) && defined(__AVX__)
  __asm__("" : "+x"(v));
#endif
  return v;
}

// A row of a panel (8V weights) into registers. float32: V loads. bfloat16 (a bf16 model's frame panels, frame.cpp):
// a bf16 number is the upper half of a float32's bits, so widening is exact; a 16-column row is packed with columns
// j and j + 8 side by side (pack_panels_into), so that one load of 8 pairs gives both vectors by a shift (column j)
// and a mask (column j + 8): half the bytes of float32 and few more instructions.
template <int V>
inline void load_row(const float* p, v8f (&w)[V]) {
  for (int v = 0; v < V; ++v) w[v] = load8_reg(p + 8 * v);
}

template <int V>
inline void load_row(const at::BFloat16* p, v8f (&w)[V]) {
  typedef uint32_t v8u __attribute__((vector_size(32)));
  if constexpr (V == 2) {
    v8u pairs;
    std::memcpy(&pairs, p, sizeof(pairs));
    const v8u lo = pairs << 16, hi = pairs & 0xFFFF0000u;
    std::memcpy(&w[0], &lo, sizeof(lo));
    std::memcpy(&w[1], &hi, sizeof(hi));
  } else {
    typedef uint16_t v8h __attribute__((vector_size(16)));
    for (int v = 0; v < V; ++v) {
      v8h h;
      std::memcpy(&h, p + 8 * v, sizeof(h));
      const v8u bits = __builtin_convertvector(h, v8u) << 16;
      std::memcpy(&w[v], &bits, sizeof(bits));
    }
  }
#if defined(__x86_64__) && defined(__AVX__)
  for (int v = 0; v < V; ++v) __asm__("" : "+x"(w[v]));
#endif
}

// One M x 8V tile of C = A @ P (+ C when acc), P a panel: k rows of `width` weights apart (float32, or bfloat16
// widened on load: half the bytes read for the same float32 arithmetic). U interleaved
// partial sums over k keep at least 8 independent accumulators when M is small (FMA latency, not throughput,
// bounds a single chain).
template <int M, int V, typename W>
void panel_tile(const float* A, int64_t lda, const W* P, int64_t width, int64_t k, bool acc, float* C, int64_t ldc) {
  constexpr int U = M * V >= 8 ? 1 : 8 / (M * V);
  v8f c[U][M][V];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < V; ++v) c[u][i][v] = v8f{};
  int64_t p = 0;
  for (; p + U <= k; p += U) {
    for (int u = 0; u < U; ++u) {
      v8f w[V];
      load_row<V>(P + (p + u) * width, w);
      for (int i = 0; i < M; ++i) {
        const float a = A[i * lda + p + u];
        for (int v = 0; v < V; ++v) c[u][i][v] += a * w[v];
      }
    }
  }
  for (; p < k; ++p) {
    v8f w[V];
    load_row<V>(P + p * width, w);
    for (int i = 0; i < M; ++i) {
      const float a = A[i * lda + p];
      for (int v = 0; v < V; ++v) c[0][i][v] += a * w[v];
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int v = 0; v < V; ++v) {
      v8f sum = c[0][i][v];
      for (int u = 1; u < U; ++u) sum += c[u][i][v];
      float* out = C + i * ldc + 8 * v;
      store8(out, acc ? load8(out) + sum : sum);
    }
  }
}

template <int V, typename W>
void panel_tile_rows(int64_t rows, const float* A, int64_t lda, const W* P, int64_t width, int64_t k, bool acc,
                     float* C, int64_t ldc) {
  switch (rows) {
    case 6: panel_tile<6, V>(A, lda, P, width, k, acc, C, ldc); break;
    case 5: panel_tile<5, V>(A, lda, P, width, k, acc, C, ldc); break;
    case 4: panel_tile<4, V>(A, lda, P, width, k, acc, C, ldc); break;
    case 3: panel_tile<3, V>(A, lda, P, width, k, acc, C, ldc); break;
    case 2: panel_tile<2, V>(A, lda, P, width, k, acc, C, ldc); break;
    case 1: panel_tile<1, V>(A, lda, P, width, k, acc, C, ldc); break;
    default: break;
  }
}

// All m rows in tiles of at most 6, their sizes differing by at most one (16 rows: 5, 5, 6). A short last tile
// (16 = 6 + 6 + 4) has too few accumulators to hide the FMA latency: perf measured its rows 75% slower.
template <int V, typename W>
void panel_rows(int64_t m, const float* A, int64_t lda, const W* P, int64_t width, int64_t k, bool acc, float* C,
                int64_t ldc) {
  const int64_t tiles = (m + 5) / 6;
  for (int64_t t = 0, i = 0; t < tiles; ++t) {
    const int64_t rows = (m - i) / (tiles - t);  // the remaining rows spread over the remaining tiles
    panel_tile_rows<V>(rows, A + i * lda, lda, P, width, k, acc, C + i * ldc, ldc);
    i += rows;
  }
}
}  // namespace

namespace {
// M rows of C = A @ W (+ C when acc), W row-major (k x n, row stride ldw): tiles of M rows x V vectors, V wide
// enough for 8 accumulators (both FMA pipes busy), then single vectors for the remaining columns (n % 8 == 0).
// A tile is panel_tile's, reading W's rows in place of a panel's (its row stride ldw instead of the width).
template <int M>
void small_rows(const float* A, int64_t lda, const float* W, int64_t ldw, int64_t k, int64_t n, bool acc, float* C,
                int64_t ldc) {
  constexpr int V = M >= 8 ? 1 : 8 / M;
  int64_t j = 0;
  for (; j + 8 * V <= n; j += 8 * V) panel_tile<M, V>(A, lda, W + j, ldw, k, acc, C + j, ldc);
  if constexpr (V > 1) {
    for (; j < n; j += 8) panel_tile<M, 1>(A, lda, W + j, ldw, k, acc, C + j, ldc);
  }
}
}  // namespace

bool small_gemm(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* W, int64_t ldw, float beta,
                float* C, int64_t ldc) {
  if (m < 1 || m > kSmallGemmRows || n % 8 != 0 || k <= 0 || (beta != 0.0f && beta != 1.0f)) return false;
  const bool acc = beta == 1.0f;
  switch (m) {  // kSmallGemmRows == 8: every row count has its own unrolled kernel
    case 1: small_rows<1>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    case 2: small_rows<2>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    case 3: small_rows<3>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    case 4: small_rows<4>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    case 5: small_rows<5>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    case 6: small_rows<6>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    case 7: small_rows<7>(A, lda, W, ldw, k, n, acc, C, ldc); break;
    default: small_rows<8>(A, lda, W, ldw, k, n, acc, C, ldc); break;
  }
  return true;
}

namespace {
// The stacked rows of `blocks` (each n columns) as paired bf16 panels (gemm.h's kPairedBf16Panels): per panel of 16
// columns (the last may have 8), for each pair of rows i, the 2 x width values (row 2i, row 2i + 1) column by column.
void pack_paired_panels(at::BFloat16* out, const std::vector<Mat<float>>& blocks, int64_t n) {
  std::vector<std::pair<const Mat<float>*, int64_t>> rows;  // the stacked rows: (block, row in it)
  for (const Mat<float>& w : blocks)
    for (int64_t p = 0; p < w.rows; ++p) rows.emplace_back(&w, p);
  const int64_t k = static_cast<int64_t>(rows.size()), depth = k + (k & 1);
  auto value = [&](int64_t r, int64_t j) {
    if (r >= k) return 0.0f;
    const Mat<float>& w = *rows[r].first;
    const int64_t p = rows[r].second;
    return w.trans ? w.p[j * w.ld + p] : w.p[p * w.ld + j];
  };
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t width = std::min<int64_t>(16, n - j0);
    for (int64_t r = 0; r < depth; r += 2) {
      for (int64_t j = 0; j < width; ++j) {
        *out++ = at::BFloat16(value(r, j0 + j));
        *out++ = at::BFloat16(value(r + 1, j0 + j));
      }
    }
  }
}

}  // namespace

#if defined(__AVX512F__)
// Unpack pairs, then 64-bit pairs, then 128-bit lanes twice. A panel of torch's transposed weights is such blocks: a
// scalar copy with a stride of one row per element measured about 8 us for a 128 x 128 W_h, packed on every call.
void transpose_tile(const float* src, int64_t ld, float* out) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    _mm512_storeu_ps(out + j * 16, _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88));
    _mm512_storeu_ps(out + (j + 8) * 16, _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd));
  }
}
#endif

namespace {

template <typename W>
void pack_panels_as(W* out, const std::vector<Mat<float>>& blocks, int64_t n) {
  constexpr bool pairs = std::is_same_v<W, at::BFloat16>;  // 16 bf16 columns as (j, j + 8) pairs: load_row
  auto column = [](int64_t i, int64_t width) { return pairs && width == 16 ? (i / 2) + 8 * (i % 2) : i; };
  for (int64_t j0 = 0; j0 < n; j0 += 16) {  // panels of 16 columns (the last may have 8)
    const int64_t width = std::min<int64_t>(16, n - j0);
    for (const Mat<float>& w : blocks) {  // the blocks' rows one after the other
      const float* const src = w.p;
      const int64_t ld = w.ld, rows = w.rows;
      if (w.trans) {  // column j0 + j is a stored row: read along it, 16 rows at a time where the CPU can transpose
        int64_t p0 = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<W, float>) {
          for (; width == 16 && p0 + 16 <= rows; p0 += 16) transpose_tile(src + j0 * ld + p0, ld, out + p0 * 16);
        }
#endif
        for (int64_t i = 0; i < width; ++i) {
          const float* __restrict__ col = src + (j0 + column(i, width)) * ld;
          for (int64_t p = p0; p < rows; ++p) out[p * width + i] = W(col[p]);
        }
      } else {
        for (int64_t p = 0; p < rows; ++p) {
          const float* __restrict__ row = src + p * ld + j0;
          for (int64_t i = 0; i < width; ++i) out[p * width + i] = W(row[column(i, width)]);
        }
      }
      out += rows * width;
    }
  }
}

template <typename W>
void panel_gemm_of(const W* P, int64_t k, int64_t n, int64_t m, const float* A, int64_t lda, float beta, float* C,
                   int64_t ldc) {
  const bool acc = beta != 0.0f;  // beta is 0 or 1 (the callers' contract)
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t width = std::min<int64_t>(16, n - j0);
    if (width == 16) {
      panel_rows<2>(m, A, lda, P, 16, k, acc, C + j0, ldc);
    } else {
      panel_rows<1>(m, A, lda, P, 8, k, acc, C + j0, ldc);
    }
    P += k * width;
  }
}
}  // namespace

#if defined(__AVX512BF16__) && defined(__AVX512VL__)
namespace {
// One M x 16 (or M x 8: narrow) tile of C = A @ P on paired panels: per pair of rows one load of P, and per row of A
// one broadcast of its bf16 pair and one VDPBF16PS (a pair of exact products summed in float32 into each column).
// U partial sums per row keep enough independent chains for the instruction's latency at small M.
template <int M, bool narrow>
void paired_tile(const uint32_t* A, int64_t lda, const at::BFloat16* P, int64_t pairs, bool acc, float* C,
                 int64_t ldc) {
  constexpr int U = M >= 6 ? 1 : 6 / M;
  using V = std::conditional_t<narrow, __m256, __m512>;
  V c[U][M];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < M; ++i) c[u][i] = V{};
  constexpr int64_t step = narrow ? 16 : 32;  // bf16 values per pair of rows
  auto fma = [](V sum, uint32_t a, const at::BFloat16* w) {
    if constexpr (narrow) {
      return _mm256_dpbf16_ps(sum, (__m256bh)_mm256_set1_epi32(static_cast<int>(a)),
                              (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    } else {
      return _mm512_dpbf16_ps(sum, (__m512bh)_mm512_set1_epi32(static_cast<int>(a)),
                              (__m512bh)_mm512_loadu_si512(w));
    }
  };
  int64_t q = 0;
  for (; q + U <= pairs; q += U) {
    for (int u = 0; u < U; ++u)
      for (int i = 0; i < M; ++i) c[u][i] = fma(c[u][i], A[i * lda + q + u], P + (q + u) * step);
  }
  for (; q < pairs; ++q)
    for (int i = 0; i < M; ++i) c[0][i] = fma(c[0][i], A[i * lda + q], P + q * step);
  for (int i = 0; i < M; ++i) {
    V sum = c[0][i];
    for (int u = 1; u < U; ++u) sum = sum + c[u][i];
    float* out = C + i * ldc;
    if constexpr (narrow) {
      _mm256_storeu_ps(out, acc ? _mm256_add_ps(_mm256_loadu_ps(out), sum) : sum);
    } else {
      _mm512_storeu_ps(out, acc ? _mm512_add_ps(_mm512_loadu_ps(out), sum) : sum);
    }
  }
}

template <bool narrow>
void paired_rows(int64_t m, const uint32_t* A, int64_t lda, const at::BFloat16* P, int64_t pairs, bool acc, float* C,
                 int64_t ldc) {
  for (int64_t i = 0; i < m;) {
    const int64_t rows = std::min<int64_t>(4, m - i);
    const uint32_t* a = A + i * lda;
    float* c = C + i * ldc;
    switch (rows) {
      case 4: paired_tile<4, narrow>(a, lda, P, pairs, acc, c, ldc); break;
      case 3: paired_tile<3, narrow>(a, lda, P, pairs, acc, c, ldc); break;
      case 2: paired_tile<2, narrow>(a, lda, P, pairs, acc, c, ldc); break;
      default: paired_tile<1, narrow>(a, lda, P, pairs, acc, c, ldc); break;
    }
    i += rows;
  }
}

// C (m x n) = A (m x k floats, read as their nearest bf16: bf16.h's operands) @ the paired panels P (+ C when acc).
void paired_panel_gemm(const at::BFloat16* P, int64_t k, int64_t n, int64_t m, const float* A, int64_t lda, bool acc,
                       float* C, int64_t ldc) {
  const int64_t pairs = (k + 1) / 2;
  thread_local std::vector<uint32_t> ab;
  if (static_cast<int64_t>(ab.size()) < m * pairs) ab.resize(m * pairs);
  for (int64_t i = 0; i < m; ++i) {
    const float* a = A + i * lda;
    for (int64_t q = 0; q < pairs; ++q) {
      const uint32_t hi = 2 * q + 1 < k ? bf16_bits(a[2 * q + 1]) : 0u;
      ab[i * pairs + q] = bf16_bits(a[2 * q]) | hi << 16;
    }
  }
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t width = std::min<int64_t>(16, n - j0);
    if (width == 16) {
      paired_rows<false>(m, ab.data(), pairs, P, pairs, acc, C + j0, ldc);
    } else {
      paired_rows<true>(m, ab.data(), pairs, P, pairs, acc, C + j0, ldc);
    }
    P += 2 * pairs * width;
  }
}
}  // namespace
#endif

void pack_panels_into(float* out, const std::vector<Mat<float>>& blocks, int64_t n) { pack_panels_as(out, blocks, n); }
void pack_panels_into(at::BFloat16* out, const std::vector<Mat<float>>& blocks, int64_t n) {
  if constexpr (kPairedBf16Panels) {
    pack_paired_panels(out, blocks, n);
  } else {
    pack_panels_as(out, blocks, n);
  }
}

bool pack_panels(PanelWeights& pw, const float* W, bool trans, int64_t ld, int64_t k, int64_t n) {
  if (n <= 0 || n % 8 != 0 || k <= 0) return false;
  pw.k = k;
  pw.n = n;
  pw.buf.resize(static_cast<size_t>(k * n));
  Mat<float> w;
  w.p = W;
  w.trans = trans;
  w.ld = ld;
  w.rows = k;
  w.cols = n;
  pack_panels_into(pw.buf.data(), {w}, n);
  return true;
}

void panel_gemm_at(const float* P, int64_t k, int64_t n, int64_t m, const float* A, int64_t lda, float beta,
                   float* C, int64_t ldc) {
  panel_gemm_of(P, k, n, m, A, lda, beta, C, ldc);
}
void panel_gemm_at(const at::BFloat16* P, int64_t k, int64_t n, int64_t m, const float* A, int64_t lda, float beta,
                   float* C, int64_t ldc) {
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
  paired_panel_gemm(P, k, n, m, A, lda, beta != 0.0f, C, ldc);
#else
  panel_gemm_of(P, k, n, m, A, lda, beta, C, ldc);
#endif
}

void panel_gemm(const PanelWeights& pw, int64_t m, const float* A, int64_t lda, float beta, float* C, int64_t ldc) {
  panel_gemm_at(pw.buf.data(), pw.k, pw.n, m, A, lda, beta, C, ldc);
}

bool have_blas() { return blas().s != nullptr && blas().d != nullptr; }

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_impl<float>(blas().s, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_impl<double>(blas().d, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace rnnkit
