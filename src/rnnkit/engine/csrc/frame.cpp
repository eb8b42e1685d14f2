// One frame of a stack of layers (rnnkit.engine.frame): x (B, I) through every layer's forward kernel for a single
// step, in one call. A streamed frame then costs its multiplies (BLAS on the weights as stored: gemm.h's one_frame)
// and not one dispatch, argument check and schedule per layer; the step math is the families' own, unchanged.
//
// The stack is described by flat lists, layer after layer:
//   desc:    the family (0 lstm, 1 lnlstm, 2 gru, 3 rnn), then its int options:
//            lstm, lnlstm: gate_order (4 block indices of i, g, f, o);  gru: reset_after;  rnn: relu
//   weights: lstm: w_x, bias, w_h, peep, w_proj;  lnlstm: w_x, bias, w_h, gamma, beta;
//            gru: w_x, bias_x, w_h, bias_h, w_xn, w_hn;  rnn: w_x, bias, w_h
//            (the family kernel's arguments of the same names, ops.h; an empty tensor for an absent optional one)
//   states:  lstm, lnlstm: h (B, P), c (B, H);  gru, rnn: h (B, H)
//   scalars: lstm: forget_bias, cell_clip, proj_clip;  lnlstm: forget_bias, eps;  gru, rnn: none
// Returns {y (B, O) of the top layer, then every layer's next states in the order of `states`}. No masks: a frame is
// inference (dropout off). stacked = n > 0: the states are given as n tensors (layers, B, size) instead (torch.nn's
// h_0, c_0: part j of layer l is states[j][l]) and returned so.
//
// Packed layers (float32, every width a multiple of 8): the weights re-laid out once by frame_pack into 16-column
// panels per chunk of units, as the sequence kernels lay them out per call (gemm.h), kept by the caller between
// frames. A frame of packed layers is one parallel region (Team): each thread multiplies [x | h] by its own chunks'
// panels (which stay in its core's cache from frame to frame) and updates their units with the family's equations
// (lstm.h, gru.h); the threads meet at a barrier once per layer (twice for a projection or the reset-before GRU).
// In a stack with unpacked layers, each packed multiply is a parallel region of its own. A packed layer
// writes its next states where they are returned (stacked: into the returned parts) and the next layer reads its
// h there; its temporaries live in a per-thread scratch kept between frames, so a frame allocates only its results.
// bfloat16 (a bf16 model, every layer packed): the panels hold the bf16 weights (frame_pack(bf16=True): half the bytes
// a frame reads); the multiplies read bf16 operands (h, r * h and m rounded for them) and sum in float32 (with the
// CPU's bf16 dot products where it has them: gemm.h's paired panels), the gates and state updates are float32, as on
// the sequence path (bf16.h, engine/precision.py). x and the states are read in their dtype (bf16 or float32: a
// stream carries float32 states) and written back in it, each layer's output rounded once to x's dtype for the next
// layer and for y.
//   desc:    10 lstm: gate_order (4), chunks, proj chunks;  12 gru: reset_after, chunks;  13 rnn: relu, chunks
//   weights: lstm: W (packed [W_x; W_h], 4 gates), bias (4H), peep or empty, W_proj (packed, 1 gate) or empty
//            gru: W_rz (packed [W_x; W_h] r, z), W_xn (packed), W_hn (packed), b_rz (2H, both biases), b_xn, b_hn
//            rnn: W (packed [W_x; W_h]), bias (H)
//   states and scalars: as the unpacked family's.
#include "gru.h"
#include "lstm.h"
#include "ops.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <omp.h>

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

namespace rnnkit {
namespace {

OptT present(const Tensor& t) { return t.numel() ? OptT(t) : OptT(); }

// Chunk c of `chunks` over `units` (a multiple of 8): units [lo, hi), both multiples of 8 (split_units' rule).
Units frame_units(int64_t units, int64_t chunks) {
  Units u;
  for (int64_t c = 0; c < chunks; ++c) {
    u.lo.push_back((units * c / chunks) / 8 * 8);
    u.hi.push_back(c + 1 == chunks ? units : (units * (c + 1) / chunks) / 8 * 8);
  }
  return u;
}

// Packed weights of `gates` blocks of `units` columns over k rows, float32 or bfloat16: chunk c's gate q at
// offset k * (gates * lo + q * w).
struct Packed {
  const void* p;
  bool bf16;
  int64_t k;
  int64_t gates;
  // C (m x w, ldc) = A (m x k, lda) @ chunk c's gate q.
  void mul(const Units& u, int64_t c, int64_t q, int64_t m, const float* A, int64_t lda, float* C, int64_t ldc) const {
    const int64_t w = u.hi[c] - u.lo[c], off = panel_depth(k, bf16) * (gates * u.lo[c] + q * w);
    if (bf16) {
      panel_gemm_at(static_cast<const at::BFloat16*>(p) + off, k, w, m, A, lda, 0.0f, C, ldc);
    } else {
      panel_gemm_at(static_cast<const float*>(p) + off, k, w, m, A, lda, 0.0f, C, ldc);
    }
  }
};

Packed packed_of(const Tensor& t, int64_t k, int64_t gates, int64_t units) {
  const bool bf16 = t.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16 || t.scalar_type() == at::kFloat) && t.is_contiguous() &&
                  t.numel() == panel_depth(k, bf16) * gates * units,
              "rnnkit frame_forward: packed weights of ", k, " x ", gates * units, " float32 or bfloat16 expected, got ",
              t.numel(), " (", t.scalar_type(), ")");
  return {t.data_ptr(), bf16, k, gates};
}

// A packed layer's bias (or summed biases): `values` float32, contiguous.
const float* bias_of(const Tensor& t, int64_t values) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == values,
              "rnnkit frame_forward: expected a float32 bias of ", values, " values, got ", t.sizes(), " (",
              t.scalar_type(), ")");
  return t.data_ptr<float>();
}

// The frame's scratch (the joined [x | h], the gates, a projection's m, the reset-before GRU's r * h, float32 copies
// of bfloat16 rows): kept by the calling thread from frame to frame, so that a frame allocates only its results.
float* scratch(int64_t floats) {
  static thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(floats);
  return buf.data();
}

// Rows (B, width) row-major of a packed layer's input or state: float32, or bfloat16 (a bf16 model's frame, read
// widened, written rounded once).
struct Ptr {
  void* p = nullptr;
  bool bf16 = false;
};

void read_rows(float* dst, Ptr src, int64_t count) {
  if (!src.bf16) {
    std::memcpy(dst, src.p, sizeof(float) * count);
    return;
  }
  const at::BFloat16* s = static_cast<const at::BFloat16*>(src.p);
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<float>(s[i]);
}

void write_rows(Ptr dst, const float* src, int64_t count) {
  if (!dst.bf16) {
    if (dst.p != src) std::memcpy(dst.p, src, sizeof(float) * count);
    return;
  }
  at::BFloat16* d = static_cast<at::BFloat16*>(dst.p);
  for (int64_t i = 0; i < count; ++i) d[i] = at::BFloat16(src[i]);
}

// [x | h] (B, I + R) into a: the rows every chunk's multiply reads.
// bf16: rounded to bf16 values, the operand a bf16 layer multiplies (bf16.h).
void join_rows(float* a, Ptr x, int64_t I, Ptr h, int64_t R, int64_t B, bool bf16) {
  const int64_t size = x.bf16 ? 2 : 4, hsize = h.bf16 ? 2 : 4;
  for (int64_t r = 0; r < B; ++r) {
    read_rows(a + r * (I + R), {static_cast<char*>(x.p) + r * I * size, x.bf16}, I);
    read_rows(a + r * (I + R) + I, {static_cast<char*>(h.p) + r * R * hsize, h.bf16}, R);
  }
  if (bf16) round_to_bf16(a, B * (I + R), a);
}

// A packed layer's rows: x (B, I) in, its states in and out.
struct Rows {
  int64_t B, I;
  Ptr x;
  std::vector<Ptr> in, out;
};

// Where a layer computes an output (count floats): the output's own rows when float32, else float32 scratch at `spare`
// (then rounded into the output by write_rows).
float* out_floats(Ptr out, float* spare) { return out.bf16 ? spare : static_cast<float*>(out.p); }

// The input state rows as float32: the rows themselves, or widened into `spare`.
const float* in_floats(Ptr in, float* spare, int64_t count) {
  if (!in.bf16) return static_cast<const float*>(in.p);
  read_rows(spare, in, count);
  return spare;
}

// The threads a frame's packed layers run on. Alone (size 1), a layer's multiply runs its chunks in a parallel region
// of their own (for_chunks). In the frame's one region (frame_forward: every layer packed), thread `id` takes chunks
// id, id + size, ... of every multiply, the same ones at every phase and frame, and the threads meet (a barrier, a
// third of a region's start and end) where a layer reads another chunk's results: r * h, a projection's m, and the
// next layer's input.
struct Team {
  int64_t id = 0, size = 1;
  template <typename F>
  void chunks(const Units& u, const F& f) const {
    if (size == 1) {
      for_chunks(u, f);
      return;
    }
    for (int64_t c = id; c < u.chunks(); c += size) f(c);
  }
  void meet() const {
    if (size > 1) {
#pragma omp barrier
    }
  }
};

// Columns [lo, lo + wd) of rows (B, width) from float32 src into dst, in dst's dtype: a chunk's share of an output
// (nothing to do when dst is src: a float32 output computed in place).
void write_cols(Ptr dst, const float* src, int64_t B, int64_t width, int64_t lo, int64_t wd) {
  if (!dst.bf16 && dst.p == src) return;
  const int64_t size = dst.bf16 ? 2 : 4;
  for (int64_t r = 0; r < B; ++r) {
    write_rows({static_cast<char*>(dst.p) + (r * width + lo) * size, dst.bf16}, src + r * width + lo, wd);
  }
}

// Columns [lo, lo + wd) of rows (B, width) rounded to bf16 in place (a chunk's share of a multiply's operand).
void round_cols(float* p, int64_t B, int64_t width, int64_t lo, int64_t wd) {
  for (int64_t r = 0; r < B; ++r) round_to_bf16(p + r * width + lo, wd, p + r * width + lo);
}

// A packed LSTM layer: h1 (= y), c1. Made (its arguments checked) before it runs; run by every thread of a team.
struct LstmPacked {
  Rows io;
  int64_t R, H;
  Packed P, Pp{};
  const float *b, *peep;
  std::array<int64_t, 4> order;
  Units u, up;
  float fb, cclip, pclip;
  bool proj;
  LstmPacked(Rows io_, int64_t R_, int64_t H_, const Tensor& w, const Tensor& bias, const Tensor& peep_,
             const Tensor& w_proj, at::IntArrayRef order_, int64_t chunks, int64_t chunks_p, float fb_, float cclip_,
             float pclip_)
      : io(std::move(io_)), R(R_), H(H_), P(packed_of(w, io.I + R_, 4, H_)), b(bias_of(bias, 4 * H_)),
        peep(peep_.numel() ? peep_.data_ptr<float>() : nullptr), order{order_[0], order_[1], order_[2], order_[3]},
        u(frame_units(H_, chunks)), fb(fb_), cclip(cclip_), pclip(pclip_), proj(w_proj.numel() > 0) {
    TORCH_CHECK(proj || R == H, "rnnkit frame_forward: an LSTM without projection has h as wide as c, got ", R,
                " and ", H);
    if (proj) Pp = packed_of(w_proj, H, 1, R), up = frame_units(R, chunks_p);
  }
  int64_t shared_floats() const { return proj ? io.B * H : 0; }  // m, read whole by every projection chunk
  void run(const Team& team, float* shared) const {
    const int64_t B = io.B, I = io.I, K = I + R, G4 = 4 * H;
    // this thread's scratch: [x | h], the gates, then float32 rows of bf16 c_0, h_1, c_1
    float* a = scratch(B * K + B * G4 + B * H + B * R + B * H);
    float *sp = a + B * K, *spare = sp + B * G4;
    join_rows(a, io.x, I, io.in[0], R, B, P.bf16);
    const float* cp = in_floats(io.in[1], spare, B * H);
    float *hp = out_floats(io.out[0], spare + B * H), *cn = out_floats(io.out[1], spare + B * H + B * R);
    float* mp = proj ? shared : hp;
    team.chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
      for (int64_t q = 0; q < 4; ++q) P.mul(u, c, q, B, a, K, sp + 4 * lo + q * wd, G4);
      for (int64_t r = 0; r < B; ++r) {
        float* gate[4];
        for (int k = 0; k < 4; ++k) {
          float* __restrict__ g = sp + r * G4 + 4 * lo + order[k] * wd;
          const float* __restrict__ bk = b + order[k] * H + lo;
          for (int64_t j = 0; j < wd; ++j) g[j] += bk[j];
          gate[k] = g;
        }
        lstm_units(gate, cp + r * H + lo, cn + r * H + lo, mp + r * H + lo, peep ? peep + lo : nullptr, H, wd, fb,
                   cclip);
      }
      write_cols(io.out[1], cn, B, H, lo, wd);
      if (!proj) write_cols(io.out[0], hp, B, H, lo, wd);
      if (proj && Pp.bf16) round_cols(mp, B, H, lo, wd);
    });
    if (!proj) return;
    team.meet();  // h = clip(m @ W_proj) reads every unit of m: split over the projection's outputs
    team.chunks(up, [&](int64_t c) {
      const int64_t lo = up.lo[c], wd = up.hi[c] - up.lo[c];
      Pp.mul(up, c, 0, B, mp, H, hp + lo, R);
      if (pclip > 0.0f) {
        for (int64_t r = 0; r < B; ++r)
          for (int64_t j = 0; j < wd; ++j) hp[r * R + lo + j] = std::min(std::max(hp[r * R + lo + j], -pclip), pclip);
      }
      write_cols(io.out[0], hp, B, R, lo, wd);
    });
  }
};

// A packed GRU layer (both maths): h1 (= y). Each chunk's r, z, x_n, a_n side by side in the gates' rows.
struct GruPacked {
  Rows io;
  int64_t H;
  Packed Prz, Pxn, Phn;
  const float *brz, *bxn, *bhn;
  bool reset_after;
  Units u;
  GruPacked(Rows io_, int64_t H_, const Tensor& w_rz, const Tensor& w_xn, const Tensor& w_hn, const Tensor& b_rz,
            const Tensor& b_xn, const Tensor& b_hn, bool reset_after_, int64_t chunks)
      : io(std::move(io_)), H(H_), Prz(packed_of(w_rz, io.I + H_, 2, H_)), Pxn(packed_of(w_xn, io.I, 1, H_)),
        Phn(packed_of(w_hn, H_, 1, H_)), brz(bias_of(b_rz, 2 * H_)), bxn(bias_of(b_xn, H_)), bhn(bias_of(b_hn, H_)),
        reset_after(reset_after_), u(frame_units(H_, chunks)) {}
  int64_t shared_floats() const { return reset_after ? 0 : io.B * H; }  // r * h, read whole by the candidate
  void run(const Team& team, float* rh) const {
    const int64_t B = io.B, I = io.I, K = I + H, G4 = 4 * H;
    // this thread's scratch: [x | h], the gates, float32 rows of bf16 h_0 and h_1
    float* a = scratch(B * K + B * G4 + 2 * B * H);
    float *sp = a + B * K, *spare = sp + B * G4;
    join_rows(a, io.x, I, io.in[0], H, B, Prz.bf16);
    const float* hp = in_floats(io.in[0], spare, B * H);
    float* yp = out_floats(io.out[0], spare + B * H);
    team.chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
      float* s = sp + 4 * lo;
      for (int64_t q = 0; q < 2; ++q) Prz.mul(u, c, q, B, a, K, s + q * wd, G4);
      Pxn.mul(u, c, 0, B, a, K, s + 2 * wd, G4);
      if (reset_after) Phn.mul(u, c, 0, B, a + I, K, s + 3 * wd, G4);
      for (int64_t r = 0; r < B; ++r) {
        float *__restrict__ rg = s + r * G4, *__restrict__ z = rg + wd, *__restrict__ nn = rg + 2 * wd;
        for (int64_t j = 0; j < wd; ++j) {
          rg[j] += brz[lo + j];
          z[j] += brz[H + lo + j];
        }
        sigmoid_inplace(rg, wd);
        sigmoid_inplace(z, wd);
        if (reset_after) {
          float* __restrict__ an = rg + 3 * wd;
          for (int64_t j = 0; j < wd; ++j) an[j] += bhn[lo + j];
          gru_candidate_after(nn, bxn + lo, rg, an, wd);
          gru_blend(yp + r * H + lo, nn, z, hp + r * H + lo, wd);
        } else {
          for (int64_t j = 0; j < wd; ++j) rh[r * H + lo + j] = rg[j] * hp[r * H + lo + j];
        }
      }
      if (reset_after) write_cols(io.out[0], yp, B, H, lo, wd);
      if (!reset_after && Phn.bf16) round_cols(rh, B, H, lo, wd);
    });
    if (reset_after) return;
    team.meet();  // the candidate reads r * h of every unit
    team.chunks(u, [&](int64_t c) {  // (each thread's chunks as above: their gates are in its scratch)
      const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
      float* s = sp + 4 * lo;
      Phn.mul(u, c, 0, B, rh, H, s + 3 * wd, G4);
      for (int64_t r = 0; r < B; ++r) {
        float* rg = s + r * G4;
        gru_candidate_before(rg + 2 * wd, rg + 3 * wd, bxn + lo, wd);
        gru_blend(yp + r * H + lo, rg + 2 * wd, rg + wd, hp + r * H + lo, wd);
      }
      write_cols(io.out[0], yp, B, H, lo, wd);
    });
  }
};

// A packed Elman layer: h1 (= y), h' = act([x | h] @ [W_x; W_h] + b).
struct RnnPacked {
  Rows io;
  int64_t H;
  Packed P;
  const float* b;
  bool relu;
  Units u;
  RnnPacked(Rows io_, int64_t H_, const Tensor& w, const Tensor& bias, bool relu_, int64_t chunks)
      : io(std::move(io_)), H(H_), P(packed_of(w, io.I + H_, 1, H_)), b(bias_of(bias, H_)), relu(relu_),
        u(frame_units(H_, chunks)) {}
  int64_t shared_floats() const { return 0; }
  void run(const Team& team, float*) const {
    const int64_t B = io.B, I = io.I, K = I + H;
    float* a = scratch(B * K + B * H);
    join_rows(a, io.x, I, io.in[0], H, B, P.bf16);
    float* yp = out_floats(io.out[0], a + B * K);
    team.chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
      P.mul(u, c, 0, B, a, K, yp + lo, H);
      for (int64_t r = 0; r < B; ++r) {
        float* __restrict__ y = yp + r * H + lo;
        for (int64_t j = 0; j < wd; ++j) y[j] += b[lo + j];
        if (relu) {
          for (int64_t j = 0; j < wd; ++j) y[j] = std::max(y[j], 0.0f);
        } else {
          tanh_inplace(y, wd);
        }
      }
      write_cols(io.out[0], yp, B, H, lo, wd);
    });
  }
};

// A frame of packed layers only, with more than one chunk somewhere: worth one parallel region (Team).
bool one_region(at::IntArrayRef desc) {
  bool split = false;
  for (size_t d = 0; d < desc.size();) {
    if (desc[d] == 10 && d + 6 < desc.size()) {
      split = split || desc[d + 5] > 1 || desc[d + 6] > 1;
      d += 7;
    } else if ((desc[d] == 12 || desc[d] == 13) && d + 2 < desc.size()) {
      split = split || desc[d + 2] > 1;
      d += 3;
    } else {
      return false;
    }
  }
  return split && at::get_num_threads() > 1 && !at::in_parallel_region();
}

// Shared rows of a frame's team (r * h, a projection's m), kept by the calling thread between frames.
float* shared_scratch(int64_t floats) {
  static thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(floats);
  return buf.data();
}

// Where the frame reads and writes the layers' states, numbered k in the description's order (layer after layer,
// part after part): the given (B, size) tensors (new ones returned), or stacked = n > 0, torch.nn's h_0 and c_0: n
// tensors (layers, B, size), state k being row block k / n of part k % n, returned stacked alike (written in place of
// new parts, so a packed layer writes its states where they are returned).
struct StateIO {
  at::TensorList given;
  int64_t stacked;
  std::vector<Tensor> parts, out;  // stacked: the n returned parts; else the returned state k
  StateIO(at::TensorList g, int64_t n) : given(g), stacked(n) {
    if (n <= 0) {
      out.resize(g.size());
      return;
    }
    TORCH_CHECK(static_cast<int64_t>(g.size()) == n, "rnnkit frame_forward: expected ", n, " stacked states, got ",
                g.size());
    for (const Tensor& t : g) {
      TORCH_CHECK(t.dim() == 3 && t.size(0) == g[0].size(0) && t.is_contiguous(),
                  "rnnkit frame_forward: expected contiguous stacked states (layers, B, size), got ", t.sizes());
      parts.push_back(at::empty_like(t));
    }
  }
  size_t count() const { return stacked > 0 ? static_cast<size_t>(given[0].size(0) * stacked) : given.size(); }
  // State k's rows in a tensor (B, size) at `base` (given[k % n] or its returned part).
  char* at_row(const Tensor& whole, size_t k) const {
    return static_cast<char*>(whole.data_ptr()) + (k / stacked) * whole.size(1) * whole.size(2) * whole.element_size();
  }
  // State k as a (B, size) tensor, for the family kernels.
  Tensor view(size_t k) const {
    if (stacked <= 0) return given[k];
    const Tensor& g = given[k % stacked];
    return at::from_blob(at_row(g, k), {g.size(1), g.size(2)}, g.options());
  }
  // State k read by a packed layer: rows (B, width), float32 or bfloat16.
  Ptr in(size_t k, int64_t rows, int64_t width) const {
    const Tensor& t = stacked > 0 ? given[k % stacked] : given[k];
    const int64_t r = t.size(t.dim() - 2), w = t.size(t.dim() - 1);
    const bool bf16 = t.scalar_type() == at::kBFloat16;
    TORCH_CHECK((bf16 || t.scalar_type() == at::kFloat) && t.is_contiguous() && r == rows && w == width,
                "rnnkit frame_forward: expected a state of shape (", rows, ", ", width, ") float32 or bfloat16, got ",
                t.sizes(), " (", t.scalar_type(), ")");
    return {stacked > 0 ? at_row(t, k) : t.data_ptr(), bf16};
  }
  // Where a packed layer writes state k (rows, width), in the given state's dtype: its place in the returned part, or
  // a new tensor.
  Ptr write(size_t k, int64_t rows, int64_t width) {
    const Tensor& like = stacked > 0 ? given[k % stacked] : given[k];
    const bool bf16 = like.scalar_type() == at::kBFloat16;
    if (stacked > 0) return {at_row(parts[k % stacked], k), bf16};
    out[k] = at::empty({rows, width}, like.options());
    return {out[k].data_ptr(), bf16};
  }
  // A family kernel's next state k.
  void put(size_t k, const Tensor& next) {
    if (stacked <= 0) {
      out[k] = next;
      return;
    }
    const Tensor& part = parts[k % stacked];
    const Tensor state = next.contiguous();
    TORCH_CHECK(state.numel() == part.size(1) * part.size(2) && state.scalar_type() == part.scalar_type(),
                "rnnkit frame_forward: a layer's next state ", state.sizes(), " does not fit its stacked part ",
                part.sizes());
    std::memcpy(at_row(part, k), state.data_ptr(), state.numel() * state.element_size());
  }
};

// Reads the flat lists in order, checking that each holds what the description asks for.
struct Cursor {
  at::IntArrayRef desc;
  at::TensorList weights;
  size_t states;
  at::ArrayRef<double> scalars;
  size_t d = 0, w = 0, s = 0, f = 0;
  at::IntArrayRef ints(size_t n) {
    TORCH_CHECK(d + n <= desc.size(), "rnnkit frame_forward: desc ends inside a layer's options");
    d += n;
    return desc.slice(d - n, n);
  }
  const Tensor& weight() {
    TORCH_CHECK(w < weights.size(), "rnnkit frame_forward: fewer weights than the description needs");
    return weights[w++];
  }
  size_t state() {  // the state's number k (StateIO)
    TORCH_CHECK(s < states, "rnnkit frame_forward: fewer states than the description needs");
    return s++;
  }
  double scalar() {
    TORCH_CHECK(f < scalars.size(), "rnnkit frame_forward: fewer scalars than the description needs");
    return scalars[f++];
  }
};

}  // namespace

Tensor frame_pack(at::TensorList mats, int64_t units, int64_t gates, int64_t chunks, bool bf16) {
  TORCH_CHECK(units % 8 == 0 && chunks >= 1, "rnnkit frame_pack: units must be a multiple of 8, got ", units);
  std::vector<Mat<float>> blocks;
  int64_t k = 0;
  for (const Tensor& m : mats) {
    TORCH_CHECK(m.scalar_type() == at::kFloat && m.dim() == 2 && m.size(1) == gates * units,
                "rnnkit frame_pack: expected float32 (rows, ", gates * units, ") blocks, got ", m.sizes());
    blocks.push_back(mat_of<float>(m));
    k += m.size(0);
  }
  const int64_t depth = panel_depth(k, bf16);
  Tensor out = at::empty({depth * gates * units}, mats[0].options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  const Units u = frame_units(units, chunks);
  for (int64_t c = 0; c < u.chunks(); ++c) {
    const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
    for (int64_t q = 0; q < gates; ++q) {
      std::vector<Mat<float>> cols;
      for (const Mat<float>& b : blocks) cols.push_back(cols_of(b, q * units + lo, wd));
      const int64_t off = depth * (gates * lo + q * wd);  // (Packed's layout)
      if (bf16) {
        pack_panels_into(out.data_ptr<at::BFloat16>() + off, cols, wd);
      } else {
        pack_panels_into(out.data_ptr<float>() + off, cols, wd);
      }
    }
  }
  return out;
}

int64_t frame_chunks(int64_t units, int64_t rows, int64_t k, int64_t gates) {
  return units % 8 ? 1 : split_units(units, rows, k, gates).chunks();
}

std::vector<Tensor> frame_forward(const Tensor& x, at::TensorList weights, at::TensorList given,
                                  at::IntArrayRef desc, at::ArrayRef<double> scalars, int64_t stacked) {
  TORCH_CHECK(x.dim() == 2, "rnnkit frame_forward: expected x of shape (batch, features), got ", x.dim(), "-D");
  StateIO st(given, stacked);
  const int64_t B = x.size(0);
  Tensor bs;  // the family kernels' batch sizes: one step of every row (made for the first unpacked layer)
  Cursor in{desc, weights, st.count(), scalars};
  const std::nullopt_t none = std::nullopt;
  // The layer's input: a tensor (x, or a family kernel's output), or a packed layer's rows (its h, where it was
  // written: the next layer reads it there, in the state's dtype).
  Tensor h = x.contiguous();
  Ptr rows;
  int64_t width = x.size(1);
  auto input = [&]() -> Tensor {  // the input as a tensor, for a family kernel (a float stack: no bf16 rows)
    TORCH_CHECK(!rows.bf16, "rnnkit frame_forward: a bfloat16 frame runs packed layers only");
    return rows.p ? at::from_blob(rows.p, {B, width}, x.options()) : h;
  };
  auto packed_rows = [&](size_t n_states, const std::vector<int64_t>& widths) {
    const bool bf16 = h.scalar_type() == at::kBFloat16;
    TORCH_CHECK(bf16 || h.scalar_type() == at::kFloat, "rnnkit frame_forward: packed layers run float32 or bfloat16, "
                "got ", h.scalar_type());
    Rows io{B, width, rows.p ? rows : Ptr{h.data_ptr(), bf16}, {}, {}};
    for (size_t j = 0; j < n_states; ++j) {
      const size_t k = in.state();
      io.in.push_back(st.in(k, B, widths[j]));
      io.out.push_back(st.write(k, B, widths[j]));
    }
    return io;
  };
  // One region for a frame of packed layers (Team): the layers are made (their arguments checked, their outputs
  // placed) in order here, and run after the loop; otherwise each runs as it is made. (A bf16 frame's layers round
  // their multiplies' operands themselves, so a layer's float32 output rows, a stream's state, serve as they are.)
  const bool region = one_region(desc);
  std::vector<std::function<void(const Team&, float*)>> jobs;
  int64_t shared = 0;
  auto run = [&](auto&& layer) {
    rows = layer.io.out[0];
    if (!region) {
      layer.run(Team{}, shared_scratch(layer.shared_floats()));
      return;
    }
    shared = std::max(shared, layer.shared_floats());
    jobs.emplace_back([layer = std::move(layer)](const Team& team, float* buf) { layer.run(team, buf); });
  };
  while (in.d < desc.size()) {
    const int64_t family = in.ints(1)[0];
    if (family == 10) {
      const at::IntArrayRef order = in.ints(4);
      const at::IntArrayRef chunks = in.ints(2);
      const Tensor &w = in.weight(), &bias = in.weight(), &peep = in.weight(), &w_proj = in.weight();
      const int64_t H = bias.numel() / 4, R = w_proj.numel() ? w_proj.numel() / std::max<int64_t>(1, H) : H;
      Rows io = packed_rows(2, {R, H});
      const float fb = in.scalar(), cclip = in.scalar(), pclip = in.scalar();
      run(LstmPacked(std::move(io), R, H, w, bias, peep, w_proj, order, chunks[0], chunks[1], fb, cclip, pclip));
      width = R;
      continue;
    }
    if (family == 12 || family == 13) {
      const at::IntArrayRef ints = in.ints(2);
      const Tensor& w = in.weight();
      if (family == 12) {
        const Tensor &w_xn = in.weight(), &w_hn = in.weight();
        const Tensor &b_rz = in.weight(), &b_xn = in.weight(), &b_hn = in.weight();
        const int64_t units = b_xn.numel();
        Rows io = packed_rows(1, {units});
        run(GruPacked(std::move(io), units, w, w_xn, w_hn, b_rz, b_xn, b_hn, ints[0] != 0, ints[1]));
        width = units;
      } else {
        const Tensor& bias = in.weight();
        const int64_t units = bias.numel();
        Rows io = packed_rows(1, {units});
        run(RnnPacked(std::move(io), units, w, bias, ints[0] != 0, ints[1]));
        width = units;
      }
      continue;
    }
    std::vector<Tensor> r;
    const Tensor layer_in = input();
    if (!bs.defined()) {
      bs = at::empty({1}, x.options().dtype(at::kLong));
      bs.data_ptr<int64_t>()[0] = B;
    }
    if (family == 0 || family == 1) {
      const at::IntArrayRef order = in.ints(4);
      const Tensor &w_x = in.weight(), &bias = in.weight(), &w_h = in.weight(), &a = in.weight(), &b = in.weight();
      const size_t kh = in.state(), kc = in.state();
      const double fb = in.scalar();
      if (family == 0) {
        const double cell_clip = in.scalar(), proj_clip = in.scalar();
        r = lstm_forward(layer_in, w_x, present(bias), bs, st.view(kh), st.view(kc), w_h, present(a), present(b),
                         none, none, order, fb, cell_clip, proj_clip, false, none);
      } else {
        r = lnlstm_forward(layer_in, w_x, present(bias), bs, st.view(kh), st.view(kc), w_h, a, b, none, none, order,
                           fb, in.scalar(), false, none);
      }
      st.put(kh, r[1]);
      st.put(kc, r[2]);
    } else if (family == 2) {
      const bool reset_after = in.ints(1)[0] != 0;
      const Tensor &w_x = in.weight(), &bias_x = in.weight(), &w_h = in.weight(), &bias_h = in.weight();
      const Tensor &w_xn = in.weight(), &w_hn = in.weight();
      const size_t k = in.state();
      r = gru_forward(layer_in, w_x, present(bias_x), bs, st.view(k), w_h, present(bias_h), present(w_xn),
                      present(w_hn), none, none, reset_after, false);
      st.put(k, r[1]);
    } else {
      TORCH_CHECK(family == 3, "rnnkit frame_forward: unknown family ", family,
                  " (0 lstm, 1 lnlstm, 2 gru, 3 rnn; packed: 10 lstm, 12 gru, 13 rnn)");
      const bool relu = in.ints(1)[0] != 0;
      const Tensor &w_x = in.weight(), &bias = in.weight(), &w_h = in.weight();
      const size_t k = in.state();
      r = rnn_forward(layer_in, w_x, present(bias), bs, st.view(k), w_h, none, relu, false, none);
      st.put(k, r[1]);
    }
    h = r[0], rows = Ptr(), width = h.size(1);
  }
  TORCH_CHECK(in.w == weights.size() && in.s == st.count() && in.f == scalars.size(),
              "rnnkit frame_forward: more weights, states or scalars than the description uses");
  if (!jobs.empty()) {
    float* buf = shared_scratch(shared);
#pragma omp parallel num_threads(static_cast<int>(at::get_num_threads()))
    {
      const Team team{omp_get_thread_num(), omp_get_num_threads()};
      for (size_t j = 0; j < jobs.size(); ++j) {
        jobs[j](team, buf);
        if (j + 1 < jobs.size()) team.meet();  // the next layer reads this one's output
      }
    }
  }
  // y: the top layer's output in x's dtype, a tensor of its own (not a view of a returned state)
  Tensor y = h;
  if (rows.p) {
    y = at::empty({B, width}, x.options());
    if (rows.bf16 == (x.scalar_type() == at::kBFloat16)) {
      std::memcpy(y.data_ptr(), rows.p, y.numel() * y.element_size());
    } else if (rows.bf16) {  // float32 x over bf16 states: no such frame (the engine passes x in the states' dtype)
      read_rows(y.data_ptr<float>(), rows, B * width);
    } else {
      write_rows({y.data_ptr(), true}, static_cast<const float*>(rows.p), B * width);
    }
  }
  std::vector<Tensor> result{y};
  const std::vector<Tensor>& states = stacked > 0 ? st.parts : st.out;
  result.insert(result.end(), states.begin(), states.end());
  return result;
}

namespace {
// A stack's frame arguments kept on this side between frames (frame_keep), so that a frame passes x, its states and
// a number: converting the weight list and the description from Python measured 2 us of a frame's call.
struct Kept {
  std::vector<Tensor> weights;
  std::vector<int64_t> desc;
  std::vector<double> scalars;
  // The parameters they were made from, as they were then (storage, dtype, version), and the thread count: a frame
  // runs on them only while all are so (frame_run), the checks the caller would otherwise repeat in Python.
  std::vector<Tensor> params;
  std::vector<std::tuple<const void*, at::ScalarType, int64_t>> stamps;
  int threads = 0;
  bool current() const {
    if (at::get_num_threads() != threads) return false;
    for (size_t i = 0; i < params.size(); ++i) {
      const Tensor& p = params[i];
      if (stamps[i] != std::make_tuple(p.data_ptr(), p.scalar_type(), static_cast<int64_t>(p._version()))) {
        return false;
      }
    }
    return true;
  }
};
std::mutex kept_lock;
std::unordered_map<int64_t, std::shared_ptr<const Kept>> kept;
int64_t next_handle = 1;
}  // namespace

int64_t frame_keep(at::TensorList weights, at::IntArrayRef desc, at::ArrayRef<double> scalars,
                   at::TensorList params) {
  Kept made{weights.vec(), desc.vec(), scalars.vec(), params.vec(), {}, at::get_num_threads()};
  for (const Tensor& p : params) {
    TORCH_CHECK(!p.is_inference(), "rnnkit frame_keep: an inference tensor has no version to follow");
    made.stamps.emplace_back(p.data_ptr(), p.scalar_type(), static_cast<int64_t>(p._version()));
  }
  auto k = std::make_shared<const Kept>(std::move(made));
  std::lock_guard<std::mutex> guard(kept_lock);
  kept.emplace(next_handle, std::move(k));
  return next_handle++;
}

void frame_drop(int64_t handle) {
  std::lock_guard<std::mutex> guard(kept_lock);
  kept.erase(handle);
}

std::vector<Tensor> frame_run(const Tensor& x, at::TensorList states, int64_t handle, int64_t stacked) {
  std::shared_ptr<const Kept> k;
  {
    std::lock_guard<std::mutex> guard(kept_lock);
    auto it = kept.find(handle);
    TORCH_CHECK(it != kept.end(), "rnnkit frame_run: no frame arguments kept under ", handle);
    k = it->second;
  }
  if (!k->current()) return {};  // a parameter or the thread count changed: the caller makes them again
  return frame_forward(x, k->weights, states, k->desc, k->scalars, stacked);
}

}  // namespace rnnkit
