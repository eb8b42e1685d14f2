// A bfloat16 layer's multiplies (rnnkit.engine.precision): every multiply of a bf16 layer's kernels reads bf16
// operands and sums their products in float32. The weights and x are bf16 values already; what a step computes in
// float32 and then multiplies (h, the reset-before GRU's r * h, a projection's m; in the backward the d
// pre-activations) is rounded to bf16 for the multiply only, as oneDNN's bf16 RNNs round it. The gates, the carried
// states and everything elementwise stay float32.
//
// Where the CPU has bf16 multiply units, the multiplies run on them: oneDNN's brgemm micro-kernel as torch exports it
// (AMX tiles or AVX512-BF16, whichever the CPU has; what torch's own bf16 LSTM multiplies with). Elsewhere, and for
// steps too small to gain, the same rounded operands are multiplied in float32: the same products, summed in another
// order.
#pragma once

#include "common.h"

namespace rnnkit {

template <typename T>
struct Mat;  // gemm.h, which includes this header
struct Units;

// Whether the calling thread's kernels run a bf16 layer now (set around its calls by engine._functions; returns the
// previous setting), and whether the CPU has bf16 multiply units.
bool set_bf16_multiplies(bool on);
bool bf16_multiplies();
bool bf16_multiply_units();
// Whether the bf16 units may be used (tests turn them off to run the float32 multiplies); returns the previous.
bool allow_bf16_units(bool allowed);

// Steps of fewer rows multiply their rounded operands in float32: a one-row brgemm measured no faster than panels.
constexpr int64_t kBf16MinRows = 2;
// An input projection of fewer multiply-adds runs in float32 (measured: 2.5M, (100, 1, 64, 128)'s, 40 us slower on
// the units, whose call lays W_x out anew).
constexpr int64_t kBf16MinProjection = int64_t(1) << 24;

// f's nearest bf16 (ties to even; NaN stays NaN: rounding could carry it to inf), as its 16 bits.
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

// rows x cols floats (row stride ldx) rounded to bf16 (to nearest even; NaN stays NaN) into out (row stride ldo),
// columns [cols, ldo) zeroed: a K padded to even reads zeros.
void round_rows_bf16(const float* x, int64_t rows, int64_t cols, int64_t ldx, at::BFloat16* out, int64_t ldo);
// count floats rounded to their nearest bf16 value, in float32 (in place when out == x).
void round_to_bf16(const float* x, int64_t count, float* out);
// m x k bf16 rows (contiguous) with rows of even(k) (the bf16 units read K in pairs): x itself for an even k, else
// copied with a zero column into the calling thread's bf16_scratch (valid until it is used again).
const at::BFloat16* even_rows(const at::BFloat16* x, int64_t m, int64_t k);
// The calling thread's scratch (kept between calls): bf16 rows, float rows.
at::BFloat16* bf16_scratch(int64_t count);
float* rounded_scratch(int64_t count);
// K rounded up to even: a VNNI pair of rows.
inline int64_t even(int64_t k) { return k + (k & 1); }

// W (k x n) in oneDNN's VNNI layout, in blocks of up to 64 columns (each padded to a multiple of 16 with zeros; an
// odd k gets a zero row).
struct Bf16Weights {
  std::vector<at::BFloat16> buf;
  std::vector<int64_t> col, width, ld, at;  // per block: first column, columns, packed width, offset in buf
  int64_t k = 0, n = 0;
  explicit Bf16Weights(const Mat<float>& w);
  // C (m x n, ldc) = A (m x even(k) bf16, lda) @ W, + C when add.
  void multiply(int64_t m, const at::BFloat16* A, int64_t lda, bool add, float* C, int64_t ldc) const;
  // The same for block b's columns only (the caller releases the tiles: cpublas::brgemm_release).
  void multiply_block(int64_t b, int64_t m, const at::BFloat16* A, int64_t lda, bool add, float* C,
                      int64_t ldc) const;
};

// A chunk's gate blocks of W (see ChunkGemm) for the bf16 units, [chunk * gates + q]; empty where the step multiplies
// in float32 (no bf16 layer, no units, too few rows, a sequence too short to pay the packing, or one frame).
std::vector<Bf16Weights> bf16_chunks(const Mat<float>& w, int64_t gates, int64_t units, const Units& u, int64_t rows,
                                     int64_t steps);
// C[:, q * wd ...] = X (m x K, ldx) @ the chunk's gate blocks (+ C when add): X rounded to bf16 once.
void bf16_chunk_multiply(const Bf16Weights* blocks, int64_t gates, int64_t wd, int64_t m, const float* X, int64_t ldx,
                         bool add, float* C, int64_t ldc);
// The same on X rounded already (rounded_rows: the calling thread's scratch, m x even(K), valid until its next call).
const at::BFloat16* rounded_rows(int64_t m, int64_t k, const float* X, int64_t ldx);
void bf16_chunk_multiply(const Bf16Weights* blocks, int64_t gates, int64_t wd, int64_t m, const at::BFloat16* A,
                         bool add, float* C, int64_t ldc);
// C (m x n, ldc) = op(A) (m x k: A, or A^T when trans_a, row stride lda) @ B (k x n), + C when add: one multiply over
// all threads, its operands rounded to bf16, float32 sums.
void bf16_gemm(int64_t m, int64_t k, const float* A, bool trans_a, int64_t lda, const Mat<float>& B, bool add,
               float* C, int64_t ldc);
// Its two halves, for one A against several B (the input projection's column blocks): op(A) rounded to bf16, rows
// padded to even(k) (the calling thread's bf16_scratch, valid until it rounds again), then the multiply on the bf16
// units.
const at::BFloat16* rounded_operand(int64_t m, int64_t k, const float* A, bool trans_a, int64_t lda);
void bf16_gemm(int64_t m, const at::BFloat16* A, const Mat<float>& B, bool add, float* C, int64_t ldc);

}  // namespace rnnkit
