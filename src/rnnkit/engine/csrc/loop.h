// The time loop every fused kernel shares, as ATen's RNN.cpp composes Cell x Layer: the input projection of
// all steps in one multiply up front, the packed steps (forward and backward), the recurrent state with its
// per-sequence masks and frozen rows, and the weight gradients as single multiplies over all steps. A family
// (lstm.cpp, lnlstm.cpp, gru.cpp, rnn.cpp) supplies only its step (see forward_loop and backward_loop below).
#pragma once

#include "gemm.h"

namespace rnnkit {

// The input projection of every step in one matrix multiply per column block of W_x: (total, I) @ [W_1 | W_2 ...]
// -> (total, N_1 + N_2 ...). The blocks may live in different tensors (TF's GRU keeps its candidate apart). steps:
// the call's (one_frame: BLAS only). scratch: the result does not outlive the call (an inference pass's), so a bf16
// layer's may be the calling thread's kept buffer (call_scratch). (In float32 the kept buffer measured 1-4% slower
// than a fresh one at (100, 32, 128, 256): a fresh page arrives zeroed in cache, a kept one is read back from memory
// before it is written; in bf16 the page faults cost more.)
template <typename T>
Tensor project_inputs(const Tensor& x, const std::vector<Mat<T>>& blocks, int64_t steps = 0, bool scratch = false) {
  const int64_t total = x.size(0), I = x.size(1);
  int64_t width = 0;
  for (const Mat<T>& w : blocks) width += w.cols;
  const at::TensorOptions options = x.options().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor out = scratch && bf16_multiplies() ? call_scratch(total, width, options) : at::empty({total, width}, options);
  // A bf16 layer's x and W_x are bf16 values: its float32 multiply has the bf16 one's products (bf16.h), and is
  // the faster below kBf16MinProjection multiply-adds (the bf16 units' call re-lays W_x out).
  const bool bf16 = bf16_multiplies() && bf16_multiply_units() && !one_frame(steps) && I > 0 &&
                    total * I * width >= kBf16MinProjection;
  // x may be a bf16 layer's input as it came (bfloat16: rnnkit.engine._functions passes it so in inference): the
  // bf16 units read it as it is, a float32 multiply widened.
  const bool given_bf16 = x.scalar_type() == at::kBFloat16;
  const Tensor xc = given_bf16 && !bf16 ? x.to(options.dtype()).contiguous() : contig(x);
  const at::BFloat16* xb = nullptr;  // x rounded once for every block (bf16_gemm)
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      xb = given_bf16 ? even_rows(xc.data_ptr<at::BFloat16>(), total, I)
                      : rounded_operand(total, I, xc.data_ptr<T>(), false, I);
    }
  }
  int64_t col = 0;
  for (const Mat<T>& w : blocks) {
    if (total > 0 && w.cols > 0) {
      T* o = out.data_ptr<T>() + col;
      if constexpr (std::is_same_v<T, float>) {
        if (bf16) {
          bf16_gemm(total, xb, w, false, o, width);
          col += w.cols;
          continue;
        }
      }
      gemm_xw<T>(total, xc.data_ptr<T>(), std::max<int64_t>(1, xc.size(1)), w, T(1), T(0), o, width,
                 !one_frame(steps));
    }
    col += w.cols;
  }
  return out;
}

// What every backward ends with, single matmuls over all steps: dW_x = x^T dG, dW_h = Hprev^T dG_h and (when
// asked) dx = dG W_x^T. W_x comes in column blocks (see project_inputs); block k's dW_x (I, N_k) and dW_h (R, N_k)
// are the two row blocks of one (I + R, N_k) tensor, so a TF kernel (I + R, N_k) takes its gradient without a
// copy (rnnkit.gates.split_kernel joins them back). dG_h: the recurrent side's d pre-activations (dG, but for
// the reset-after GRU), with dG's row stride; nullptr: the caller fills dW_h.
struct WeightGrads {
  Tensor dx;
  std::vector<Tensor> dwx, dwh;  // per column block
};

template <typename T>
WeightGrads weight_grads(const Tensor& x, const std::vector<Mat<T>>& wx, const Tensor& dG, const Tensor& hprev,
                         const T* dgh, bool need_dx) {
  Tensor xc = contig(x);
  const int64_t total = xc.size(0), I = xc.size(1), R = hprev.size(1), ldg = dG.size(1);
  WeightGrads g;
  if (need_dx) g.dx = total > 0 ? at::empty({total, I}, x.options()) : at::zeros({total, I}, x.options());
  int64_t col = 0;
  for (size_t k = 0; k < wx.size(); ++k) {
    const int64_t N = wx[k].cols;
    Tensor dW = at::empty({I + R, N}, x.options());
    g.dwx.push_back(dW.narrow(0, 0, I));
    g.dwh.push_back(dW.narrow(0, I, R));
    if (dgh) gemm_atd<T>(total, R, N, hprev.data_ptr<T>(), R, dgh + col, ldg, T(0), g.dwh[k].data_ptr<T>(), N);
    if (total == 0) {  // nothing ran: the gradients are zero (dW_h too: no step wrote it, whoever was to)
      dW.zero_();
    } else {
      const T* dg = dG.data_ptr<T>() + col;
      gemm_atd<T>(total, I, N, xc.data_ptr<T>(), std::max<int64_t>(1, I), dg, ldg, T(0), g.dwx[k].data_ptr<T>(), N);
      if (need_dx) gemm_dwt<T>(total, dg, ldg, wx[k], T(1), k ? T(1) : T(0), g.dx.data_ptr<T>(), I);
    }
    col += N;
  }
  return g;
}

// The recurrent state of a forward pass over packed steps: h_{t-1} and h_t buffers that swap after each
// step, and the final state, each sequence's frozen at its last step (sequences end longest first: when
// n[t] < n[t - 1], rows n[t].. have just ended).
template <typename T>
struct StepStates {
  Tensor prev, next, last;  // (B, W)
  int64_t width, running = 0;
  explicit StepStates(const Tensor& h0)
      : prev(h0.contiguous().clone()), next(at::empty_like(prev)), last(prev.clone()), width(h0.size(1)) {}
  // Starts step t: false once no sequence runs any more.
  bool start(const Schedule& s, int64_t t) {
    const int64_t n = s.n[t];
    if (t > 0 && n < s.n[t - 1]) {
      std::memcpy(last.data_ptr<T>() + n * width, h() + n * width, sizeof(T) * (s.n[t - 1] - n) * width);
    }
    running = n;
    return n > 0;
  }
  T* h() { return prev.data_ptr<T>(); }       // h_{t-1}, read by step t
  T* h_next() { return next.data_ptr<T>(); }  // h_t, written by step t
  void finish_step() { std::swap(prev, next); }
  Tensor final_state() {
    if (running > 0) std::memcpy(last.data_ptr<T>(), h(), sizeof(T) * running * width);
    return last;
  }
};

// Packed rows (total, W) times a per-sequence mask (B, W): row b of every step times mask row b.
template <typename T>
Tensor masked_rows(const Schedule& s, const Tensor& rows, const T* mask) {
  const int64_t W = rows.size(1);
  Tensor out = at::empty_like(rows);
  const T* in = rows.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t t = 0; t < s.steps(); ++t) {
    const int64_t base = s.off[t] * W;
    for (int64_t i = 0; i < s.n[t] * W; ++i) o[base + i] = in[base + i] * mask[i];
  }
  return out;
}

// Rows of the previous state for every step, packed like the outputs: step 0 reads h0, step t
// reads the outputs of step t - 1 (times the per-sequence state mask when there is one).
template <typename T>
Tensor previous_states(const Schedule& s, const Tensor& h0, const Tensor& Y, const T* mask) {
  const int64_t W = h0.size(1);
  Tensor prev = at::empty({s.total, W}, h0.options());
  T* out = prev.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const T* yp = Y.data_ptr<T>();
  for (int64_t t = 0; t < s.steps(); ++t) {
    const int64_t n = s.n[t];
    T* dst = out + s.off[t] * W;
    if (t == 0) {
      std::memcpy(dst, h0p, sizeof(T) * n * W);
    } else {
      const T* src = yp + s.off[t - 1] * W;
      if (mask) {
        for (int64_t i = 0; i < n * W; ++i) dst[i] = src[i] * mask[i];
      } else {
        std::memcpy(dst, src, sizeof(T) * n * W);
      }
    }
  }
  return prev;
}
// Recurrent dropout (Keras / Gal): a per-sequence mask_r (B, W) on the h the recurrent matmul reads, h_{t-1} *
// mask_r, in a buffer of its own; the outputs and the carried state stay unmasked. Without a mask the matmul reads
// h_{t-1} itself (no copy).
template <typename T>
struct MatmulInput {
  const T* mask;
  Tensor buf;
  const T* h = nullptr;  // what the step's matmul reads
  MatmulInput(const T* mask_r, int64_t B, int64_t W, const at::TensorOptions& options)
      : mask(mask_r), buf(mask_r ? at::empty({B, W}, options) : Tensor()) {}
  // At the start of a step of n rows reading h_{t-1} (n, W).
  void read(int64_t n, const T* hp) {
    h = hp;
    if (mask) {
      T* out = buf.data_ptr<T>();
      const int64_t count = n * buf.size(1);
      for (int64_t i = 0; i < count; ++i) out[i] = hp[i] * mask[i];
      h = out;
    }
  }
};

// The backward of MatmulInput: d(h_{t-1} * mask_r) -> d(h_{t-1}) in place, `count` elements (none without a mask).
template <typename T>
inline void unmask_grad(T* dh, const T* mask_r, int64_t count) {
  if (mask_r) {
    for (int64_t i = 0; i < count; ++i) dh[i] *= mask_r[i];
  }
}

// ---- blocks of rows -----------------------------------------------------------------------------
// How many blocks of rows a call's steps split into (1: the steps run whole, their multiplies split by columns), for
// a step that is row-wise (a multiply's row r reads row r; elementwise rows are independent, as in a compiled
// program): a block runs every step of its rows on its own thread, one parallel region per call with no barrier
// between multiply and elementwise part or between steps, and multiplies its rows with BLAS at the machine's full
// vector width. Worth it when every block keeps enough rows for BLAS (twice kSmallGemmRows) and the step enough
// work for the threads (step_threads).
inline int64_t row_blocks(int64_t rows0, int64_t work_per_row) {
  constexpr int64_t kMinBlockRows = 2 * kSmallGemmRows;
  return std::min(rows0 / kMinBlockRows, step_threads(rows0 * work_per_row));
}

// Row boundaries of `blocks` blocks over the sequences [0, B): equal shares of the steps they run (a row's steps
// are its sequence's length), so that variable lengths do not leave one block with the long sequences alone.
inline std::vector<int64_t> row_bounds(const Schedule& s, int64_t B, int64_t blocks) {
  std::vector<int64_t> len(B, 0);
  for (int64_t t = 0; t < s.steps(); ++t)
    for (int64_t b = 0; b < s.n[t]; ++b) ++len[b];
  std::vector<int64_t> bounds{0};
  int64_t done = 0, r = 0;
  for (int64_t c = 1; c < blocks; ++c) {
    const int64_t want = s.total * c / blocks;
    while (r < B && done + len[r] <= want) done += len[r++];
    bounds.push_back(std::max(r, bounds.back()));
  }
  bounds.push_back(B);
  return bounds;
}

// ---- the time loop ------------------------------------------------------------------------------
// A family's step is a few lambdas over the family's buffers: templates, so the compiler inlines each into the
// loop (no virtual call, no per-step allocation), and the step's arithmetic is written once, in its family file.

struct NoStep {
  template <typename... A>
  void operator()(A&&...) const {}
};

// Forward over the packed steps of `s` from h0 (B, W). At step t (n running rows, the first at packed row off;
// h = h_{t-1} (B, W) and hn = h_t, rows [0, n) of which the step writes):
//   begin(n, h)                      before the multiply (a recurrent-dropout mask on the h it reads);
//   chunk(c, lo, w, n, off, h, hn)   for every chunk c of units u (in parallel when more than one): the
//                                    recurrent multiply of units [lo, lo + w) and their update;
//   finish(n, off, h, hn)            a phase reading every unit (a projection, the reset-before GRU's candidate,
//                                    the update of a step whose norms need whole rows).
// Returns the final state, each sequence's at its last step.
template <typename T, typename Chunk, typename Finish = NoStep, typename Begin = NoStep>
Tensor forward_loop(const Schedule& s, const Tensor& h0, const Units& u, const Chunk& chunk,
                    const Finish& finish = {}, const Begin& begin = {}) {
  StepStates<T> hs(h0);
  for (int64_t t = 0; t < s.steps() && hs.start(s, t); ++t) {
    const int64_t n = s.n[t], off = s.off[t];
    T* h = hs.h();
    T* hn = hs.h_next();
    begin(n, h);
    for_chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], w = u.hi[c] - u.lo[c];
      if (w > 0) chunk(c, lo, w, n, off, h, hn);
    });
    finish(n, off, h, hn);
    hs.finish_step();
  }
  return hs.final_state();
}

// How many blocks of rows a family's forward runs in (forward_rows; 1: its steps split by units): on the bf16 units
// only, whose one-tile multiplies of 16 rows lose nothing to a split by rows (float32 steps keep the split by units),
// without dropout masks (the families index their rows per step) and over sequences long enough for the units.
template <typename T>
int64_t bf16_row_blocks(const Schedule& s, int64_t work_per_row, bool masks) {
  if (!std::is_same_v<T, float> || !bf16_multiplies() || !bf16_multiply_units() || masks || s.steps() < kMinPanelSteps)
    return 1;
  return row_blocks(s.n[0], work_per_row);
}

// Forward over the packed steps of `s` from h0 (B, W) in blocks of rows (row_bounds), each running every step of
// its rows on a thread of its own: no barrier between steps. step(r0, n, off, h, hn) runs step t of the block that
// starts at batch row r0: its n running rows, packed rows [off, off + n) (s.off[t] + r0), reading h_{t-1} at h (row
// r0's first) and writing h_t at hn. For a step that is row-wise (each row's multiply reads its own row of h; a
// family's step on the bf16 units, whose one-tile multiplies of 16 rows lose nothing to a split by rows). Returns
// the final state, each sequence's at its last step.
template <typename T, typename Step>
Tensor forward_rows(const Schedule& s, const Tensor& h0, const std::vector<int64_t>& bounds, const Step& step) {
  note_row_block_call();
  Tensor ping = h0.contiguous().clone(), pong = at::empty_like(ping), last = ping.clone();
  const int64_t W = ping.size(1), blocks = static_cast<int64_t>(bounds.size()) - 1;
  T *pa = ping.data_ptr<T>(), *pb = pong.data_ptr<T>(), *pl = last.data_ptr<T>();
  at::parallel_for(0, blocks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = bounds[c], r1 = bounds[c + 1];
      T *h = pa + r0 * W, *hn = pb + r0 * W;
      int64_t running = r1 - r0;  // sequences end longest first: the block's running rows are a prefix of it
      for (int64_t t = 0; t < s.steps() && running > 0; ++t) {
        const int64_t n = std::clamp<int64_t>(s.n[t] - r0, 0, r1 - r0);
        if (n < running) std::memcpy(pl + (r0 + n) * W, h + n * W, sizeof(T) * (running - n) * W);  // just ended
        running = n;
        if (n == 0) break;
        step(r0, n, s.off[t] + r0, h, hn);
        std::swap(h, hn);
      }
      if (running > 0) std::memcpy(pl + r0 * W, h, sizeof(T) * running * W);
    }
  });
  return last;
}

// Backward through time, last step first. At step t (n rows from packed row off):
//   begin(n, off)        the gradient reaching the step's outputs (through an LSTM's projection);
//   rows(b0, b1, off)    the step's pointwise derivative for rows [b0, b1), in parallel when worth it (`width`:
//                        the elements of a row's work);
//   recur(n, off)        the gradient reaching h_{t-1}: the d pre-activations @ W_h^T.
template <typename Rows, typename Recur, typename Begin = NoStep>
void backward_loop(const Schedule& s, int64_t width, const Rows& rows, const Recur& recur, const Begin& begin = {}) {
  for (int64_t t = s.steps() - 1; t >= 0; --t) {
    const int64_t n = s.n[t], off = s.off[t];
    if (n == 0) continue;
    begin(n, off);
    for_rows(n, width, [&](int64_t b0, int64_t b1) { rows(b0, b1, off); });
    recur(n, off);
  }
}

}  // namespace rnnkit
