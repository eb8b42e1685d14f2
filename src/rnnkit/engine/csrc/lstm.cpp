// The LSTM's step: TF's LSTMCell family (peepholes, cell clip, projection, forget bias, variational state masks).
// Per step t, after loop.h's input projection G = x @ W_x of all steps:
//   G_t += h_{t-1} @ W_h                          (one matmul)
//   i, g, f, o = sig(i + w_i c), tanh(g), sig(f + forget_bias + w_f c), o        (one fused loop)
//   c_t = clip(f * c_{t-1} + i * g); o = sig(o + w_o c_t); m = o * tanh(c_t)
//   h_t = clip(m @ W_proj)  (with a projection)
// Saved for backward: the activated gates G (total, 4H) and c_t (total, H); h_t are the outputs.
// mask_r (B, P), recurrent dropout: the matmul reads h_{t-1} * mask_r (h0 * mask_r at the first step); the outputs
// and the carried state are h_t (times mask_h, a DropoutWrapper's state mask, when there is one).
// Backward through time: per step one fused loop and one matmul dG_t @ W_h^T; the weight
// gradients are single matmuls over all steps (Hprev^T dG, x^T dG).
#include "lstm.h"
#include "ops.h"

namespace rnnkit {
namespace {

template <typename T>
std::vector<Tensor> lstm_fwd(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                             const Tensor& h0, const Tensor& c0, const Tensor& w_h, const OptT& peep,
                             const OptT& w_proj, const OptT& mask_h, const OptT& mask_c, const OptT& mask_r,
                             const LstmCfg& k, bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), P = h0.size(1), H = c0.size(1), G4 = 4 * H;
  const bool proj = has(w_proj);
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  Mat<T> wx = mat_of<T>(w_x), wh = step_weights<T>(w_h, rows0, s.steps());
  Mat<T> wp;
  if (proj) wp = step_weights<T>(*w_proj, rows0, s.steps());
  Tensor bias_c = contig_or_zeros(bias, G4, h0.options());
  const Opt<T> peep_(peep), mh_(mask_h), mc_(mask_c), mr_(mask_r);
  const T* bp = bias_c.data_ptr<T>();
  const T *pp = peep_.p, *mh = mh_.p, *mc = mc_.p, *mr = mr_.p;
  const T fb = static_cast<T>(k.forget_bias), cclip = static_cast<T>(k.cell_clip),
          pclip = static_cast<T>(k.proj_clip);
  // Steps in blocks of rows (loop.h forward_rows), each block all its steps on a thread of its own. Otherwise a step
  // worth splitting runs one chunk of units per thread (its columns of W_h, then its units' update: threads meet once
  // per step), else one multiply on MKL's packed weights.
  const int64_t blocks = bf16_row_blocks<T>(s, 4 * H * P + (proj ? H * P : 0), mh || mc || mr);
  const int64_t rows = blocks > 1 ? rows0 / blocks : rows0;  // (a block's rows, for the multiplies' choice)
  const Units u = blocks > 1 ? Units{{0}, {H}} : split_units(H, rows0, P, 4, s.steps());
  const Units up = !proj ? Units() : blocks > 1 ? Units{{0}, {P}} : split_units(P, rows0, H, 1, s.steps());
  const ChunkGemm<T> chunk_w(wh, 4, H, u, rows, s.steps());
  std::optional<ChunkGemm<T>> chunk_p;
  if (proj) chunk_p.emplace(wp, 1, P, up, rows, s.steps());

  Tensor G = project_inputs<T>(x, {wx}, s.steps(), !save);  // (total, 4H): becomes the saved activated gates
  Tensor cs = c0.contiguous().clone();
  Tensor Y = at::empty({s.total, P}, h0.options());
  Tensor C = at::empty({save ? s.total : B, H}, h0.options());
  Tensor S = at::empty({B, G4}, h0.options());                 // h_{t-1} @ W_h, chunked columns
  Tensor M = proj ? at::empty({B, H}, h0.options()) : Tensor();  // o * tanh(c) before the projection
  T *gp = G.data_ptr<T>(), *csp = cs.data_ptr<T>(), *yp = Y.data_ptr<T>(), *cbase = C.data_ptr<T>(),
    *sp = S.data_ptr<T>();
  T* mp = proj ? M.data_ptr<T>() : nullptr;
  const int64_t order[4] = {k.oi, k.og, k.of, k.oo};
  MatmulInput<T> hin(mr, B, P, h0.options());
  // The gates and the cell of rows [r0, r0 + n) of the batch (packed rows from off), units [lo, lo + w) (chunk c):
  // hp, hm = those rows of h_{t-1} and of what the matmul reads (h * mask_r); hn = those rows of h_t.
  auto cells = [&](int64_t r0, int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hm, T* hn) {
    T* g = gp + off * G4;
    T* cbuf = save ? cbase + off * H : cbase + r0 * H;
    T* S0 = sp + r0 * G4;
    chunk_w(c, lo, w, n, hm, P, S0 + 4 * lo, G4);
    for (int64_t b = 0; b < n; ++b) {
      T* gr = g + b * G4;
      const T* sr = S0 + b * G4 + 4 * lo;
      T* blk[4];
      for (int q = 0; q < 4; ++q) {
        T* __restrict__ dst = gr + order[q] * H + lo;
        const T* __restrict__ a = sr + order[q] * w;
        const T* __restrict__ bq = bp + order[q] * H + lo;
        for (int64_t j = 0; j < w; ++j) dst[j] += a[j] + bq[j];
        blk[q] = dst;
      }
      T* __restrict__ cp = csp + (r0 + b) * H + lo;
      T* __restrict__ cn = cbuf + b * H + lo;
      T* __restrict__ m = proj ? mp + (r0 + b) * H + lo : yp + (off + b) * P + lo;
      lstm_units(blk, cp, cn, m, pp ? pp + lo : nullptr, H, w, fb, cclip);
      if (mc) {
        const T* mcr = mc + b * H + lo;
        for (int64_t j = 0; j < w; ++j) cp[j] = cn[j] * mcr[j];
      } else {
        std::memcpy(cp, cn, sizeof(T) * w);
      }
      if (!proj) store_state(hn + b * P + lo, m, mh ? mh + b * P + lo : nullptr, w);
    }
  };
  // The projection, which reads every unit of m: a second phase, split over its outputs [lo, lo + w).
  auto projected = [&](int64_t r0, int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, T* hn) {
    T* y = yp + off * P;
    (*chunk_p)(c, lo, w, n, mp + r0 * H, H, y + lo, P);
    for (int64_t b = 0; b < n; ++b) {
      T* yr = y + b * P + lo;
      T* hr = hn + b * P + lo;
      if (pclip > T(0)) {
        const T clip = pclip;  // (a copy: the captured reference might alias yr, and the loop stayed scalar)
        for (int64_t j = 0; j < w; ++j) yr[j] = std::min(std::max(yr[j], -clip), clip);
      }
      store_state(hr, yr, mh ? mh + b * P + lo : nullptr, w);
    }
  };
  Tensor hT;
  if (blocks > 1) {
    hT = forward_rows<T>(s, h0, row_bounds(s, rows0, blocks), [&](int64_t r0, int64_t n, int64_t off, const T* hp,
                                                                  T* hn) {
      cells(r0, 0, 0, H, n, off, hp, hn);
      if (proj) projected(r0, 0, 0, P, n, off, hn);
    });
  } else {
    auto begin = [&](int64_t n, const T* hp) { hin.read(n, hp); };
    auto chunk = [&](int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hp, T* hn) {
      cells(0, c, lo, w, n, off, mr ? hin.h : hp, hn);
    };
    auto project = [&](int64_t n, int64_t off, const T*, T* hn) {
      if (!proj) return;
      for_chunks(up, [&](int64_t c) {
        if (up.hi[c] > up.lo[c]) projected(0, c, up.lo[c], up.hi[c] - up.lo[c], n, off, hn);
      });
    };
    hT = forward_loop<T>(s, h0, u, chunk, project, begin);
  }
  if (!save) return {Y, hT, cs};
  return {Y, hT, cs, G, C};
}

// One row of the LSTM backward step, specialised on the options so that every variant vectorises.
template <typename T, bool PEEP, bool CLIP, bool MASK>
void lstm_bwd_row_impl(int64_t H, const T* __restrict__ si, const T* __restrict__ sg, const T* __restrict__ sf,
                       const T* __restrict__ so, const T* __restrict__ cn, const T* __restrict__ cp,
                       const T* __restrict__ dm, const T* __restrict__ mcr, const T* __restrict__ pp, T cclip,
                       T* __restrict__ dcs, T* __restrict__ di, T* __restrict__ dg, T* __restrict__ df,
                       T* __restrict__ dO) {
  for (int64_t j = 0; j < H; ++j) {
    const T sc = tanh_s(cn[j]);
    const T d_o = dm[j] * sc * so[j] * (T(1) - so[j]);
    T dcn = (MASK ? dcs[j] * mcr[j] : dcs[j]) + dm[j] * so[j] * (T(1) - sc * sc);
    if (PEEP) dcn += d_o * pp[2 * H + j];
    if (CLIP) {
      const T cpre = sf[j] * cp[j] + si[j] * sg[j];
      dcn = (cpre < -cclip || cpre > cclip) ? T(0) : dcn;
    }
    const T d_i = dcn * sg[j] * si[j] * (T(1) - si[j]);
    const T d_f = dcn * cp[j] * sf[j] * (T(1) - sf[j]);
    T dprev = dcn * sf[j];
    if (PEEP) dprev += d_i * pp[j] + d_f * pp[H + j];
    di[j] = d_i;
    dg[j] = dcn * si[j] * (T(1) - sg[j] * sg[j]);
    df[j] = d_f;
    dO[j] = d_o;
    dcs[j] = dprev;
  }
}

// The row function for the options: one of the 8 specialisations, chosen once per call (not per row).
template <typename T>
auto lstm_bwd_row(bool peep, bool clip, bool mask) {
  using Row = void (*)(int64_t, const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*,
                       const T*, T, T*, T*, T*, T*, T*);
  static constexpr Row rows[8] = {
      lstm_bwd_row_impl<T, false, false, false>, lstm_bwd_row_impl<T, false, false, true>,
      lstm_bwd_row_impl<T, false, true, false>,  lstm_bwd_row_impl<T, false, true, true>,
      lstm_bwd_row_impl<T, true, false, false>,  lstm_bwd_row_impl<T, true, false, true>,
      lstm_bwd_row_impl<T, true, true, false>,   lstm_bwd_row_impl<T, true, true, true>};
  return rows[(peep ? 4 : 0) + (clip ? 2 : 0) + (mask ? 1 : 0)];
}

template <typename T>
std::vector<Tensor> lstm_bwd(const Tensor& dY_, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                             const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_h, const OptT& peep, const OptT& w_proj,
                             const OptT& mask_h, const OptT& mask_c, const OptT& mask_r, const Tensor& Y,
                             const Tensor& G_, const Tensor& C_, const LstmCfg& k, bool need_dx) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), P = h0.size(1), H = c0.size(1), G4 = 4 * H;
  const bool proj = has(w_proj);
  Mat<T> wx = mat_of<T>(w_x);
  Mat<T> wp;
  if (proj) wp = mat_of<T>(*w_proj);
  const Opt<T> peep_(peep), mh_(mask_h), mc_(mask_c), mr_(mask_r);
  const T *pp = peep_.p, *mh = mh_.p, *mc = mc_.p, *mr = mr_.p;
  const T cclip = static_cast<T>(k.cell_clip), pclip = static_cast<T>(k.proj_clip);

  Tensor G = contig(G_), C = contig(C_), Yc = contig(Y), dY = contig(dY_);
  Tensor h0c = contig(h0), c0c = contig(c0);
  Tensor Hprev = previous_states<T>(s, h0c, Yc, mh);
  Tensor Cprev = previous_states<T>(s, c0c, C, mc);
  Tensor HMprev = mr ? masked_rows<T>(s, Hprev, mr) : Hprev;  // what the matmul read: dW_h = HMprev^T dG
  const T *gp = G.data_ptr<T>(), *cpp_ = C.data_ptr<T>(), *cprevp = Cprev.data_ptr<T>(), *dyp = dY.data_ptr<T>();

  Tensor Mall, Ppre, dP;
  if (proj) {
    // m = o * tanh(c) for every step: the projection's input, for its weight gradient and clip mask.
    Mall = at::empty({s.total, H}, x.options());
    T* ma = Mall.data_ptr<T>();
    for_rows(s.total, H, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* go = gp + r * G4 + k.oo * H;
        const T* cr = cpp_ + r * H;
        T* mr = ma + r * H;
        for (int64_t j = 0; j < H; ++j) mr[j] = go[j] * tanh_s(cr[j]);
      }
    });
    if (pclip > T(0)) {
      Ppre = at::empty({s.total, P}, x.options());
      if (s.total > 0) gemm_xw<T>(s.total, ma, H, wp, T(1), T(0), Ppre.data_ptr<T>(), P);
    }
    dP = at::empty({s.total, P}, x.options());
  }
  Tensor dG = at::empty({s.total, G4}, x.options());
  Tensor dh = dhT.contiguous().clone(), dc = dcT.contiguous().clone();
  Tensor dM = at::empty({B, H}, x.options());
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const SplitGemm<T> step_wt({step_weights_t<T>(w_h, rows0, s.steps())}, rows0, s.steps());  // dh = dG @ W_h^T
  std::optional<StepGemm<T>> step_pt;
  if (proj) step_pt.emplace(transposed(wp), rows0);
  T *dgp = dG.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>(), *dmp = dM.data_ptr<T>();
  T* dpp = proj ? dP.data_ptr<T>() : nullptr;
  const T* ppre = Ppre.defined() ? Ppre.data_ptr<T>() : nullptr;
  const auto row_fn = lstm_bwd_row<T>(pp != nullptr, cclip > T(0), mc != nullptr);

  auto begin = [&](int64_t n, int64_t off) {
    // Gradient reaching h_t: from the outputs and, through the (masked) state, from step t + 1.
    T* dy = proj ? dpp + off * P : dmp;
    const T* dyo = dyp + off * P;
    for (int64_t i = 0; i < n * P; ++i) dy[i] = dyo[i] + (mh ? mh[i] * dhp[i] : dhp[i]);
    if (proj) {
      if (ppre) {
        const T* pr = ppre + off * P;
        for (int64_t i = 0; i < n * P; ++i) dy[i] = (pr[i] < -pclip || pr[i] > pclip) ? T(0) : dy[i];
      }
      (*step_pt)(n, dy, P, T(0), dmp, H);
    }
  };
  auto rows = [&](int64_t b0, int64_t b1, int64_t off) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = off + b;
      const T* gr = gp + r * G4;
      T* dgr = dgp + r * G4;
      row_fn(H, gr + k.oi * H, gr + k.og * H, gr + k.of * H, gr + k.oo * H, cpp_ + r * H, cprevp + r * H,
             dmp + b * H, mc ? mc + b * H : nullptr, pp, cclip, dcp + b * H, dgr + k.oi * H, dgr + k.og * H,
             dgr + k.of * H, dgr + k.oo * H);
    }
  };
  auto recur = [&](int64_t n, int64_t off) {
    step_wt(n, {dgp + off * G4}, G4, T(0), dhp, P);  // d(h_{t-1} * mask_r): h_{t-1} feeds nothing but the matmul
    unmask_grad(dhp, mr, n * P);
  };
  backward_loop(s, G4, rows, recur, begin);

  const WeightGrads wg = weight_grads<T>(x, {wx}, dG, HMprev, dgp, need_dx);
  Tensor dbias = has(bias) ? dG.sum(0) : Tensor();
  Tensor dpeep;
  if (pp) {
    dpeep = at::stack({dG.narrow(1, k.oi * H, H).mul(Cprev).sum(0), dG.narrow(1, k.of * H, H).mul(Cprev).sum(0),
                       dG.narrow(1, k.oo * H, H).mul(C).sum(0)});
  }
  Tensor dwp;
  if (proj) {
    dwp = at::empty({H, P}, x.options());
    gemm_atd<T>(s.total, H, P, Mall.data_ptr<T>(), H, dpp, P, T(0), dwp.data_ptr<T>(), P);
  }
  return {wg.dx, wg.dwx[0], dbias, dh, dc, wg.dwh[0], dpeep, dwp};
}

}  // namespace

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                 const Tensor& h0, const Tensor& c0, const Tensor& w_h, const OptT& peep,
                                 const OptT& w_proj, const OptT& mask_h, const OptT& mask_c,
                                 at::IntArrayRef gate_order, double forget_bias, double cell_clip, double proj_clip,
                                 bool save, const OptT& mask_r) {
  return dispatch_float(x, "lstm_forward", [&](auto z) {
    const LstmCfg k = cfg_of(gate_order, forget_bias, cell_clip, proj_clip);
    return lstm_fwd<decltype(z)>(x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, mask_r, k,
                                 save);
  }, /*bf16_x=*/true);
}

std::vector<Tensor> lstm_backward(const Tensor& dY, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                                  const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_h, const OptT& peep, const OptT& w_proj,
                                  const OptT& mask_h, const OptT& mask_c, const Tensor& Y, const Tensor& G,
                                  const Tensor& C, at::IntArrayRef gate_order, double forget_bias, double cell_clip,
                                  double proj_clip, bool need_dx, const OptT& mask_r) {
  return dispatch_float(x, "lstm_backward", [&](auto z) {
    const LstmCfg k = cfg_of(gate_order, forget_bias, cell_clip, proj_clip);
    return lstm_bwd<decltype(z)>(dY, dhT, dcT, x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c,
                                 mask_r, Y, G, C, k, need_dx);
  });
}

}  // namespace rnnkit
