// Fused LSTM kernels: TF's LSTMCell family (peepholes, cell clip, projection, forget bias,
// variational state masks) and TF contrib's LayerNormBasicLSTMCell.
//
// Forward per sequence: G = x @ W_x (one matmul for all steps); per step t
//   G_t += h_{t-1} @ W_h                          (one matmul)
//   i, g, f, o = sig(i + w_i c), tanh(g), sig(f + forget_bias + w_f c), o        (one fused loop)
//   c_t = clip(f * c_{t-1} + i * g); o = sig(o + w_o c_t); m = o * tanh(c_t)
//   h_t = clip(m @ W_proj)  (with a projection)
// Saved for backward: the activated gates G (total, 4H) and c_t (total, H); h_t are the outputs.
// Backward through time: per step one fused loop and one matmul dG_t @ W_h^T; the weight
// gradients are single matmuls over all steps (Hprev^T dG, x^T dG).
#include "common.h"
#include "ops.h"

#include <optional>

namespace rnnkit {
namespace {

struct LstmCfg {
  int64_t oi, og, of, oo;  // block offsets (in units of H) of i, g, f, o
  double forget_bias, cell_clip, proj_clip;
};

LstmCfg cfg_of(at::IntArrayRef order, double fb, double cc, double pc) {
  TORCH_CHECK(order.size() == 4, "rnnkit lstm: gate_order must list the blocks of i, g, f, o");
  return {order[0], order[1], order[2], order[3], fb, cc, pc};
}

template <typename T>
std::vector<Tensor> lstm_fwd(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                             const Tensor& h0_, const Tensor& c0_, const Tensor& w_h, const OptT& peep,
                             const OptT& w_proj, const OptT& mask_h_, const OptT& mask_c_, const LstmCfg& k,
                             bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0_.size(0), P = h0_.size(1), H = c0_.size(1), G4 = 4 * H;
  const bool proj = has(w_proj);
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  Mat<T> wx = mat_of<T>(w_x), wh = step_weights<T>(w_h, rows0, s.steps());
  Mat<T> wp;
  if (proj) wp = step_weights<T>(*w_proj, rows0, s.steps());
  Tensor bias_c = has(bias) ? contig(*bias) : at::zeros({G4}, x.options());
  Tensor peep_c = has(peep) ? contig(*peep) : Tensor();
  Tensor mh_c = has(mask_h_) ? contig(*mask_h_) : Tensor();
  Tensor mc_c = has(mask_c_) ? contig(*mask_c_) : Tensor();
  const T* bp = bias_c.data_ptr<T>();
  const T* pp = peep_c.defined() ? peep_c.data_ptr<T>() : nullptr;
  const T* mh = mh_c.defined() ? mh_c.data_ptr<T>() : nullptr;
  const T* mc = mc_c.defined() ? mc_c.data_ptr<T>() : nullptr;
  const T fb = static_cast<T>(k.forget_bias), cclip = static_cast<T>(k.cell_clip),
          pclip = static_cast<T>(k.proj_clip);
  // A step worth splitting runs one chunk of units per thread (its columns of W_h, then its units'
  // update: threads meet once per step); otherwise one multiply on MKL's packed weights.
  const Units u = split_units(H, rows0, P, 4);
  const Units up = !proj ? Units() : split_units(P, rows0, H, 1);
  const ChunkGemm<T> chunk_w(wh, 4, H, u, rows0, s.steps());
  std::optional<ChunkGemm<T>> chunk_p;
  if (proj) chunk_p.emplace(wp, 1, P, up, rows0, s.steps());

  Tensor G = project_inputs<T>(x, {wx});  // (total, 4H): becomes the saved activated gates
  StepStates<T> hs(h0_);
  Tensor cs = c0_.contiguous().clone();
  Tensor Y = at::empty({s.total, P}, x.options());
  Tensor C = at::empty({save ? s.total : B, H}, x.options());
  Tensor S = at::empty({B, G4}, x.options());                 // h_{t-1} @ W_h, chunked columns
  Tensor M = proj ? at::empty({B, H}, x.options()) : Tensor();  // o * tanh(c) before the projection
  T *gp = G.data_ptr<T>(), *csp = cs.data_ptr<T>(), *yp = Y.data_ptr<T>(), *cbase = C.data_ptr<T>(),
    *sp = S.data_ptr<T>();
  T* mp = proj ? M.data_ptr<T>() : nullptr;
  const int64_t order[4] = {k.oi, k.og, k.of, k.oo};

  for (int64_t t = 0; t < s.steps() && hs.start(s, t); ++t) {
    const int64_t n = s.n[t], off = s.off[t];
    T* hp = hs.h();
    T* hn = hs.h_next();
    T* g = gp + off * G4;
    T* cbuf = save ? cbase + off * H : cbase;
    for_chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], w = u.hi[c] - u.lo[c];
      if (w == 0) return;
      chunk_w(c, lo, w, n, hp, P, sp + 4 * lo, G4);
      for (int64_t b = 0; b < n; ++b) {
        T* gr = g + b * G4;
        const T* sr = sp + b * G4 + 4 * lo;
        T* blk[4];
        for (int q = 0; q < 4; ++q) {
          T* __restrict__ dst = gr + order[q] * H + lo;
          const T* __restrict__ a = sr + order[q] * w;
          const T* __restrict__ bq = bp + order[q] * H + lo;
          for (int64_t j = 0; j < w; ++j) dst[j] += a[j] + bq[j];
          blk[q] = dst;
        }
        T *__restrict__ gi = blk[0], *__restrict__ gg = blk[1], *__restrict__ gf = blk[2], *__restrict__ go = blk[3];
        T* __restrict__ cp = csp + b * H + lo;
        T* __restrict__ cn = cbuf + b * H + lo;
        T* __restrict__ m = proj ? mp + b * H + lo : yp + (off + b) * P + lo;
        if (pp) {
          const T *wi = pp + lo, *wf = pp + H + lo;
          for (int64_t j = 0; j < w; ++j) {
            gi[j] += wi[j] * cp[j];
            gf[j] += wf[j] * cp[j];
          }
        }
        sigmoid_inplace(gi, w);
        sigmoid_inplace(gf, w, fb);
        tanh_inplace(gg, w);
        for (int64_t j = 0; j < w; ++j) cn[j] = gf[j] * cp[j] + gi[j] * gg[j];
        if (cclip > T(0)) {
          for (int64_t j = 0; j < w; ++j) cn[j] = std::min(std::max(cn[j], -cclip), cclip);
        }
        if (pp) {
          const T* wo = pp + 2 * H + lo;
          for (int64_t j = 0; j < w; ++j) go[j] += wo[j] * cn[j];
        }
        sigmoid_inplace(go, w);
        for (int64_t j = 0; j < w; ++j) m[j] = tanh_s(cn[j]);
        for (int64_t j = 0; j < w; ++j) m[j] *= go[j];
        if (mc) {
          const T* mcr = mc + b * H + lo;
          for (int64_t j = 0; j < w; ++j) cp[j] = cn[j] * mcr[j];
        } else {
          std::memcpy(cp, cn, sizeof(T) * w);
        }
        if (!proj) store_state(hn + b * P + lo, m, mh ? mh + b * P + lo : nullptr, w);
      }
    });
    if (proj) {  // the projection reads every unit of m: a second phase, split over its outputs
      T* y = yp + off * P;
      for_chunks(up, [&](int64_t c) {
        const int64_t lo = up.lo[c], w = up.hi[c] - up.lo[c];
        if (w == 0) return;
        (*chunk_p)(c, lo, w, n, mp, H, y + lo, P);
        for (int64_t b = 0; b < n; ++b) {
          T* yr = y + b * P + lo;
          T* hr = hn + b * P + lo;
          if (pclip > T(0)) {
            for (int64_t j = 0; j < w; ++j) yr[j] = std::min(std::max(yr[j], -pclip), pclip);
          }
          store_state(hr, yr, mh ? mh + b * P + lo : nullptr, w);
        }
      });
    }
    hs.finish_step();
  }
  Tensor hT = hs.final_state();
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

template <typename T>
void lstm_bwd_row(bool peep, bool clip, bool mask, int64_t H, const T* si, const T* sg, const T* sf, const T* so,
                  const T* cn, const T* cp, const T* dm, const T* mcr, const T* pp, T cclip, T* dcs, T* di, T* dg,
                  T* df, T* dO) {
#define RNNKIT_ROW(P, C, M) lstm_bwd_row_impl<T, P, C, M>(H, si, sg, sf, so, cn, cp, dm, mcr, pp, cclip, dcs, di, dg, df, dO)
  if (peep) {
    if (clip) {
      if (mask) RNNKIT_ROW(true, true, true); else RNNKIT_ROW(true, true, false);
    } else {
      if (mask) RNNKIT_ROW(true, false, true); else RNNKIT_ROW(true, false, false);
    }
  } else {
    if (clip) {
      if (mask) RNNKIT_ROW(false, true, true); else RNNKIT_ROW(false, true, false);
    } else {
      if (mask) RNNKIT_ROW(false, false, true); else RNNKIT_ROW(false, false, false);
    }
  }
#undef RNNKIT_ROW
}

template <typename T>
std::vector<Tensor> lstm_bwd(const Tensor& dY_, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                             const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_h, const OptT& peep, const OptT& w_proj,
                             const OptT& mask_h_, const OptT& mask_c_, const Tensor& Y, const Tensor& G_,
                             const Tensor& C_, const LstmCfg& k, bool need_dx) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), P = h0.size(1), H = c0.size(1), G4 = 4 * H;
  const bool proj = has(w_proj);
  Mat<T> wx = mat_of<T>(w_x), wh = mat_of<T>(w_h);
  Mat<T> wp;
  if (proj) wp = mat_of<T>(*w_proj);
  Tensor peep_c = has(peep) ? contig(*peep) : Tensor();
  Tensor mh_c = has(mask_h_) ? contig(*mask_h_) : Tensor();
  Tensor mc_c = has(mask_c_) ? contig(*mask_c_) : Tensor();
  const T* pp = peep_c.defined() ? peep_c.data_ptr<T>() : nullptr;
  const T* mh = mh_c.defined() ? mh_c.data_ptr<T>() : nullptr;
  const T* mc = mc_c.defined() ? mc_c.data_ptr<T>() : nullptr;
  const T cclip = static_cast<T>(k.cell_clip), pclip = static_cast<T>(k.proj_clip);

  Tensor G = contig(G_), C = contig(C_), Yc = contig(Y), dY = contig(dY_);
  Tensor h0c = contig(h0), c0c = contig(c0);
  Tensor Hprev = previous_states<T>(s, h0c, Yc, mh);
  Tensor Cprev = previous_states<T>(s, c0c, C, mc);
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

  for (int64_t t = s.steps() - 1; t >= 0; --t) {
    const int64_t n = s.n[t], off = s.off[t];
    if (n == 0) continue;
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
    for_rows(n, G4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = off + b;
        const T* gr = gp + r * G4;
        const T *si = gr + k.oi * H, *sg = gr + k.og * H, *sf = gr + k.of * H, *so = gr + k.oo * H;
        const T* cn = cpp_ + r * H;
        const T* cp = cprevp + r * H;
        const T* dm = dmp + b * H;
        T* dcs = dcp + b * H;
        T* dgr = dgp + r * G4;
        T *di = dgr + k.oi * H, *dg = dgr + k.og * H, *df = dgr + k.of * H, *dO = dgr + k.oo * H;
        const T* mcr = mc ? mc + b * H : nullptr;
        lstm_bwd_row<T>(pp != nullptr, cclip > T(0), mcr != nullptr, H, si, sg, sf, so, cn, cp, dm, mcr, pp, cclip,
                        dcs, di, dg, df, dO);
      }
    });
    step_wt(n, {dgp + off * G4}, G4, T(0), dhp, P);
  }

  const WeightGrads wg = weight_grads<T>(x, {wx}, dG, Hprev, dgp, need_dx);
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

// ---- layer-normalised LSTM (TF contrib's LayerNormBasicLSTMCell) ------------------------------

// Moments of a row: its mean and 1 / sqrt(var + eps), two passes (TF's tf.nn.moments).
template <typename T>
inline T row_moments(const T* __restrict__ v, int64_t H, T eps, T& mean_out) {
  T mean = 0;
#pragma omp simd reduction(+ : mean)
  for (int64_t j = 0; j < H; ++j) mean += v[j];
  mean /= T(H);
  T var = 0;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < H; ++j) {
    const T d = v[j] - mean;
    var += d * d;
  }
  mean_out = mean;
  return T(1) / std::sqrt(var / T(H) + eps);
}

// Normalises v in place (v becomes xhat, saved for backward) and writes act(xhat * gamma + beta + shift)
// to a, in one pass; returns rstd. ACT: 0 sigmoid, 1 tanh, 2 none.
template <int ACT, typename T>
inline T norm_act_row(T* __restrict__ v, int64_t H, T eps, const T* __restrict__ gamma, const T* __restrict__ beta,
                      T shift, T* __restrict__ a) {
  T mean;
  const T rstd = row_moments(v, H, eps, mean);
  for (int64_t j = 0; j < H; ++j) {
    const T xhat = (v[j] - mean) * rstd;
    v[j] = xhat;
    const T y = xhat * gamma[j] + beta[j] + shift;
    a[j] = ACT == 0 ? sigmoid_s(y) : (ACT == 1 ? tanh_s(y) : y);
  }
  return rstd;
}

// d(pre) of y = xhat * gamma + beta given dy: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
template <typename T>
inline void norm_row_backward(const T* __restrict__ da, const T* __restrict__ xhat, const T* __restrict__ gamma,
                              T rstd, int64_t H, T* __restrict__ dpre, T* __restrict__ dgamma, T* __restrict__ dbeta) {
  T m1 = 0, m2 = 0;
#pragma omp simd reduction(+ : m1, m2)
  for (int64_t j = 0; j < H; ++j) {
    const T dxh = da[j] * gamma[j];
    m1 += dxh;
    m2 += dxh * xhat[j];
    dgamma[j] += da[j] * xhat[j];
    dbeta[j] += da[j];
  }
  m1 /= T(H);
  m2 /= T(H);
  for (int64_t j = 0; j < H; ++j) dpre[j] = rstd * (da[j] * gamma[j] - m1 - xhat[j] * m2);
}

template <typename T>
std::vector<Tensor> lnlstm_fwd(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                               const Tensor& h0,
                               const Tensor& c0, const Tensor& w_h, const Tensor& gamma_, const Tensor& beta_,
                               const OptT& mask_h_, const OptT& mask_c_, const LstmCfg& k, double eps_, bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), H = c0.size(1), G4 = 4 * H;
  TORCH_CHECK(h0.size(1) == H, "rnnkit lnlstm: h and c must have the same size");
  Mat<T> wx = mat_of<T>(w_x), wh = mat_of<T>(w_h);
  Tensor gamma = contig(gamma_), beta = contig(beta_);
  const T *gm = gamma.data_ptr<T>(), *bt = beta.data_ptr<T>();
  Tensor mh_c = has(mask_h_) ? contig(*mask_h_) : Tensor();
  Tensor mc_c = has(mask_c_) ? contig(*mask_c_) : Tensor();
  const T* mh = mh_c.defined() ? mh_c.data_ptr<T>() : nullptr;
  const T* mc = mc_c.defined() ? mc_c.data_ptr<T>() : nullptr;
  const T fb = static_cast<T>(k.forget_bias), eps = static_cast<T>(eps_);
  const int64_t order[4] = {k.oi, k.og, k.of, k.oo};

  Tensor XH = project_inputs<T>(x, {wx});  // pre-activations, normalised in place: saved
  if (has(bias)) XH.add_(*bias);
  Tensor hs = h0.contiguous().clone(), cs = c0.contiguous().clone();
  Tensor Y = at::empty({s.total, H}, x.options());
  Tensor CH = at::empty({save ? s.total : B, H}, x.options());
  Tensor RS = at::empty({save ? s.total : B, 5}, x.options());
  Tensor A = at::empty({B, G4}, x.options());  // activated gates of the current step
  // Every gate's norm needs whole rows: the multiply is split over threads by columns (one region), the
  // norms by rows (a second); a step not worth splitting runs one MKL-packed multiply.
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const Units cols = split_units(G4, rows0, H, 1);
  const ChunkGemm<T> chunk_w(wh, 1, G4, cols, rows0, s.steps());
  const std::vector<T> ones(H, T(1));           // stands for an absent mask: branch-free loops
  T *xh = XH.data_ptr<T>(), *hsp = hs.data_ptr<T>(), *csp = cs.data_ptr<T>(), *yp = Y.data_ptr<T>(),
    *chp = CH.data_ptr<T>(), *rsp = RS.data_ptr<T>(), *ap = A.data_ptr<T>();

  for (int64_t t = 0; t < s.steps(); ++t) {
    const int64_t n = s.n[t], off = s.off[t];
    if (n == 0) break;
    T* g = xh + off * G4;
    for_chunks(cols, [&](int64_t c) {
      const int64_t lo = cols.lo[c], w = cols.hi[c] - cols.lo[c];
      if (w > 0) chunk_w(c, lo, w, n, hsp, H, g + lo, G4, T(1));
    });
    T* chb = save ? chp + off * H : chp;
    T* rsb = save ? rsp + off * 5 : rsp;
    for_rows(n, G4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* gr = g + b * G4;
        T* ar = ap + b * G4;  // activated i, g, f, o in canonical order
        T* rs = rsb + b * 5;
        T *si = ar, *sg = ar + H, *sf = ar + 2 * H, *so = ar + 3 * H;  // canonical i, g, f, o
        rs[0] = norm_act_row<0>(gr + order[0] * H, H, eps, gm, bt, T(0), si);
        rs[1] = norm_act_row<1>(gr + order[1] * H, H, eps, gm + H, bt + H, T(0), sg);
        rs[2] = norm_act_row<0>(gr + order[2] * H, H, eps, gm + 2 * H, bt + 2 * H, fb, sf);
        rs[3] = norm_act_row<0>(gr + order[3] * H, H, eps, gm + 3 * H, bt + 3 * H, T(0), so);
        T* cp = csp + b * H;
        T* ch = chb + b * H;
        for (int64_t j = 0; j < H; ++j) ch[j] = sf[j] * cp[j] + si[j] * sg[j];
        T* y = yp + (off + b) * H;
        rs[4] = norm_act_row<2>(ch, H, eps, gm + 4 * H, bt + 4 * H, T(0), y);  // y holds c_t for now
        T* hr = hsp + b * H;
        const T* mcr = mc ? mc + b * H : ones.data();
        const T* mhr = mh ? mh + b * H : ones.data();
        for (int64_t j = 0; j < H; ++j) {
          const T cn = y[j];
          cp[j] = cn * mcr[j];
          y[j] = tanh_s(cn) * so[j];
          hr[j] = y[j] * mhr[j];
        }
      }
    });
  }
  if (!save) return {Y, hs, cs};
  return {Y, hs, cs, XH, CH, RS};
}

template <typename T>
std::vector<Tensor> lnlstm_bwd(const Tensor& dY_, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                               const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_h, const Tensor& gamma_, const Tensor& beta_, const OptT& mask_h_,
                               const OptT& mask_c_, const Tensor& Y, const Tensor& XH_, const Tensor& CH_,
                               const Tensor& RS_, const LstmCfg& k, bool need_dx) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t H = c0.size(1), G4 = 4 * H;
  Mat<T> wx = mat_of<T>(w_x), wh = mat_of<T>(w_h);
  Tensor gamma = contig(gamma_), beta = contig(beta_);
  const T *gm = gamma.data_ptr<T>(), *bt = beta.data_ptr<T>();
  Tensor mh_c = has(mask_h_) ? contig(*mask_h_) : Tensor();
  Tensor mc_c = has(mask_c_) ? contig(*mask_c_) : Tensor();
  const T* mh = mh_c.defined() ? mh_c.data_ptr<T>() : nullptr;
  const T* mc = mc_c.defined() ? mc_c.data_ptr<T>() : nullptr;
  const T fb = static_cast<T>(k.forget_bias);
  const int64_t order[4] = {k.oi, k.og, k.of, k.oo};

  Tensor XH = contig(XH_), CH = contig(CH_), RS = contig(RS_), dY = contig(dY_), Yc = contig(Y);
  Tensor Cn = CH.mul(gamma[4]).add(beta[4]);  // (total, H): the cell states c_t
  Tensor Hprev = previous_states<T>(s, contig(h0), Yc, mh);
  Tensor Cprev = previous_states<T>(s, contig(c0), Cn, mc);
  const T *xh = XH.data_ptr<T>(), *chp = CH.data_ptr<T>(), *rsp = RS.data_ptr<T>(), *cnp = Cn.data_ptr<T>(),
          *cprevp = Cprev.data_ptr<T>(), *dyp = dY.data_ptr<T>();
  Tensor dG = at::empty({s.total, G4}, x.options());
  Tensor dh = dhT.contiguous().clone(), dc = dcT.contiguous().clone();
  T *dgp = dG.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>();
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  // Per-thread sums of d gamma and d beta (5 norms each), reduced at the end.
  Tensor acc = at::zeros({nthreads, 2, 5, H}, x.options());
  T* accp = acc.data_ptr<T>();
  const std::vector<T> ones(H, T(1));
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const SplitGemm<T> step_wt({step_weights_t<T>(w_h, rows0, s.steps())}, rows0, s.steps());  // dh = dG @ W_h^T

  for (int64_t t = s.steps() - 1; t >= 0; --t) {
    const int64_t n = s.n[t], off = s.off[t];
    if (n == 0) continue;
    for_rows(n, G4, [&](int64_t b0, int64_t b1) {
      const int64_t tid = std::min<int64_t>(at::get_thread_num(), nthreads - 1);
      T* dgam = accp + tid * 10 * H;
      T* dbet = dgam + 5 * H;
      std::vector<T> buf(8 * H);
      T *a = buf.data(), *da = buf.data() + 4 * H;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = off + b;
        const T* gr = xh + r * G4;
        const T* rs = rsp + r * 5;
        for (int q = 0; q < 4; ++q) {
          const T* blk = gr + order[q] * H;
          const T *gq = gm + q * H, *bq = bt + q * H;
          T* aq = a + q * H;
          for (int64_t j = 0; j < H; ++j) aq[j] = blk[j] * gq[j] + bq[j];
        }
        T *si = a, *sg = a + H, *sf = a + 2 * H, *so = a + 3 * H;
        sigmoid_inplace(si, H);
        tanh_inplace(sg, H);
        sigmoid_inplace(sf, H, fb);
        sigmoid_inplace(so, H);
        const T* cn = cnp + r * H;
        const T* ch = chp + r * H;
        const T* cp = cprevp + r * H;
        const T* dyo = dyp + r * H;
        T* dcs = dcp + b * H;
        T* dhs = dhp + b * H;
        T *dai = da, *dag = da + H, *daf = da + 2 * H, *dao = da + 3 * H;
        // dcn into dag's slot first (reused below), state-norm backward into daf's slot.
        T* dcn = dag;
        const T* mcr = mc ? mc + b * H : ones.data();
        const T* mhr = mh ? mh + b * H : ones.data();
        for (int64_t j = 0; j < H; ++j) {
          const T dy = dyo[j] + mhr[j] * dhs[j];
          const T sc = tanh_s(cn[j]);
          dao[j] = dy * sc * so[j] * (T(1) - so[j]);
          dcn[j] = dcs[j] * mcr[j] + dy * so[j] * (T(1) - sc * sc);
        }
        T* dcpre = daf;
        norm_row_backward<T>(dcn, ch, gm + 4 * H, rs[4], H, dcpre, dgam + 4 * H, dbet + 4 * H);
        for (int64_t j = 0; j < H; ++j) {
          const T d = dcpre[j];
          dai[j] = d * sg[j] * si[j] * (T(1) - si[j]);
          dag[j] = d * si[j] * (T(1) - sg[j] * sg[j]);
          dcs[j] = d * sf[j];
          daf[j] = d * cp[j] * sf[j] * (T(1) - sf[j]);
        }
        T* dgr = dgp + r * G4;
        for (int q = 0; q < 4; ++q) {
          norm_row_backward<T>(da + q * H, gr + order[q] * H, gm + q * H, rs[q], H, dgr + order[q] * H,
                               dgam + q * H, dbet + q * H);
        }
      }
    });
    step_wt(n, {dgp + off * G4}, G4, T(0), dhp, H);
  }
  Tensor sums = acc.sum(0);  // (2, 5, H)
  const WeightGrads wg = weight_grads<T>(x, {wx}, dG, Hprev, dgp, need_dx);
  Tensor dbias = has(bias) ? dG.sum(0) : Tensor();
  return {wg.dx, wg.dwx[0], dbias, dh, dc, wg.dwh[0], sums[0], sums[1]};
}

}  // namespace

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                 const Tensor& h0, const Tensor& c0, const Tensor& w_h, const OptT& peep,
                                 const OptT& w_proj, const OptT& mask_h, const OptT& mask_c,
                                 at::IntArrayRef gate_order, double forget_bias, double cell_clip, double proj_clip,
                                 bool save) {
  check_float(x, "lstm_forward");
  const LstmCfg k = cfg_of(gate_order, forget_bias, cell_clip, proj_clip);
  if (x.scalar_type() == at::kDouble)
    return lstm_fwd<double>(x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, k, save);
  return lstm_fwd<float>(x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, k, save);
}

std::vector<Tensor> lstm_backward(const Tensor& dY, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                                  const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_h, const OptT& peep, const OptT& w_proj,
                                  const OptT& mask_h, const OptT& mask_c, const Tensor& Y, const Tensor& G,
                                  const Tensor& C, at::IntArrayRef gate_order, double forget_bias, double cell_clip,
                                  double proj_clip, bool need_dx) {
  check_float(x, "lstm_backward");
  const LstmCfg k = cfg_of(gate_order, forget_bias, cell_clip, proj_clip);
  if (x.scalar_type() == at::kDouble)
    return lstm_bwd<double>(dY, dhT, dcT, x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, Y,
                            G, C, k, need_dx);
  return lstm_bwd<float>(dY, dhT, dcT, x, w_x, bias, batch_sizes, h0, c0, w_h, peep, w_proj, mask_h, mask_c, Y, G,
                         C, k, need_dx);
}

std::vector<Tensor> lnlstm_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                   const Tensor& h0,
                                   const Tensor& c0, const Tensor& w_h, const Tensor& gamma, const Tensor& beta,
                                   const OptT& mask_h, const OptT& mask_c, at::IntArrayRef gate_order,
                                   double forget_bias, double eps, bool save) {
  check_float(x, "lnlstm_forward");
  const LstmCfg k = cfg_of(gate_order, forget_bias, 0.0, 0.0);
  if (x.scalar_type() == at::kDouble)
    return lnlstm_fwd<double>(x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, k, eps, save);
  return lnlstm_fwd<float>(x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, k, eps, save);
}

std::vector<Tensor> lnlstm_backward(const Tensor& dY, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                                    const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                                    const Tensor& c0, const Tensor& w_h, const Tensor& gamma, const Tensor& beta,
                                    const OptT& mask_h,
                                    const OptT& mask_c, const Tensor& Y, const Tensor& XH, const Tensor& CH,
                                    const Tensor& RS, at::IntArrayRef gate_order, double forget_bias, double eps,
                                    bool need_dx) {
  check_float(x, "lnlstm_backward");
  const LstmCfg k = cfg_of(gate_order, forget_bias, 0.0, 0.0);
  (void)eps;
  if (x.scalar_type() == at::kDouble)
    return lnlstm_bwd<double>(dY, dhT, dcT, x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, Y, XH, CH,
                              RS, k, need_dx);
  return lnlstm_bwd<float>(dY, dhT, dcT, x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, Y, XH, CH,
                           RS, k, need_dx);
}

}  // namespace rnnkit
