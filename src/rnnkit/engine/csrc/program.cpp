// A compiled user cell's step (rnnkit.engine.compiler): the engine's time loop over a StepProgram, whose stages
// are generated C functions (passed as addresses) and whose multiplies are the engine's (weights packed once per
// call). The program arrives flattened (see compiler/native.py):
//   slots: (kind, width, index) per slot, kinds step 0, state_in 1, state_out 2, output 3, temp 4, param 5, seq 6;
//   steps: (type, a, b, c) per step: a Stage (type 0) runs function a with b elements of work per row; a MatMul
//          (type 1) is slots[c] = slots[a] @ weights[b].
// A stage function f(b0, b1, p, ld) computes rows [b0, b1) of the step: slot i's row r is p[i] + r * ld[i] (value)
// and p[S + i] + r * ld[S + i] (gradient, backward only); params have ld 0.
//
// Forward, at step t (n running rows from packed row off): steps read x + off * G + column, states (ping-pong
// (B, w) buffers; when training, the packed (total, w) states of every step instead, step t - 1's rows being step
// t's state_in), temps ((B, w) buffers; training: packed), params, seq rows; write Y + off * O. Saved for the
// backward (training only): the packed states of every leaf, then every temp, packed (slot order).
// Backward, last step first: the gradients of the states in ping-pong (B, w) buffers (a sequence that ended at
// step t starts from d final), the stages' backwards in reverse order, d(lhs) += d(out) @ W^T for a multiply;
// d(out) of the multiplies stay packed, so dW = LHS^T dOUT is one multiply per MatMul after the loop.
#include "loop.h"
#include "ops.h"

namespace rnnkit {
namespace {

enum Kind : int64_t { kStep = 0, kStateIn, kStateOut, kOutput, kTemp, kParam, kSeq };

struct SlotD {
  int64_t kind, width, index;
};
struct StepD {
  int64_t type, a, b, c;
};

struct Plan {
  std::vector<SlotD> slots;
  std::vector<StepD> steps;
  std::vector<int64_t> temp_of;  // slot -> its temp number (-1: not a temp)
  std::vector<bool> matmul_out;  // slot -> written by a MatMul
  int64_t S = 0, temps = 0;
  Plan(at::IntArrayRef sl, at::IntArrayRef st) {
    TORCH_CHECK(sl.size() % 3 == 0 && st.size() % 4 == 0, "rnnkit program: malformed program description");
    S = static_cast<int64_t>(sl.size() / 3);
    temp_of.assign(S, -1);
    matmul_out.assign(S, false);
    for (int64_t i = 0; i < S; ++i) {
      slots.push_back({sl[3 * i], sl[3 * i + 1], sl[3 * i + 2]});
      if (slots[i].kind == kTemp) temp_of[i] = temps++;
    }
    for (size_t k = 0; k < st.size(); k += 4) {
      steps.push_back({st[k], st[k + 1], st[k + 2], st[k + 3]});
      if (st[k] == 1) matmul_out[st[k + 3]] = true;
    }
  }
};

template <typename T>
using StageFn = void (*)(int64_t, int64_t, T* const*, const int64_t*);

template <typename T>
T* ptr(const Tensor& t) {
  return const_cast<T*>(t.data_ptr<T>());
}

// Rows [lo, hi) of a (rows, w) buffer: b's elements.
template <typename T>
void copy_rows(T* dst, const T* src, int64_t lo, int64_t hi, int64_t w) {
  if (hi > lo) std::memcpy(dst + lo * w, src + lo * w, sizeof(T) * (hi - lo) * w);
}

template <typename T>
std::vector<SplitGemm<T>> step_multiplies(const Plan& pl, const std::vector<Tensor>& weights, const Schedule& s,
                                          bool transposed) {
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  std::vector<SplitGemm<T>> out;
  for (const StepD& st : pl.steps) {
    if (st.type != 1) continue;
    const Tensor& w = weights.at(st.b);
    Mat<T> m = transposed ? step_weights_t<T>(w, rows0, s.steps()) : step_weights<T>(w, rows0, s.steps());
    out.emplace_back(std::vector<Mat<T>>{m}, rows0, s.steps());
  }
  return out;
}

template <typename T>
void run_stage(int64_t fn, int64_t work, int64_t n, T* const* p, const int64_t* ld) {
  auto f = reinterpret_cast<StageFn<T>>(fn);
  for_rows(n, std::max<int64_t>(1, work), [&](int64_t b0, int64_t b1) { f(b0, b1, p, ld); });
}

// The state of every sequence after its last step, from the packed states of every step (training's layout).
template <typename T>
Tensor finals_of(const Schedule& s, const Tensor& h0, const Tensor& packed) {
  Tensor last = h0.clone();
  const int64_t w = h0.size(1);
  for (int64_t t = 0; t < s.steps(); ++t) {
    const int64_t next = t + 1 < s.steps() ? s.n[t + 1] : 0;
    copy_rows<T>(ptr<T>(last), ptr<T>(packed) + s.off[t] * w, next, s.n[t], w);
  }
  return last;
}

// Multiply-adds per row of a step.
inline int64_t multiply_work(const Plan& pl, const std::vector<Tensor>& weights) {
  int64_t work = 0;
  for (const StepD& st : pl.steps) {
    if (st.type == 1) work += weights.at(st.b).size(0) * weights.at(st.b).size(1);
  }
  return work;
}

// The forward's buffers and where each slot's rows lie at a step (see the file's header).
template <typename T>
struct Fwd {
  const Schedule& s;
  const Plan& pl;
  bool save;
  int64_t G, O;
  Tensor xc, Y;
  std::vector<Tensor> h0, params, seqs, packed, temps, ping, pong, last;
  // Slot pointers and row strides for rows from `lo` of step t.
  void slots(int64_t t, int64_t lo, T** p, int64_t* ld) const {
    const int64_t off = s.off[t] + lo;
    for (int64_t i = 0; i < pl.S; ++i) {
      const SlotD& d = pl.slots[i];
      const int64_t w = d.width;
      ld[i] = w;
      switch (d.kind) {
        case kStep: p[i] = ptr<T>(xc) + off * G + d.index, ld[i] = G; break;
        case kStateIn:
          if (save) {
            p[i] = t == 0 ? ptr<T>(h0[d.index]) + lo * w : ptr<T>(packed[d.index]) + (s.off[t - 1] + lo) * w;
          } else {
            p[i] = ptr<T>(t % 2 ? pong[d.index] : ping[d.index]) + lo * w;
          }
          break;
        case kStateOut:
          p[i] = save ? ptr<T>(packed[d.index]) + off * w : ptr<T>(t % 2 ? ping[d.index] : pong[d.index]) + lo * w;
          break;
        case kOutput: p[i] = ptr<T>(Y) + off * O; break;
        case kTemp: p[i] = ptr<T>(temps[pl.temp_of[i]]) + (save ? off : lo) * w; break;
        case kParam: p[i] = ptr<T>(params.at(d.index)), ld[i] = 0; break;
        default: p[i] = ptr<T>(seqs.at(d.index)) + lo * w; break;
      }
    }
  }
  // Inference: the sequences among rows [lo, hi) whose last step is t keep the state it wrote.
  void keep_finals(int64_t t, int64_t lo, int64_t hi) {
    if (save) return;
    const int64_t next = t + 1 < s.steps() ? s.n[t + 1] : 0;
    for (size_t i = 0; i < last.size(); ++i) {
      const int64_t w = last[i].size(1);
      copy_rows<T>(ptr<T>(last[i]), ptr<T>(t % 2 ? ping[i] : pong[i]), std::max(lo, next), hi, w);
    }
  }
};

template <typename T>
std::vector<Tensor> prog_fwd(const Tensor& x, const Tensor& batch_sizes, at::TensorList states0_,
                             at::TensorList weights_, at::TensorList params_, at::TensorList seqs_,
                             at::IntArrayRef slots, at::IntArrayRef steps, at::IntArrayRef fns, int64_t out_width,
                             bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const Plan pl(slots, steps);
  const auto opts = x.options();
  Fwd<T> f{s, pl, save, 0, out_width, contig(x), Tensor()};
  const int64_t N = s.total, L = static_cast<int64_t>(states0_.size());
  f.G = f.xc.size(1);
  TORCH_CHECK(L > 0, "rnnkit program_forward: a step needs at least one state");
  TORCH_CHECK(f.xc.size(0) == N, "rnnkit program_forward: step inputs have ", f.xc.size(0), " rows, batch_sizes ", N);
  const int64_t B = states0_[0].size(0);
  std::vector<Tensor> weights(weights_.begin(), weights_.end());
  for (const Tensor& t : states0_) f.h0.push_back(contig(t));
  for (const Tensor& t : params_) f.params.push_back(contig(t));
  for (const Tensor& t : seqs_) f.seqs.push_back(contig(t));
  f.Y = at::empty({N, out_width}, opts);
  for (int64_t i = 0; i < L; ++i) {
    if (save) {
      f.packed.push_back(at::empty({N, f.h0[i].size(1)}, opts));
    } else {
      f.ping.push_back(f.h0[i].clone());
      f.pong.push_back(at::empty_like(f.h0[i]));
      f.last.push_back(f.h0[i].clone());
    }
  }
  for (int64_t i = 0; i < pl.S; ++i) {
    if (pl.slots[i].kind == kTemp) f.temps.push_back(at::empty({save ? N : B, pl.slots[i].width}, opts));
  }
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const int64_t blocks = row_blocks(rows0, multiply_work(pl, weights));
  if (blocks > 1) {
    const std::vector<int64_t> bounds = row_bounds(s, rows0, blocks);
    at::parallel_for(0, blocks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t r0 = bounds[c], r1 = bounds[c + 1];
        if (r1 <= r0) continue;
        std::vector<StepGemm<T>> mm;  // this block's multiplies, W packed for its row count
        for (const StepD& st : pl.steps) {
          if (st.type == 1) mm.emplace_back(step_weights<T>(weights.at(st.b), r1 - r0), r1 - r0);
        }
        std::vector<T*> p(pl.S, nullptr);
        std::vector<int64_t> ld(pl.S, 0);
        for (int64_t t = 0; t < s.steps() && s.n[t] > r0; ++t) {
          const int64_t hi = std::min(r1, s.n[t]), n = hi - r0;
          f.slots(t, r0, p.data(), ld.data());
          size_t m = 0;
          for (const StepD& st : pl.steps) {
            if (st.type == 0) {
              reinterpret_cast<StageFn<T>>(fns.at(st.a))(0, n, p.data(), ld.data());
            } else {
              mm[m++](n, p[st.a], ld[st.a], T(0), p[st.c], ld[st.c]);
            }
          }
          f.keep_finals(t, r0, hi);
        }
      }
    });
  } else {
    const std::vector<SplitGemm<T>> mm = step_multiplies<T>(pl, weights, s, false);
    std::vector<T*> p(pl.S, nullptr);
    std::vector<int64_t> ld(pl.S, 0);
    for (int64_t t = 0; t < s.steps() && s.n[t] > 0; ++t) {
      const int64_t n = s.n[t];
      f.slots(t, 0, p.data(), ld.data());
      size_t m = 0;
      for (const StepD& st : pl.steps) {
        if (st.type == 0) {
          run_stage<T>(fns.at(st.a), st.b, n, p.data(), ld.data());
        } else {
          mm[m++](n, {p[st.a]}, ld[st.a], T(0), p[st.c], ld[st.c]);
        }
      }
      f.keep_finals(t, 0, n);
    }
  }
  std::vector<Tensor> out{f.Y};
  for (int64_t i = 0; i < L; ++i) out.push_back(save ? finals_of<T>(s, f.h0[i], f.packed[i]) : f.last[i]);
  if (save) {
    out.insert(out.end(), f.packed.begin(), f.packed.end());
    out.insert(out.end(), f.temps.begin(), f.temps.end());
  }
  return out;
}

// The backward's buffers and where each slot's rows and gradient rows lie at a step (see the file's header).
template <typename T>
struct Bwd {
  const Schedule& s;
  const Plan& pl;
  int64_t G, O;
  Tensor xc, Y, dYw, dX;
  // g[2]: d states, step t's d state_out in g[(T - 1 - t) % 2] and its d state_in in the other.
  std::vector<Tensor> h0, params, seqs, packed, temps, df, g[2], dtemp, dparam;
  int64_t parity(int64_t t) const { return (s.steps() - 1 - t) % 2; }
  // Slot (value, gradient) pointers and row strides for rows from `lo` of step t.
  void slots(int64_t t, int64_t lo, T** p, int64_t* ld) const {
    const int64_t off = s.off[t] + lo, S = pl.S;
    const std::vector<Tensor>&gout = g[parity(t)], &gin = g[1 - parity(t)];
    for (int64_t i = 0; i < S; ++i) {
      const SlotD& d = pl.slots[i];
      const int64_t w = d.width, q = S + i;
      ld[i] = ld[q] = w;
      switch (d.kind) {
        case kStep: p[i] = ptr<T>(xc) + off * G + d.index, p[q] = ptr<T>(dX) + off * G + d.index, ld[i] = ld[q] = G; break;
        case kStateIn:
          p[i] = t == 0 ? ptr<T>(h0[d.index]) + lo * w : ptr<T>(packed[d.index]) + (s.off[t - 1] + lo) * w;
          p[q] = ptr<T>(gin[d.index]) + lo * w;
          break;
        case kStateOut: p[i] = ptr<T>(packed[d.index]) + off * w, p[q] = ptr<T>(gout[d.index]) + lo * w; break;
        case kOutput: p[i] = ptr<T>(Y) + off * O, p[q] = ptr<T>(dYw) + off * O, ld[i] = ld[q] = O; break;
        case kTemp: {
          const int64_t k = pl.temp_of[i];
          p[i] = ptr<T>(temps[k]) + off * w;
          p[q] = ptr<T>(dtemp[k]) + (pl.matmul_out[i] ? off : lo) * w;
          break;
        }
        case kParam: p[i] = ptr<T>(params.at(d.index)), ld[i] = 0, p[q] = ptr<T>(dparam.at(d.index)) + lo * w; break;
        default: p[i] = ptr<T>(seqs.at(d.index)) + lo * w, p[q] = nullptr; break;
      }
    }
  }
  // Before step t's backward over rows [lo, hi): the sequences whose last step is t start from d final, d state_in
  // and the gradients of the step's own temps (not a multiply's) start from zero.
  void begin(int64_t t, int64_t lo, int64_t hi) const {
    const int64_t next = t + 1 < s.steps() ? s.n[t + 1] : 0;
    const std::vector<Tensor>&gout = g[parity(t)], &gin = g[1 - parity(t)];
    for (size_t i = 0; i < df.size(); ++i) {
      const int64_t w = df[i].size(1);
      copy_rows<T>(ptr<T>(gout[i]), ptr<T>(df[i]), std::max(lo, next), hi, w);
      std::memset(ptr<T>(gin[i]) + lo * w, 0, sizeof(T) * (hi - lo) * w);
    }
    for (int64_t i = 0; i < pl.S; ++i) {
      const SlotD& d = pl.slots[i];
      if (d.kind == kTemp && !pl.matmul_out[i]) {
        std::memset(ptr<T>(dtemp[pl.temp_of[i]]) + lo * d.width, 0, sizeof(T) * (hi - lo) * d.width);
      }
    }
  }
};

template <typename T>
std::vector<Tensor> prog_bwd(const Tensor& dY, at::TensorList dfinals, const Tensor& x, const Tensor& batch_sizes,
                             at::TensorList states0_, at::TensorList weights_, at::TensorList params_,
                             at::TensorList seqs_, const Tensor& Y_, at::TensorList saved, at::IntArrayRef slots,
                             at::IntArrayRef steps, at::IntArrayRef fns) {
  const Schedule s = schedule_of(batch_sizes);
  const Plan pl(slots, steps);
  const auto opts = x.options();
  Bwd<T> b{s, pl, 0, 0, contig(x), contig(Y_)};
  const Tensor &xc = b.xc, &Y = b.Y;
  const int64_t G = xc.size(1), N = s.total, L = static_cast<int64_t>(states0_.size());
  const int64_t B = states0_[0].size(0), O = Y.size(1);
  b.G = G, b.O = O;
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == L + pl.temps, "rnnkit program_backward: expected ", L + pl.temps,
              " saved tensors, got ", saved.size());
  std::vector<Tensor> weights(weights_.begin(), weights_.end());
  auto &h0 = b.h0, &packed = b.packed, &temps = b.temps, &dtemp = b.dtemp, &dparam = b.dparam, &params = b.params;
  for (int64_t i = 0; i < L; ++i) {
    h0.push_back(contig(states0_[i]));
    packed.push_back(contig(saved[i]));
    b.df.push_back(contig(dfinals[i]));
    b.g[0].push_back(at::empty_like(h0[i]));
    b.g[1].push_back(at::empty_like(h0[i]));
  }
  for (const Tensor& t : params_) {
    params.push_back(contig(t));
    dparam.push_back(at::zeros({B, t.numel()}, opts));
  }
  for (const Tensor& t : seqs_) b.seqs.push_back(contig(t));
  for (int64_t i = 0; i < pl.S; ++i) {
    const SlotD& d = pl.slots[i];
    if (d.kind != kTemp) continue;
    temps.push_back(contig(saved[L + pl.temp_of[i]]));
    dtemp.push_back(pl.matmul_out[i] ? at::zeros({N, d.width}, opts) : at::empty({B, d.width}, opts));
  }
  b.dYw = dY.contiguous().clone(), b.dX = at::zeros({N, G}, opts);
  for (const StepD& st : pl.steps) {
    TORCH_CHECK(st.type == 0 || pl.slots[st.a].kind != kSeq,
                "rnnkit program_backward: a multiply's left side has no gradient (a seq slot)");
  }
  // One step's backward over rows [lo, hi): the stages' backwards in reverse order, d(lhs) += d(out) @ W^T.
  auto step = [&](int64_t t, int64_t lo, int64_t hi, T** p, int64_t* ld, const auto& stage, const auto& mult) {
    b.begin(t, lo, hi);
    b.slots(t, lo, p, ld);
    size_t m = 0;
    for (const StepD& st : pl.steps) m += st.type;
    for (auto it = pl.steps.rbegin(); it != pl.steps.rend(); ++it) {
      if (it->type == 0) {
        stage(*it, hi - lo);
      } else {
        mult(--m, hi - lo, p[pl.S + it->c], ld[pl.S + it->c], p[pl.S + it->a], ld[pl.S + it->a]);
      }
    }
  };
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const int64_t blocks = row_blocks(rows0, multiply_work(pl, weights));
  if (blocks > 1) {
    const std::vector<int64_t> bounds = row_bounds(s, rows0, blocks);
    at::parallel_for(0, blocks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t r0 = bounds[c], r1 = bounds[c + 1];
        if (r1 <= r0) continue;
        std::vector<StepGemm<T>> mm;  // this block's d(lhs) += d(out) @ W^T, W^T packed for its row count
        for (const StepD& st : pl.steps) {
          if (st.type == 1) mm.emplace_back(step_weights_t<T>(weights.at(st.b), r1 - r0, 0), r1 - r0);
        }
        std::vector<T*> p(2 * pl.S, nullptr);
        std::vector<int64_t> ld(2 * pl.S, 0);
        for (int64_t t = s.steps() - 1; t >= 0; --t) {
          if (s.n[t] <= r0) continue;
          step(
              t, r0, std::min(r1, s.n[t]), p.data(), ld.data(),
              [&](const StepD& st, int64_t n) { reinterpret_cast<StageFn<T>>(fns.at(st.a))(0, n, p.data(), ld.data()); },
              [&](size_t k, int64_t n, const T* d, int64_t ldd, T* out, int64_t ldo) { mm[k](n, d, ldd, T(1), out, ldo); });
        }
      }
    });
  } else {
    const std::vector<SplitGemm<T>> mmt = step_multiplies<T>(pl, weights, s, true);
    std::vector<T*> p(2 * pl.S, nullptr);
    std::vector<int64_t> ld(2 * pl.S, 0);
    for (int64_t t = s.steps() - 1; t >= 0; --t) {
      if (s.n[t] == 0) continue;
      step(
          t, 0, s.n[t], p.data(), ld.data(),
          [&](const StepD& st, int64_t n) { run_stage<T>(fns.at(st.a), st.b, n, p.data(), ld.data()); },
          [&](size_t k, int64_t n, const T* d, int64_t ldd, T* out, int64_t ldo) {
            mmt[k](n, {d}, ldd, T(1), out, ldo);
          });
    }
  }
  std::vector<Tensor> out{b.dX};
  const std::vector<Tensor>& dh0 = b.g[s.steps() % 2];  // d state_in of step 0 (parity(0) is (T - 1) % 2)
  for (int64_t i = 0; i < L; ++i) {  // sequences of no step keep d final
    copy_rows<T>(ptr<T>(dh0[i]), ptr<T>(b.df[i]), rows0, B, h0[i].size(1));
    out.push_back(dh0[i]);
  }
  std::vector<Tensor> dW(weights.size());
  for (const StepD& st : pl.steps) {
    if (st.type != 1) continue;
    const SlotD& l = pl.slots[st.a];
    const Tensor& w = weights.at(st.b);
    const int64_t k = w.size(0), mcols = w.size(1);
    const bool first_use = !dW[st.b].defined();
    if (first_use) dW[st.b] = at::zeros({k, mcols}, opts);
    if (N == 0) continue;
    Tensor lhs;
    const T* lp = nullptr;
    int64_t ldl = l.width;
    switch (l.kind) {
      case kStep: lp = ptr<T>(xc) + l.index, ldl = G; break;
      case kStateIn: lhs = previous_states<T>(s, h0[l.index], packed[l.index], nullptr), lp = ptr<T>(lhs); break;
      case kStateOut: lp = ptr<T>(packed[l.index]); break;
      case kOutput: lp = ptr<T>(Y), ldl = O; break;
      case kTemp: lp = ptr<T>(temps[pl.temp_of[st.a]]); break;
      default: TORCH_CHECK(false, "rnnkit program_backward: a multiply's left side must be a step, state or temp");
    }
    const Tensor& dout = dtemp[pl.temp_of[st.c]];
    gemm_atd<T>(N, k, mcols, lp, ldl, ptr<T>(dout), mcols, T(1), ptr<T>(dW[st.b]), mcols);
  }
  for (size_t j = 0; j < dW.size(); ++j) {
    out.push_back(dW[j].defined() ? dW[j] : at::zeros(weights[j].sizes(), opts));
  }
  for (size_t j = 0; j < params.size(); ++j) out.push_back(dparam[j].sum(0).view(params[j].sizes()));
  return out;
}

}  // namespace

std::vector<Tensor> program_forward(const Tensor& x, const Tensor& batch_sizes, at::TensorList states0,
                                    at::TensorList weights, at::TensorList params, at::TensorList seqs,
                                    at::IntArrayRef slots, at::IntArrayRef steps, at::IntArrayRef fns,
                                    int64_t out_width, bool save) {
  return dispatch_float(x, "program_forward", [&](auto z) {
    return prog_fwd<decltype(z)>(x, batch_sizes, states0, weights, params, seqs, slots, steps, fns, out_width, save);
  });
}

std::vector<Tensor> program_backward(const Tensor& dY, at::TensorList dfinals, const Tensor& x,
                                     const Tensor& batch_sizes, at::TensorList states0, at::TensorList weights,
                                     at::TensorList params, at::TensorList seqs, const Tensor& Y,
                                     at::TensorList saved, at::IntArrayRef slots, at::IntArrayRef steps,
                                     at::IntArrayRef fns) {
  return dispatch_float(x, "program_backward", [&](auto z) {
    return prog_bwd<decltype(z)>(dY, dfinals, x, batch_sizes, states0, weights, params, seqs, Y, saved, slots, steps,
                                 fns);
  });
}

}  // namespace rnnkit
