// The layer-normalised LSTM's step (TF contrib's LayerNormBasicLSTMCell): every gate pre-activation and the new
// cell state normalised over the units, each with its own gain and shift (gamma, beta (5, H): i, g, f, o, c);
// no peepholes, clips or projection. Saved: the normalised pre-activations (total, 4H), the normalised cell
// states (total, H) and the five 1 / sqrt(var + eps) of each row (total, 5). The time loop is loop.h's.
// mask_r (B, H), recurrent dropout: the matmul reads h * mask_r; the outputs and the carried state do not.
#include "lstm.h"
#include "ops.h"

namespace rnnkit {
namespace {

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

// The step's outputs from the normalised cell state c_t (in y): c_t carried (times the state mask mc), h_t =
// tanh(c_t) * o into y and (times the state mask mh) into the next state h. (Pointers the compiler may take apart:
// written inline with six plain pointers, this loop stayed scalar, a third of a bf16 step's elementwise time.)
template <typename T>
inline void ln_output(T* __restrict__ y, T* __restrict__ c, T* __restrict__ h, const T* __restrict__ o,
                      const T* __restrict__ mc, const T* __restrict__ mh, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T cn = y[j];
    c[j] = cn * mc[j];
    y[j] = tanh_s(cn) * o[j];
    h[j] = y[j] * mh[j];
  }
}

// The backward's elementwise passes, each its own function with unaliased pointers (inline in the step, their loops
// stayed scalar). Through h_t = tanh(c_t) * o: dy = dy_out + mask_h * dh, d o's pre-activation (dao) and the
// normalised cell's gradient dcn (with the carried cell's, times its mask).
template <typename T>
inline void ln_bwd_output(const T* __restrict__ dyo, const T* __restrict__ mh, const T* __restrict__ dh,
                          const T* __restrict__ cn, const T* __restrict__ so, const T* __restrict__ mc,
                          const T* __restrict__ dc, T* __restrict__ dao, T* __restrict__ dcn, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T dy = dyo[j] + mh[j] * dh[j];
    const T sc = tanh_s(cn[j]);
    dao[j] = dy * sc * so[j] * (T(1) - so[j]);
    dcn[j] = dc[j] * mc[j] + dy * so[j] * (T(1) - sc * sc);
  }
}

// Through c_t = f * c_{t-1} + i * g, from d (c_t before its norm, given in daf): the activated gates' d (dai, dag,
// daf) and the carried cell's (dc).
template <typename T>
inline void ln_bwd_cell(const T* __restrict__ si, const T* __restrict__ sg, const T* __restrict__ sf,
                        const T* __restrict__ cp, T* __restrict__ dai, T* __restrict__ dag, T* __restrict__ daf,
                        T* __restrict__ dc, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T d = daf[j];
    dai[j] = d * sg[j] * si[j] * (T(1) - si[j]);
    dag[j] = d * si[j] * (T(1) - sg[j] * sg[j]);
    dc[j] = d * sf[j];
    daf[j] = d * cp[j] * sf[j] * (T(1) - sf[j]);
  }
}

template <typename T>
std::vector<Tensor> lnlstm_fwd(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                               const Tensor& h0, const Tensor& c0, const Tensor& w_h, const Tensor& gamma_,
                               const Tensor& beta_, const OptT& mask_h, const OptT& mask_c, const OptT& mask_r,
                               const LstmCfg& k, double eps_, bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), H = c0.size(1), G4 = 4 * H;
  TORCH_CHECK(h0.size(1) == H, "rnnkit lnlstm: h and c must have the same size");
  Mat<T> wx = mat_of<T>(w_x), wh = mat_of<T>(w_h);
  Tensor gamma = contig(gamma_), beta = contig(beta_);
  const T *gm = gamma.data_ptr<T>(), *bt = beta.data_ptr<T>();
  const Opt<T> mh_(mask_h), mc_(mask_c), mr_(mask_r);
  const T *mh = mh_.p, *mc = mc_.p, *mr = mr_.p;
  const T fb = static_cast<T>(k.forget_bias), eps = static_cast<T>(eps_);
  const int64_t order[4] = {k.oi, k.og, k.of, k.oo};

  Tensor XH = project_inputs<T>(x, {wx}, s.steps(), !save);  // pre-activations, normalised in place: saved
  Tensor cs = c0.contiguous().clone();
  Tensor Y = at::empty({s.total, H}, h0.options());
  Tensor CH = at::empty({save ? s.total : B, H}, h0.options());
  Tensor RS = at::empty({save ? s.total : B, 5}, h0.options());
  Tensor A = at::empty({B, G4}, h0.options());  // activated gates of the current step
  T *xh = XH.data_ptr<T>(), *csp = cs.data_ptr<T>(), *yp = Y.data_ptr<T>(), *chp = CH.data_ptr<T>(),
    *rsp = RS.data_ptr<T>(), *ap = A.data_ptr<T>();
  Tensor bias_c = has(bias) ? contig(*bias) : Tensor();
  const T* bp = has(bias) ? bias_c.data_ptr<T>() : nullptr;
  // The bias, added to a step's rows (columns [lo, lo + w)) right before its multiply reads them: one pass in cache
  // instead of a pass of its own over all steps' (total, 4H) in memory, and the same sums, (x W_x + b) + h W_h.
  auto add_bias = [&](int64_t n, int64_t off, int64_t lo, int64_t w) {
    if (!bp) return;
    for (int64_t b = 0; b < n; ++b) {
      T* __restrict__ row = xh + (off + b) * G4 + lo;
      const T* __restrict__ add = bp + lo;
      for (int64_t j = 0; j < w; ++j) row[j] += add[j];
    }
  };
  // Every gate's norm needs whole rows. Steps in blocks of rows (loop.h forward_rows): each block its rows' multiply
  // and norms at every step on a thread of its own. Otherwise the multiply is split over threads by columns (one
  // region), the norms by rows (a second); a step not worth splitting runs one MKL-packed multiply.
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const int64_t blocks = bf16_row_blocks<T>(s, G4 * H, mh || mc || mr);
  const Units cols = blocks > 1 ? Units{{0}, {G4}} : split_units(G4, rows0, H, 1, s.steps());
  const ChunkGemm<T> chunk_w(wh, 1, G4, cols, blocks > 1 ? rows0 / blocks : rows0, s.steps());
  const std::vector<T> ones(H, T(1));           // stands for an absent mask: branch-free loops

  MatmulInput<T> hin(mr, B, H, h0.options());
  // The norms and the cell of batch rows r0 + [b0, b1) (packed rows from off + b0); hn: h_t's row r0.
  auto norms_of = [&](int64_t r0, int64_t b0, int64_t b1, int64_t off, T* hn) {
    T* g = xh + off * G4;
    T* chb = save ? chp + off * H : chp + r0 * H;
    T* rsb = save ? rsp + off * 5 : rsp + r0 * 5;
    for (int64_t b = b0; b < b1; ++b) {
      T* gr = g + b * G4;
      T* ar = ap + (r0 + b) * G4;  // activated i, g, f, o in canonical order
      T* rs = rsb + b * 5;
      T *si = ar, *sg = ar + H, *sf = ar + 2 * H, *so = ar + 3 * H;  // canonical i, g, f, o
      rs[0] = norm_act_row<0>(gr + order[0] * H, H, eps, gm, bt, T(0), si);
      rs[1] = norm_act_row<1>(gr + order[1] * H, H, eps, gm + H, bt + H, T(0), sg);
      rs[2] = norm_act_row<0>(gr + order[2] * H, H, eps, gm + 2 * H, bt + 2 * H, fb, sf);
      rs[3] = norm_act_row<0>(gr + order[3] * H, H, eps, gm + 3 * H, bt + 3 * H, T(0), so);
      T* cp = csp + (r0 + b) * H;
      T* ch = chb + b * H;
      for (int64_t j = 0; j < H; ++j) ch[j] = sf[j] * cp[j] + si[j] * sg[j];
      T* y = yp + (off + b) * H;
      rs[4] = norm_act_row<2>(ch, H, eps, gm + 4 * H, bt + 4 * H, T(0), y);  // y holds c_t for now
      T* hr = hn + b * H;
      const T* mcr = mc ? mc + (r0 + b) * H : ones.data();
      const T* mhr = mh ? mh + (r0 + b) * H : ones.data();
      ln_output(y, cp, hr, so, mcr, mhr, H);
    }
  };
  Tensor hT;
  if (blocks > 1) {
    hT = forward_rows<T>(s, h0, row_bounds(s, rows0, blocks), [&](int64_t r0, int64_t n, int64_t off, const T* hp,
                                                                  T* hn) {
      add_bias(n, off, 0, G4);
      chunk_w(0, 0, G4, n, hp, H, xh + off * G4, G4, T(1));
      norms_of(r0, 0, n, off, hn);
    });
  } else {
    auto begin = [&](int64_t n, const T* hp) { hin.read(n, hp); };
    auto multiply = [&](int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hp, T*) {
      add_bias(n, off, lo, w);
      chunk_w(c, lo, w, n, mr ? hin.h : hp, H, xh + off * G4 + lo, G4, T(1));
    };
    auto norms = [&](int64_t n, int64_t off, const T*, T* hn) {
      for_rows(n, G4, [&](int64_t b0, int64_t b1) { norms_of(0, b0, b1, off, hn); });
    };
    hT = forward_loop<T>(s, h0, cols, multiply, norms, begin);
  }
  if (!save) return {Y, hT, cs};
  return {Y, hT, cs, XH, CH, RS};
}

template <typename T>
std::vector<Tensor> lnlstm_bwd(const Tensor& dY_, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                               const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                               const Tensor& c0, const Tensor& w_h, const Tensor& gamma_, const Tensor& beta_,
                               const OptT& mask_h, const OptT& mask_c, const OptT& mask_r, const Tensor& Y,
                               const Tensor& XH_, const Tensor& CH_, const Tensor& RS_, const LstmCfg& k,
                               bool need_dx) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t H = c0.size(1), G4 = 4 * H;
  Mat<T> wx = mat_of<T>(w_x);
  Tensor gamma = contig(gamma_), beta = contig(beta_);
  const T *gm = gamma.data_ptr<T>(), *bt = beta.data_ptr<T>();
  const Opt<T> mh_(mask_h), mc_(mask_c), mr_(mask_r);
  const T *mh = mh_.p, *mc = mc_.p, *mr = mr_.p;
  const T fb = static_cast<T>(k.forget_bias);
  const int64_t order[4] = {k.oi, k.og, k.of, k.oo};

  Tensor XH = contig(XH_), CH = contig(CH_), RS = contig(RS_), dY = contig(dY_), Yc = contig(Y);
  Tensor Cn = CH.mul(gamma[4]).add(beta[4]);  // (total, H): the cell states c_t
  Tensor Hprev = previous_states<T>(s, contig(h0), Yc, mh);
  Tensor Cprev = previous_states<T>(s, contig(c0), Cn, mc);
  Tensor HMprev = mr ? masked_rows<T>(s, Hprev, mr) : Hprev;  // what the matmul read: dW_h = HMprev^T dG
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

  auto rows = [&](int64_t b0, int64_t b1, int64_t off) {
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
      ln_bwd_output(dyo, mhr, dhs, cn, so, mcr, dcs, dao, dcn, H);
      norm_row_backward<T>(dcn, ch, gm + 4 * H, rs[4], H, daf, dgam + 4 * H, dbet + 4 * H);  // d c_t's pre-norm
      ln_bwd_cell(si, sg, sf, cp, dai, dag, daf, dcs, H);
      T* dgr = dgp + r * G4;
      for (int q = 0; q < 4; ++q) {
        norm_row_backward<T>(da + q * H, gr + order[q] * H, gm + q * H, rs[q], H, dgr + order[q] * H,
                             dgam + q * H, dbet + q * H);
      }
    }
  };
  backward_loop(s, G4, rows, [&](int64_t n, int64_t off) {
    step_wt(n, {dgp + off * G4}, G4, T(0), dhp, H);  // d(h_{t-1} * mask_r): h feeds nothing but the matmul
    unmask_grad(dhp, mr, n * H);
  });
  Tensor sums = acc.sum(0);  // (2, 5, H)
  const WeightGrads wg = weight_grads<T>(x, {wx}, dG, HMprev, dgp, need_dx);
  Tensor dbias = has(bias) ? dG.sum(0) : Tensor();
  return {wg.dx, wg.dwx[0], dbias, dh, dc, wg.dwh[0], sums[0], sums[1]};
}

}  // namespace

std::vector<Tensor> lnlstm_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                   const Tensor& h0, const Tensor& c0, const Tensor& w_h, const Tensor& gamma,
                                   const Tensor& beta, const OptT& mask_h, const OptT& mask_c,
                                   at::IntArrayRef gate_order, double forget_bias, double eps, bool save,
                                   const OptT& mask_r) {
  return dispatch_float(x, "lnlstm_forward", [&](auto z) {
    const LstmCfg k = cfg_of(gate_order, forget_bias, 0.0, 0.0);
    return lnlstm_fwd<decltype(z)>(x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h, mask_c, mask_r, k,
                                   eps, save);
  }, /*bf16_x=*/true);
}

std::vector<Tensor> lnlstm_backward(const Tensor& dY, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                                    const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                                    const Tensor& c0, const Tensor& w_h, const Tensor& gamma, const Tensor& beta,
                                    const OptT& mask_h, const OptT& mask_c, const Tensor& Y, const Tensor& XH,
                                    const Tensor& CH, const Tensor& RS, at::IntArrayRef gate_order,
                                    double forget_bias, double eps, bool need_dx, const OptT& mask_r) {
  (void)eps;  // the saved 1 / sqrt(var + eps) carry it
  return dispatch_float(x, "lnlstm_backward", [&](auto z) {
    const LstmCfg k = cfg_of(gate_order, forget_bias, 0.0, 0.0);
    return lnlstm_bwd<decltype(z)>(dY, dhT, dcT, x, w_x, bias, batch_sizes, h0, c0, w_h, gamma, beta, mask_h,
                                   mask_c, mask_r, Y, XH, CH, RS, k, need_dx);
  });
}

}  // namespace rnnkit
