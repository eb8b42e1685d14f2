// bf16 multiplies through oneDNN's brgemm (see bf16.h).
#include "bf16.h"
#include "gemm.h"

#include <ATen/native/CPUBlas.h>

#include <atomic>

namespace rnnkit {

namespace cpublas = at::native::cpublas;

namespace {
thread_local bool tl_bf16 = false;
std::atomic<bool> units_allowed{true};
constexpr int64_t kTile = 64;  // rows per task of bf16_gemm: oneDNN's brgemm measured fastest at 64 rows (AMX: 4 tiles)

// w (k x n) as a bf16 tensor (torch's round-to-nearest-even cast), rows padded with zeros to even(k).
Tensor rounded(const Mat<float>& w) {
  const Tensor all = w.trans ? at::from_blob(const_cast<float*>(w.p), {w.rows, w.cols}, {1, w.ld}, at::kFloat)
                             : at::from_blob(const_cast<float*>(w.p), {w.rows, w.cols}, {w.ld, 1}, at::kFloat);
  Tensor out = at::zeros({even(w.rows), w.cols}, at::kBFloat16);
  out.narrow(0, 0, w.rows).copy_(all);
  return out;
}

// Columns [c0, c0 + nc) of b (kp x n bf16, row-major) in oneDNN's VNNI layout of width ld (zero-padded): rows 2i and
// 2i + 1 interleaved, element (2i + j, c) at out[(i * ld + c) * 2 + j].
void vnni_block(const uint16_t* b, int64_t kp, int64_t n, int64_t c0, int64_t nc, int64_t ld, uint16_t* out) {
  for (int64_t i = 0; i < kp / 2; ++i) {
    const uint16_t* r0 = b + (2 * i) * n + c0;
    const uint16_t* r1 = r0 + n;
    uint16_t* o = out + i * ld * 2;
    for (int64_t c = 0; c < nc; ++c) o[2 * c] = r0[c], o[2 * c + 1] = r1[c];
    for (int64_t c = nc; c < ld; ++c) o[2 * c] = 0, o[2 * c + 1] = 0;
  }
}

// Whether vnni_block writes what oneDNN's own packing writes (checked once on a small block; else rnnkit asks
// oneDNN to pack every block, a JIT-compiled transform per call).
bool vnni_matches() {
  static const bool same = [] {
    constexpr int64_t kp = 6, ld = 32, nc = 20;
    std::vector<uint16_t> src(kp * ld, 0), ours(kp * ld), theirs(kp * ld);
    for (int64_t i = 0; i < kp * nc; ++i) src[(i / nc) * ld + i % nc] = static_cast<uint16_t>(0x3f80 + i);
    vnni_block(src.data(), kp, ld, 0, nc, ld, ours.data());
    cpublas::pack(kp, ld, ld, ld, at::kBFloat16, at::kBFloat16, src.data(), theirs.data());
    return ours == theirs;
  }();
  return same;
}

}  // namespace

bool bf16_multiply_units() {
  static const bool can = cpublas::could_pack(at::kBFloat16);
  return can && units_allowed.load(std::memory_order_relaxed);
}

bool allow_bf16_units(bool allowed) { return units_allowed.exchange(allowed); }

bool set_bf16_multiplies(bool on) {
  const bool was = tl_bf16;
  tl_bf16 = on;
  return was;
}

bool bf16_multiplies() { return tl_bf16; }

void round_rows_bf16(const float* x, int64_t rows, int64_t cols, int64_t ldx, at::BFloat16* out, int64_t ldo) {
  auto* o = reinterpret_cast<uint16_t*>(out);
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ xr = x + r * ldx;
    uint16_t* __restrict__ orow = o + r * ldo;
    for (int64_t c = 0; c < cols; ++c) orow[c] = bf16_bits(xr[c]);
    for (int64_t c = cols; c < ldo; ++c) orow[c] = 0;
  }
}

void round_to_bf16(const float* x, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t bits = static_cast<uint32_t>(bf16_bits(x[i])) << 16;
    std::memcpy(out + i, &bits, sizeof(float));
  }
}

float* rounded_scratch(int64_t count) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < count) buf.resize(count);
  return buf.data();
}

at::BFloat16* bf16_scratch(int64_t count) {
  thread_local std::vector<at::BFloat16> buf;
  if (static_cast<int64_t>(buf.size()) < count) buf.resize(count);
  return buf.data();
}

Bf16Weights::Bf16Weights(const Mat<float>& w) : k(w.rows), n(w.cols) {
  const int64_t kp = even(k);
  const Tensor b = rounded(w);
  const auto* bits = static_cast<const uint16_t*>(b.data_ptr());
  const bool ours = vnni_matches();
  for (int64_t c0 = 0; c0 < n; c0 += 64) {
    const int64_t nc = std::min<int64_t>(64, n - c0), pad = (nc + 15) / 16 * 16;
    col.push_back(c0);
    width.push_back(nc);
    ld.push_back(pad);
    at.push_back(static_cast<int64_t>(buf.size()));
    buf.resize(buf.size() + kp * pad);
    auto* out = reinterpret_cast<uint16_t*>(buf.data() + at.back());
    if (ours) {
      vnni_block(bits, kp, n, c0, nc, pad, out);
    } else {
      std::vector<uint16_t> src(kp * pad, 0);
      for (int64_t r = 0; r < kp; ++r) std::memcpy(&src[r * pad], bits + r * n + c0, nc * sizeof(uint16_t));
      cpublas::pack(kp, pad, pad, pad, at::kBFloat16, at::kBFloat16, src.data(), out);
    }
  }
}

void Bf16Weights::multiply_block(int64_t b, int64_t m, const at::BFloat16* A, int64_t lda, bool add, float* C,
                                 int64_t ldc) const {
  cpublas::brgemm(m, width[b], even(k), lda, ld[b], ldc, add, A, buf.data() + at[b], C + col[b]);
}

void Bf16Weights::multiply(int64_t m, const at::BFloat16* A, int64_t lda, bool add, float* C, int64_t ldc) const {
  if (m <= 0) return;
  for (size_t b = 0; b < col.size(); ++b) multiply_block(static_cast<int64_t>(b), m, A, lda, add, C, ldc);
  cpublas::brgemm_release();
}

std::vector<Bf16Weights> bf16_chunks(const Mat<float>& w, int64_t gates, int64_t units, const Units& u, int64_t rows,
                                     int64_t steps) {
  std::vector<Bf16Weights> out;
  if (!bf16_multiplies() || !bf16_multiply_units() || rows < kBf16MinRows || steps < kMinPanelSteps) return out;
  out.reserve(u.chunks() * gates);
  for (int64_t c = 0; c < u.chunks(); ++c) {
    for (int64_t q = 0; q < gates; ++q) out.emplace_back(cols_of(w, q * units + u.lo[c], u.hi[c] - u.lo[c]));
  }
  return out;
}

const at::BFloat16* rounded_rows(int64_t m, int64_t k, const float* X, int64_t ldx) {
  at::BFloat16* a = bf16_scratch(m * even(k));
  round_rows_bf16(X, m, k, ldx, a, even(k));
  return a;
}

void bf16_chunk_multiply(const Bf16Weights* blocks, int64_t gates, int64_t wd, int64_t m, const at::BFloat16* A,
                         bool add, float* C, int64_t ldc) {
  for (int64_t q = 0; q < gates; ++q) blocks[q].multiply(m, A, even(blocks[0].k), add, C + q * wd, ldc);
}

void bf16_chunk_multiply(const Bf16Weights* blocks, int64_t gates, int64_t wd, int64_t m, const float* X, int64_t ldx,
                         bool add, float* C, int64_t ldc) {
  bf16_chunk_multiply(blocks, gates, wd, m, rounded_rows(m, blocks[0].k, X, ldx), add, C, ldc);
}

void bf16_gemm(int64_t m, int64_t k, const float* A, bool trans_a, int64_t lda, const Mat<float>& B, bool add,
               float* C, int64_t ldc) {
  if (m <= 0 || B.cols <= 0) return;
  if (!bf16_multiply_units()) {  // the same rounded operands, multiplied in float32
    const int64_t n = B.cols;
    std::vector<float> a(m * k), b(k * n);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < k; ++c) a[r * k + c] = trans_a ? A[c * lda + r] : A[r * lda + c];
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < n; ++c) b[r * n + c] = B.trans ? B.p[c * B.ld + r] : B.p[r * B.ld + c];
    round_to_bf16(a.data(), m * k, a.data());
    round_to_bf16(b.data(), k * n, b.data());
    gemm(false, false, m, n, k, 1.0f, a.data(), std::max<int64_t>(1, k), b.data(), std::max<int64_t>(1, n),
         add ? 1.0f : 0.0f, C, ldc);
    return;
  }
  bf16_gemm(m, rounded_operand(m, k, A, trans_a, lda), B, add, C, ldc);
}

const at::BFloat16* rounded_operand(int64_t m, int64_t k, const float* A, bool trans_a, int64_t lda) {
  const int64_t kp = even(k), tiles = (m + kTile - 1) / kTile;
  // The calling thread's scratch, kept: a fresh buffer per call was zero-filled and faulted in, alone on one thread
  // (about 100 us of a (3200, 128) operand). Its rows are then read by every thread of the multiply.
  at::BFloat16* ab = bf16_scratch(m * kp);
  auto* bits = reinterpret_cast<uint16_t*>(ab);
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    const int64_t r0 = t0 * kTile, r1 = std::min(m, t1 * kTile);
    if (!trans_a) {
      round_rows_bf16(A + r0 * lda, r1 - r0, k, lda, ab + r0 * kp, kp);
      return;
    }
    for (int64_t c = 0; c < kp; ++c) {  // row r of op(A) is column r of A (k x m, row stride lda)
      for (int64_t r = r0; r < r1; ++r) bits[r * kp + c] = c < k ? bf16_bits(A[c * lda + r]) : uint16_t(0);
    }
  });
  return ab;
}

void bf16_gemm(int64_t m, const at::BFloat16* A, const Mat<float>& B, bool add, float* C, int64_t ldc) {
  if (m <= 0 || B.cols <= 0) return;
  const int64_t kp = even(B.rows), tiles = (m + kTile - 1) / kTile;
  const Bf16Weights w(B);
  const int64_t blocks = static_cast<int64_t>(w.col.size());
  at::parallel_for(0, tiles * blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r0 = (i / blocks) * kTile, b = i % blocks;
      w.multiply_block(b, std::min(kTile, m - r0), A + r0 * kp, kp, add, C + r0 * ldc, ldc);
    }
    cpublas::brgemm_release();
  });
}

}  // namespace rnnkit
