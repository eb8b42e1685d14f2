// The GRU's steps (both GRUs). Blocks r, z (TF's u), n (TF's candidate c); per step, after loop.h's input
// projection x @ W_x of all steps:
//   reset-after (torch, cuDNN, Keras reset_after=True), one matmul:
//     a = h @ W_h + b_h;  r, z = sig(x_r + a_r), sig(x_z + a_z);  n = tanh(x_n + r * a_n)
//   reset-before (TF1 GRUCell, Keras reset_after=False), two dependent matmuls:
//     r, z = sig(x_rz + h @ W_h[:, :2H]);  n = tanh(x_n + (r * h) @ W_h[:, 2H:])
//   h' = z * h + (1 - z) * n
// The candidate's columns W_x[:, 2H:], W_h[:, 2H:] may come apart from the r, z ones (w_xn, w_hn: TF's GRUCell keeps
// them in a kernel of their own), read where they are and given their own gradients, so no weight is copied.
// mask_r (B, H), recurrent dropout: the matmuls read h * mask_r while z * h keeps h (mask_h, the state mask of a
// DropoutWrapper, drops the carried state itself). Saved: r, z, n (total, 3H) and, reset-after, a_n (total, H).
#include "gru.h"
#include "ops.h"

namespace rnnkit {
namespace {

template <typename T>
std::vector<Tensor> gru_fwd(const Tensor& x, const Tensor& w_x, const OptT& bias_x, const Tensor& batch_sizes,
                            const Tensor& h0, const Tensor& w_h, const OptT& bias_h, const OptT& w_xn,
                            const OptT& w_hn, const OptT& mask_h, const OptT& mask_r, bool reset_after,
                            bool save) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), H = h0.size(1), G3 = 3 * H;
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  const bool apart = has(w_xn);  // the candidate's columns in tensors of their own
  const Mat<T> wx = mat_of<T>(w_x), wh = step_weights<T>(w_h, rows0, s.steps());
  const Mat<T> wx_rz = cols_of(wx, 0, 2 * H), wh_rz = cols_of(wh, 0, 2 * H);
  const Mat<T> wx_n = apart ? mat_of<T>(*w_xn) : cols_of(wx, 2 * H, H);
  const Mat<T> wh_n = apart ? step_weights<T>(*w_hn, rows0, s.steps()) : cols_of(wh, 2 * H, H);
  Tensor bx_c = contig_or_zeros(bias_x, G3, h0.options()), bh_c = contig_or_zeros(bias_h, G3, h0.options());
  const Opt<T> mh(mask_h), mr(mask_r);
  Tensor brz_c = bx_c.narrow(0, 0, 2 * H).add(bh_c.narrow(0, 0, 2 * H));  // r and z see both biases: added once
  const T *bx = bx_c.data_ptr<T>(), *bh = bh_c.data_ptr<T>(), *brz = brz_c.data_ptr<T>();
  MatmulInput<T> hin(mr.p, B, H, h0.options());  // what the recurrent matmuls read: h, or h * mask_r
  // Steps in blocks of rows (loop.h forward_rows), each block all its steps on a thread of its own; or each step
  // split by units over the threads.
  const int64_t blocks = bf16_row_blocks<T>(s, 3 * H * H, mh.p || mr.p);
  // h @ W_rz every step; h @ W_n with it (reset-after) or, reset-before, (r * h) @ W_n after it.
  const Units u = blocks > 1 ? Units{{0}, {H}}  // one chunk of units per thread, or one (packed) multiply
                             : split_units(H, rows0, H, 3, s.steps());
  const int64_t ga = reset_after ? 3 : 2;  // gate blocks in the first multiply
  const int64_t rows = blocks > 1 ? rows0 / blocks : rows0;  // (a block's rows, for the multiplies' choice)
  const ChunkGemm<T> chunk_rz(wh_rz, 2, H, u, rows, s.steps()), chunk_n(wh_n, 1, H, u, rows, s.steps());

  Tensor G = project_inputs<T>(x, {wx_rz, wx_n}, s.steps(), !save);  // (total, 3H) -> activated r, z, n
  Tensor Y = at::empty({s.total, H}, h0.options());
  Tensor Sv = reset_after ? at::empty({save ? s.total : B, H}, h0.options()) : Tensor();
  Tensor A = at::empty({B, G3}, h0.options());  // h @ W_h (chunked columns); reset-before: also r * h, (r*h) @ W_n
  T *gp = G.data_ptr<T>(), *yp = Y.data_ptr<T>(), *ap = A.data_ptr<T>();
  T* svp = reset_after ? Sv.data_ptr<T>() : nullptr;

  // A step's first phase for rows [r0, r0 + n) of the batch (packed rows from off) and units [lo, lo + w) (chunk
  // c): hp, hm = those rows of h_{t-1} and of what the matmuls read (h * mask_r).
  auto phase_one = [&](int64_t r0, int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hp,
                       const T* hm) {
    T* g = gp + off * G3;
    T* A0 = ap + r0 * G3;
    T* sb = reset_after ? (save ? svp + off * H : svp + r0 * H) : nullptr;
    if (reset_after) {
      chunk_rz.twice(chunk_n, c, lo, w, n, hm, H, A0 + ga * lo, A0 + ga * lo + 2 * w, G3);
    } else {
      chunk_rz(c, lo, w, n, hm, H, A0 + ga * lo, G3);
    }
    for (int64_t b = 0; b < n; ++b) {
      T* __restrict__ r = g + b * G3 + lo;
      T* __restrict__ z = r + H;
      T* __restrict__ nn = r + 2 * H;
      const T* __restrict__ a = A0 + b * G3 + ga * lo;
      const T* __restrict__ h = hp + b * H + lo;
      for (int64_t j = 0; j < w; ++j) {
        r[j] += a[j] + brz[lo + j];
        z[j] += a[w + j] + brz[H + lo + j];
      }
      sigmoid_inplace(r, w);
      sigmoid_inplace(z, w);
      if (reset_after) {
        T* __restrict__ an = sb + b * H + lo;
        for (int64_t j = 0; j < w; ++j) an[j] = a[2 * w + j] + bh[2 * H + lo + j];
        gru_candidate_after(nn, bx + 2 * H + lo, r, an, w);
        gru_blend(yp + (off + b) * H + lo, nn, z, h, w);
      } else {
        T* __restrict__ rh = A0 + b * G3 + 2 * H + lo;  // r * h, read by every chunk in phase two
        const T* __restrict__ hmb = hm + b * H + lo;
        for (int64_t j = 0; j < w; ++j) rh[j] = r[j] * hmb[j];
      }
    }
  };
  // The reset-before candidate, which reads r * h of every unit: a second phase.
  auto phase_two = [&](int64_t r0, int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hp) {
    T* g = gp + off * G3;
    T* A0 = ap + r0 * G3;
    chunk_n(c, lo, w, n, A0 + 2 * H, G3, A0 + ga * lo, G3);  // (r * h) @ W_n, into the chunk's free columns of A
    for (int64_t b = 0; b < n; ++b) {
      T* __restrict__ z = g + b * G3 + H + lo;
      T* __restrict__ nn = g + b * G3 + 2 * H + lo;
      const T* __restrict__ a = A0 + b * G3 + ga * lo;
      const T* __restrict__ h = hp + b * H + lo;
      gru_candidate_before(nn, a, bx + 2 * H + lo, w);
      gru_blend(yp + (off + b) * H + lo, nn, z, h, w);
    }
  };
  Tensor hT;
  if (blocks > 1) {
    hT = forward_rows<T>(s, h0, row_bounds(s, rows0, blocks), [&](int64_t r0, int64_t n, int64_t off, const T* hp,
                                                                  T* hn) {
      phase_one(r0, 0, 0, H, n, off, hp, hp);
      if (!reset_after) phase_two(r0, 0, 0, H, n, off, hp);
      std::memcpy(hn, yp + off * H, sizeof(T) * n * H);
    });
  } else {
    auto begin = [&](int64_t n, const T* hp) { hin.read(n, hp); };
    auto chunk = [&](int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hp, T*) {
      phase_one(0, c, lo, w, n, off, hp, hin.h);
    };
    auto finish = [&](int64_t n, int64_t off, const T* hp, T* hn) {
      if (!reset_after) {
        for_chunks(u, [&](int64_t c) {
          if (u.hi[c] > u.lo[c]) phase_two(0, c, u.lo[c], u.hi[c] - u.lo[c], n, off, hp);
        });
      }
      store_state(hn, yp + off * H, mh.p, n * H);  // rows of y and of the mask: (n, H) blocks
    };
    hT = forward_loop<T>(s, h0, u, chunk, finish, begin);
  }
  if (!save) return {Y, hT};
  return {Y, hT, G, reset_after ? Sv : at::empty({0}, h0.options())};
}

// A row of the backward step: dy = dy_out + mask * dh (the output's gradient and the carried state's) into the
// candidate's and the update gate's d pre-activations, and dh = dy * z (the state through z * h). Its own function
// with unaliased pointers: inline in the step, the loop stayed scalar.
template <typename T>
inline void gru_bwd_row(const T* __restrict__ z, const T* __restrict__ nn, const T* __restrict__ hp,
                        const T* __restrict__ dyo, const T* __restrict__ ms, T* __restrict__ dh, T* __restrict__ dz,
                        T* __restrict__ dn, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T dy = dyo[j] + ms[j] * dh[j];
    dn[j] = dy * (T(1) - z[j]) * (T(1) - nn[j] * nn[j]);
    dz[j] = dy * (hp[j] - nn[j]) * z[j] * (T(1) - z[j]);
    dh[j] = dy * z[j];
  }
}

// The reset-after GRU's reset gate: dr (input side) and the recurrent side's d pre-activations er (r, z, n), from the
// candidate's dn through r * a_n.
template <typename T>
inline void gru_bwd_reset_after(const T* __restrict__ r, const T* __restrict__ an, const T* __restrict__ dz,
                                const T* __restrict__ dn, T* __restrict__ dr, T* __restrict__ er, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    dr[j] = dn[j] * an[j] * r[j] * (T(1) - r[j]);
    er[j] = dr[j];
    er[H + j] = dz[j];
    er[2 * H + j] = dn[j] * r[j];
  }
}

template <typename T>
std::vector<Tensor> gru_bwd(const Tensor& dY_, const Tensor& dhT, const Tensor& x, const Tensor& w_x,
                            const OptT& bias_x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& w_h,
                            const OptT& bias_h, const OptT& w_xn, const OptT& w_hn, const OptT& mask_h,
                            const OptT& mask_r, const Tensor& Y, const Tensor& G_, const Tensor& S_, bool reset_after,
                            bool need_dx) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), H = h0.size(1), G3 = 3 * H;
  const bool apart = has(w_xn);
  const Mat<T> wx = mat_of<T>(w_x);
  const std::vector<Mat<T>> wx_blocks = apart ? std::vector<Mat<T>>{wx, mat_of<T>(*w_xn)} : std::vector<Mat<T>>{wx};
  const Opt<T> mh(mask_h), mr(mask_r);
  Tensor G = contig(G_), dY = contig(dY_), Yc = contig(Y);
  Tensor Hprev = previous_states<T>(s, contig(h0), Yc, mh.p);
  // The matmuls read h * mask_r (recurrent dropout): their d(h) is masked too, the update's z * h is not.
  Tensor HMprev = mr.p ? masked_rows<T>(s, Hprev, mr.p) : Hprev;
  Tensor DHM = mr.p ? at::empty({B, H}, x.options()) : Tensor();  // d(h * mask_r) of a step
  const T *gp = G.data_ptr<T>(), *hpp = Hprev.data_ptr<T>(), *hmpp = HMprev.data_ptr<T>(), *dyp = dY.data_ptr<T>();
  Tensor Sc = reset_after ? contig(S_) : Tensor();
  const T* sp = reset_after ? Sc.data_ptr<T>() : nullptr;

  Tensor D = at::empty({s.total, G3}, x.options());                      // d pre-activations, input side
  Tensor E = reset_after ? at::empty({s.total, G3}, x.options()) : Tensor();  // recurrent side
  Tensor R = at::empty({B, H}, x.options());  // reset-before: d(r * h)
  Tensor dh = dhT.contiguous().clone();
  T *dp = D.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *rp = R.data_ptr<T>();
  T* dmp = mr.p ? DHM.data_ptr<T>() : dhp;  // where the matmuls' d(h) goes: straight into dh without a mask
  T* ep = reset_after ? E.data_ptr<T>() : nullptr;
  const std::vector<T> ones(H, T(1));  // stands for an absent mask, so the loops stay branch-free
  const int64_t rows0 = s.steps() ? s.n[0] : 0;
  // W_h^T's rows of r, z and of n: dh += dG_rz @ W_rz^T + dG_n @ W_n^T.
  const Mat<T> wt = step_weights_t<T>(w_h, rows0, s.steps());
  const Mat<T> wt_rz = rows_of(wt, 0, 2 * H);
  const Mat<T> wt_n = apart ? step_weights_t<T>(*w_hn, rows0, s.steps()) : rows_of(wt, 2 * H, H);
  std::optional<SplitGemm<T>> step_all, step_rz, step_n;
  if (reset_after) {
    step_all.emplace(std::vector<Mat<T>>{wt_rz, wt_n}, rows0, s.steps());
  } else {
    step_rz.emplace(std::vector<Mat<T>>{wt_rz}, rows0, s.steps());
    step_n.emplace(std::vector<Mat<T>>{wt_n}, rows0, s.steps());
  }

  auto rows = [&](int64_t b0, int64_t b1, int64_t off) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = off + b;
      const T* gr = gp + row * G3;
      const T *r = gr, *z = gr + H, *nn = gr + 2 * H;
      const T* hp = hpp + row * H;
      const T* dyo = dyp + row * H;
      T* dhs = dhp + b * H;
      T* dr = dp + row * G3;
      T *dz = dr + H, *dn = dr + 2 * H;
      const T* ms = mh.p ? mh.p + b * H : ones.data();
      gru_bwd_row(z, nn, hp, dyo, ms, dhs, dz, dn, H);
      if (reset_after) gru_bwd_reset_after(r, sp + row * H, dz, dn, dr, ep + row * G3, H);
    }
  };
  auto recur = [&](int64_t n, int64_t off) {
    if (reset_after) {
      (*step_all)(n, {ep + off * G3, ep + off * G3 + 2 * H}, G3, mr.p ? T(0) : T(1), dmp, H);
    } else {
      (*step_n)(n, {dp + off * G3 + 2 * H}, G3, T(0), rp, H);
      for_rows(n, G3, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t row = off + b;
          const T* r = gp + row * G3;
          const T* hm = hmpp + row * H;
          const T* drh = rp + b * H;
          T* dr = dp + row * G3;
          T* dm = dmp + b * H;
          for (int64_t j = 0; j < H; ++j) {
            dr[j] = drh[j] * hm[j] * r[j] * (T(1) - r[j]);
            dm[j] = (mr.p ? T(0) : dm[j]) + drh[j] * r[j];
          }
        }
      });
      (*step_rz)(n, {dp + off * G3}, G3, T(1), dmp, H);
    }
    if (mr.p) {
      for (int64_t i = 0; i < n * H; ++i) dhp[i] += dmp[i] * mr.p[i];
    }
  };
  backward_loop(s, G3, rows, recur);

  // reset-before: dW_h has two parts (h_prev for r, z; r * h_prev for the candidate), filled here.
  const WeightGrads wg = weight_grads<T>(x, wx_blocks, D, HMprev, reset_after ? ep : nullptr, need_dx);
  // dW_h's r, z columns and the candidate's: views into one (H, 3H) gradient, or the two blocks' own.
  Tensor dwh_rz = apart ? wg.dwh[0] : wg.dwh[0].narrow(1, 0, 2 * H);
  Tensor dwh_n = apart ? wg.dwh[1] : wg.dwh[0].narrow(1, 2 * H, H);
  if (!reset_after) {
    Tensor RH = G.narrow(1, 0, H).mul(HMprev);  // r * h_prev, the candidate's recurrent input
    gemm_atd<T>(s.total, H, 2 * H, hmpp, H, dp, G3, T(0), dwh_rz.data_ptr<T>(), dwh_rz.stride(0));
    gemm_atd<T>(s.total, H, H, RH.data_ptr<T>(), H, dp + 2 * H, G3, T(0), dwh_n.data_ptr<T>(), dwh_n.stride(0));
  }
  Tensor dbx = has(bias_x) ? D.sum(0) : Tensor();
  Tensor dbh = has(bias_h) ? (reset_after ? E.sum(0) : at::zeros({G3}, x.options())) : Tensor();
  if (!apart) return {wg.dx, wg.dwx[0], dbx, dh, wg.dwh[0], dbh, Tensor(), Tensor()};
  return {wg.dx, wg.dwx[0], dbx, dh, wg.dwh[0], dbh, wg.dwx[1], wg.dwh[1]};
}

}  // namespace

std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& w_x, const OptT& bias_x, const Tensor& batch_sizes,
                                const Tensor& h0, const Tensor& w_h, const OptT& bias_h, const OptT& w_xn,
                                const OptT& w_hn, const OptT& mask_h, const OptT& mask_r, bool reset_after,
                                bool save) {
  return dispatch_float(x, "gru_forward", [&](auto z) {
    TORCH_CHECK(has(w_xn) == has(w_hn), "rnnkit gru_forward: w_xn and w_hn come together or not at all");
    return gru_fwd<decltype(z)>(x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r,
                                reset_after, save);
  }, /*bf16_x=*/true);
}

std::vector<Tensor> gru_backward(const Tensor& dY, const Tensor& dhT, const Tensor& x, const Tensor& w_x,
                                 const OptT& bias_x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& w_h,
                                 const OptT& bias_h, const OptT& w_xn, const OptT& w_hn, const OptT& mask_h,
                                 const OptT& mask_r, const Tensor& Y, const Tensor& G, const Tensor& S,
                                 bool reset_after, bool need_dx) {
  return dispatch_float(x, "gru_backward", [&](auto z) {
    TORCH_CHECK(has(w_xn) == has(w_hn), "rnnkit gru_backward: w_xn and w_hn come together or not at all");
    return gru_bwd<decltype(z)>(dY, dhT, x, w_x, bias_x, batch_sizes, h0, w_h, bias_h, w_xn, w_hn, mask_h, mask_r,
                                Y, G, S, reset_after, need_dx);
  });
}

}  // namespace rnnkit
