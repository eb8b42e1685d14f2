// bf16 multiplies through oneDNN's brgemm (see bf16.h).
#include "bf16.h"
#include "gemm.h"

#include <ATen/native/CPUBlas.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <atomic>

namespace rnnkit {

namespace cpublas = at::native::cpublas;

namespace {
thread_local bool tl_bf16 = false;
std::atomic<bool> units_allowed{true};
constexpr int64_t kTile = 64;  // rows per task of bf16_gemm: oneDNN's brgemm measured fastest at 64 rows (AMX: 4 tiles)

#if defined(__AVX512F__)
// bf16_bits of 16 floats, in the low halves of 32-bit lanes.
inline __m512i bf16_bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
}
#endif

// Columns [c0, c0 + nc) of w (k x n floats, rows padded with zeros to kp = even(k)), rounded to bf16, in oneDNN's
// VNNI layout of width ld: rows 2i and 2i + 1 interleaved, element (2i + j, c) at out[(i * ld + c) * 2 + j]; out
// arrives zeroed (columns [nc, ld) stay so). Read straight from w's floats, along its rows or (trans) along its
// columns: a rounded copy through at::Tensor::copy_ took 1.4-3.5 ms for a transposed (2048, 512) W (a scalar strided
// loop).
void vnni_block(const Mat<float>& w, int64_t c0, int64_t nc, int64_t ld, uint16_t* out) {
  const int64_t k = w.rows;
  auto* pairs = reinterpret_cast<uint32_t*>(out);  // (row 2i, row 2i + 1) of a column: one 32-bit pair
  if (w.trans) {  // column c of W is contiguous: p[c * ld + r]
    auto one_by_one = [&](int64_t ca, int64_t cb, int64_t i0) {  // pairs [i0, ...) of columns [ca, cb)
      for (int64_t c = ca; c < cb; ++c) {
        const float* __restrict__ col = w.p + (c0 + c) * w.ld;
        for (int64_t i = i0; 2 * i < k; ++i) {
          const uint32_t hi = 2 * i + 1 < k ? bf16_bits(col[2 * i + 1]) : 0u;
          pairs[i * ld + c] = bf16_bits(col[2 * i]) | (hi << 16);
        }
      }
    };
    int64_t c = 0;
#if defined(__AVX512F__)
    // 16 columns x 32 rows at a time: each column's 32 floats rounded to 16 pairs, then a 16 x 16 transpose of the
    // pairs (one by one, whose stores fall a row apart, measured about 0.7 ms for a (1536, 512) W_h).
    alignas(64) uint32_t tile[16 * 16], turned[16 * 16];
    for (; c + 16 <= nc; c += 16) {
      int64_t i = 0;
      for (; 2 * i + 32 <= k; i += 16) {
        for (int64_t q = 0; q < 16; ++q) {
          const float* col = w.p + (c0 + c + q) * w.ld + 2 * i;
          const __m256i lo = _mm512_cvtepi32_epi16(bf16_bits16(_mm512_loadu_ps(col)));
          const __m256i hi = _mm512_cvtepi32_epi16(bf16_bits16(_mm512_loadu_ps(col + 16)));
          _mm512_store_si512(tile + q * 16, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
        }
        transpose_tile(reinterpret_cast<const float*>(tile), 16, reinterpret_cast<float*>(turned));
        for (int64_t r = 0; r < 16; ++r) std::memcpy(pairs + (i + r) * ld + c, turned + r * 16, 64);
      }
      one_by_one(c, c + 16, i);  // the rows past the last 32
    }
#endif
    one_by_one(c, nc, 0);
    return;
  }
  for (int64_t i = 0; 2 * i < k; ++i) {
    const float* __restrict__ r0 = w.p + (2 * i) * w.ld + c0;
    const float* __restrict__ r1 = 2 * i + 1 < k ? r0 + w.ld : nullptr;
    uint32_t* __restrict__ o = pairs + i * ld;
    if (r1) {
      for (int64_t c = 0; c < nc; ++c) o[c] = bf16_bits(r0[c]) | (static_cast<uint32_t>(bf16_bits(r1[c])) << 16);
    } else {
      for (int64_t c = 0; c < nc; ++c) o[c] = bf16_bits(r0[c]);
    }
  }
}

// Whether vnni_block writes what oneDNN's own packing writes (checked once on a small block; else rnnkit asks
// oneDNN to pack every block, a JIT-compiled transform per call).
bool vnni_matches() {
  static const bool same = [] {
    constexpr int64_t k = 5, kp = 6, ld = 32, nc = 20;
    std::vector<float> src(k * nc);
    std::vector<uint16_t> rows(kp * ld, 0), ours(kp * ld, 0), theirs(kp * ld);
    for (int64_t i = 0; i < k * nc; ++i) {
      src[i] = static_cast<float>(i + 1);
      rows[(i / nc) * ld + i % nc] = bf16_bits(src[i]);
    }
    Mat<float> w;
    w.p = src.data(), w.ld = nc, w.rows = k, w.cols = nc;
    vnni_block(w, 0, nc, ld, ours.data());
    cpublas::pack(kp, ld, ld, ld, at::kBFloat16, at::kBFloat16, rows.data(), theirs.data());
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
  for (int64_t c0 = 0; c0 < n; c0 += 64) {
    const int64_t nc = std::min<int64_t>(64, n - c0);
    col.push_back(c0);
    width.push_back(nc);
    ld.push_back((nc + 15) / 16 * 16);
    at.push_back(c0 == 0 ? 0 : at.back() + kp * ld[ld.size() - 2]);
  }
  buf.resize(col.empty() ? 0 : at.back() + kp * ld.back());  // zeros: the padding
  const bool ours = vnni_matches();
  const int64_t blocks = static_cast<int64_t>(col.size());
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, kp * 64));  // a fork pays
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      auto* out = reinterpret_cast<uint16_t*>(buf.data() + at[b]);
      if (ours) {
        vnni_block(w, col[b], width[b], ld[b], out);
        continue;
      }
      std::vector<uint16_t> src(kp * ld[b], 0);  // the block's rounded rows, for oneDNN's own packing
      for (int64_t r = 0; r < k; ++r)
        for (int64_t c = 0; c < width[b]; ++c)
          src[r * ld[b] + c] = bf16_bits(w.trans ? w.p[(col[b] + c) * w.ld + r] : w.p[r * w.ld + col[b] + c]);
      cpublas::pack(kp, ld[b], ld[b], ld[b], at::kBFloat16, at::kBFloat16, src.data(), out);
    }
  });
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

const at::BFloat16* even_rows(const at::BFloat16* x, int64_t m, int64_t k) {
  if (k % 2 == 0) return x;
  at::BFloat16* out = bf16_scratch(m * (k + 1));
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / (k + 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::memcpy(out + r * (k + 1), x + r * k, sizeof(at::BFloat16) * k);
      out[r * (k + 1) + k] = at::BFloat16(0.0f);
    }
  });
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
