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
void run_stage(int64_t fn, int64_t work, int64_t n, const std::vector<T*>& p, const std::vector<int64_t>& ld) {
  auto f = reinterpret_cast<StageFn<T>>(fn);
  for_rows(n, std::max<int64_t>(1, work), [&](int64_t b0, int64_t b1) { f(b0, b1, p.data(), ld.data()); });
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

template <typename T>
std::vector<Tensor> prog_fwd(const Tensor& x, const Tensor& batch_sizes, at::TensorList states0_,
                             at::TensorList weights_, at::TensorList params_, at::TensorList seqs_,
                             at::IntArrayRef slots, at::IntArrayRef steps, at::IntArrayRef fns, int64_t out_width,
                             bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const Plan pl(slots, steps);
  const auto opts = x.options();
  Tensor xc = contig(x);
  const int64_t G = xc.size(1), N = s.total, L = static_cast<int64_t>(states0_.size());
  TORCH_CHECK(L > 0, "rnnkit program_forward: a step needs at least one state");
  TORCH_CHECK(xc.size(0) == N, "rnnkit program_forward: step inputs have ", xc.size(0), " rows, batch_sizes ", N);
  const int64_t B = states0_[0].size(0);
  std::vector<Tensor> h0, weights, params, seqs, packed, temps;
  for (const Tensor& t : states0_) h0.push_back(contig(t));
  for (const Tensor& t : weights_) weights.push_back(t);
  for (const Tensor& t : params_) params.push_back(contig(t));
  for (const Tensor& t : seqs_) seqs.push_back(contig(t));
  Tensor Y = at::empty({N, out_width}, opts);
  std::vector<StepStates<T>> hs;
  for (int64_t i = 0; i < L; ++i) {
    if (save) {
      packed.push_back(at::empty({N, h0[i].size(1)}, opts));
    } else {
      hs.emplace_back(h0[i]);
    }
  }
  for (int64_t i = 0; i < pl.S; ++i) {
    if (pl.slots[i].kind == kTemp) temps.push_back(at::empty({save ? N : B, pl.slots[i].width}, opts));
  }
  const std::vector<SplitGemm<T>> mm = step_multiplies<T>(pl, weights, s, false);
  std::vector<T*> p(2 * pl.S, nullptr);
  std::vector<int64_t> ld(2 * pl.S, 0);
  for (int64_t t = 0; t < s.steps(); ++t) {
    const int64_t n = s.n[t], off = s.off[t];
    if (n == 0) break;
    for (auto& h : hs) h.start(s, t);
    for (int64_t i = 0; i < pl.S; ++i) {
      const SlotD& d = pl.slots[i];
      ld[i] = d.width;
      switch (d.kind) {
        case kStep: p[i] = ptr<T>(xc) + off * G + d.index, ld[i] = G; break;
        case kStateIn:
          p[i] = save ? (t == 0 ? ptr<T>(h0[d.index]) : ptr<T>(packed[d.index]) + s.off[t - 1] * d.width)
                      : hs[d.index].h();
          break;
        case kStateOut: p[i] = save ? ptr<T>(packed[d.index]) + off * d.width : hs[d.index].h_next(); break;
        case kOutput: p[i] = ptr<T>(Y) + off * out_width; break;
        case kTemp: p[i] = ptr<T>(temps[pl.temp_of[i]]) + (save ? off * d.width : 0); break;
        case kParam: p[i] = ptr<T>(params.at(d.index)), ld[i] = 0; break;
        default: p[i] = ptr<T>(seqs.at(d.index)); break;
      }
    }
    size_t m = 0;
    for (const StepD& st : pl.steps) {
      if (st.type == 0) {
        run_stage<T>(fns.at(st.a), st.b, n, p, ld);
      } else {
        mm[m++](n, {p[st.a]}, ld[st.a], T(0), p[st.c], ld[st.c]);
      }
    }
    for (auto& h : hs) h.finish_step();
  }
  std::vector<Tensor> out{Y};
  for (int64_t i = 0; i < L; ++i) out.push_back(save ? finals_of<T>(s, h0[i], packed[i]) : hs[i].final_state());
  if (save) {
    out.insert(out.end(), packed.begin(), packed.end());
    out.insert(out.end(), temps.begin(), temps.end());
  }
  return out;
}

template <typename T>
std::vector<Tensor> prog_bwd(const Tensor& dY, at::TensorList dfinals, const Tensor& x, const Tensor& batch_sizes,
                             at::TensorList states0_, at::TensorList weights_, at::TensorList params_,
                             at::TensorList seqs_, const Tensor& Y_, at::TensorList saved, at::IntArrayRef slots,
                             at::IntArrayRef steps, at::IntArrayRef fns) {
  const Schedule s = schedule_of(batch_sizes);
  const Plan pl(slots, steps);
  const auto opts = x.options();
  Tensor xc = contig(x), Y = contig(Y_);
  const int64_t G = xc.size(1), N = s.total, L = static_cast<int64_t>(states0_.size());
  const int64_t B = states0_[0].size(0), O = Y.size(1);
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == L + pl.temps, "rnnkit program_backward: expected ", L + pl.temps,
              " saved tensors, got ", saved.size());
  std::vector<Tensor> h0, weights, params, seqs, packed, temps, df, gin, gout, dtemp, dparam;
  for (int64_t i = 0; i < L; ++i) {
    h0.push_back(contig(states0_[i]));
    packed.push_back(contig(saved[i]));
    df.push_back(contig(dfinals[i]));
    gin.push_back(at::empty_like(h0[i]));
    gout.push_back(at::empty_like(h0[i]));
  }
  for (const Tensor& t : weights_) weights.push_back(t);
  for (const Tensor& t : params_) {
    params.push_back(contig(t));
    dparam.push_back(at::zeros({B, t.numel()}, opts));
  }
  for (const Tensor& t : seqs_) seqs.push_back(contig(t));
  for (int64_t i = 0; i < pl.S; ++i) {
    const SlotD& d = pl.slots[i];
    if (d.kind != kTemp) continue;
    temps.push_back(contig(saved[L + pl.temp_of[i]]));
    dtemp.push_back(pl.matmul_out[i] ? at::zeros({N, d.width}, opts) : at::empty({B, d.width}, opts));
  }
  Tensor dYw = dY.contiguous().clone(), dX = at::zeros({N, G}, opts);
  const std::vector<SplitGemm<T>> mmt = step_multiplies<T>(pl, weights, s, true);
  std::vector<T*> p(2 * pl.S, nullptr);
  std::vector<int64_t> ld(2 * pl.S, 0);
  for (int64_t t = s.steps() - 1; t >= 0; --t) {
    const int64_t n = s.n[t], off = s.off[t], next = t + 1 < s.steps() ? s.n[t + 1] : 0;
    if (n == 0) continue;
    for (int64_t i = 0; i < L; ++i) {  // sequences whose last step is t start from d final
      const int64_t w = h0[i].size(1);
      copy_rows<T>(ptr<T>(gout[i]), ptr<T>(df[i]), next, n, w);
      std::memset(ptr<T>(gin[i]), 0, sizeof(T) * n * w);
    }
    for (int64_t i = 0; i < pl.S; ++i) {
      const SlotD& d = pl.slots[i];
      const int64_t w = d.width, g = pl.S + i;
      ld[i] = ld[g] = w;
      switch (d.kind) {
        case kStep:
          p[i] = ptr<T>(xc) + off * G + d.index, p[g] = ptr<T>(dX) + off * G + d.index, ld[i] = ld[g] = G;
          break;
        case kStateIn:
          p[i] = t == 0 ? ptr<T>(h0[d.index]) : ptr<T>(packed[d.index]) + s.off[t - 1] * w;
          p[g] = ptr<T>(gin[d.index]);
          break;
        case kStateOut: p[i] = ptr<T>(packed[d.index]) + off * w, p[g] = ptr<T>(gout[d.index]); break;
        case kOutput: p[i] = ptr<T>(Y) + off * O, p[g] = ptr<T>(dYw) + off * O, ld[i] = ld[g] = O; break;
        case kTemp: {
          const int64_t k = pl.temp_of[i];
          p[i] = ptr<T>(temps[k]) + off * w;
          p[g] = ptr<T>(dtemp[k]) + (pl.matmul_out[i] ? off * w : 0);
          if (!pl.matmul_out[i]) std::memset(p[g], 0, sizeof(T) * n * w);
          break;
        }
        case kParam: p[i] = ptr<T>(params.at(d.index)), ld[i] = 0, p[g] = ptr<T>(dparam.at(d.index)); break;
        default: p[i] = ptr<T>(seqs.at(d.index)), p[g] = nullptr; break;
      }
    }
    size_t m = mmt.size();
    for (auto it = pl.steps.rbegin(); it != pl.steps.rend(); ++it) {
      if (it->type == 0) {
        run_stage<T>(fns.at(it->a), it->b, n, p, ld);
      } else {
        const int64_t lhs = pl.S + it->a, out = pl.S + it->c;
        TORCH_CHECK(p[lhs], "rnnkit program_backward: a multiply's left side has no gradient (a seq slot)");
        mmt[--m](n, {p[out]}, ld[out], T(1), p[lhs], ld[lhs]);
      }
    }
    std::swap(gin, gout);  // d state_in of step t is d state_out of step t - 1
  }
  std::vector<Tensor> out{dX};
  const int64_t first = s.steps() ? s.n[0] : 0;
  for (int64_t i = 0; i < L; ++i) {  // sequences of no step keep d final
    copy_rows<T>(ptr<T>(gout[i]), ptr<T>(df[i]), first, B, h0[i].size(1));
    out.push_back(gout[i]);
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
