// The vanilla (Elman) RNN's step: h' = act(x @ W_x + h @ W_h + b), act tanh or relu; saving only the outputs.
// The time loop, the multiplies and the weight gradients are loop.h's. mask_r (B, H), recurrent dropout: the
// matmul reads h * mask_r; the outputs and the carried state do not.
#include "loop.h"
#include "ops.h"

namespace rnnkit {
namespace {

template <typename T>
std::vector<Tensor> rnn_fwd(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                            const Tensor& h0, const Tensor& w_h, const OptT& mask_h, const OptT& mask_r, bool relu) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t B = h0.size(0), H = h0.size(1), rows0 = s.steps() ? s.n[0] : 0;
  Mat<T> wx = mat_of<T>(w_x), wh = step_weights<T>(w_h, rows0, s.steps());
  Tensor b_c = contig_or_zeros(bias, H, h0.options());
  const Opt<T> mh(mask_h), mr(mask_r);
  const T* bp = b_c.data_ptr<T>();
  const Units u = split_units(H, rows0, H, 1, s.steps());
  const ChunkGemm<T> chunk_w(wh, 1, H, u, rows0, s.steps());
  Tensor Y = project_inputs<T>(x, {wx}, s.steps());  // pre-activations, activated in place: the outputs
  Tensor A = at::empty({B, H}, h0.options());
  T *yp = Y.data_ptr<T>(), *ap = A.data_ptr<T>();
  MatmulInput<T> hin(mr.p, B, H, h0.options());
  auto begin = [&](int64_t n, const T* hp) { hin.read(n, hp); };
  auto chunk = [&](int64_t c, int64_t lo, int64_t w, int64_t n, int64_t off, const T* hp, T* hn) {
    T* y = yp + off * H;
    chunk_w(c, lo, w, n, mr.p ? hin.h : hp, H, ap + lo, H);
    for (int64_t b = 0; b < n; ++b) {
      T* __restrict__ yr = y + b * H + lo;
      const T* __restrict__ a = ap + b * H + lo;
      const T* __restrict__ bb = bp + lo;
      for (int64_t j = 0; j < w; ++j) yr[j] += a[j] + bb[j];
      if (relu) {
        for (int64_t j = 0; j < w; ++j) yr[j] = std::max(yr[j], T(0));
      } else {
        tanh_inplace(yr, w);
      }
      store_state(hn + b * H + lo, yr, mh.p ? mh.p + b * H + lo : nullptr, w);
    }
  };
  Tensor hT = forward_loop<T>(s, h0, u, chunk, NoStep{}, begin);
  return {Y, hT};  // the outputs are all backward needs: nothing more is saved
}

template <typename T>
std::vector<Tensor> rnn_bwd(const Tensor& dY_, const Tensor& dhT, const Tensor& x, const Tensor& w_x,
                            const OptT& bias, const Tensor& batch_sizes, const Tensor& h0, const Tensor& w_h,
                            const OptT& mask_h, const OptT& mask_r, const Tensor& Y, bool relu, bool need_dx) {
  const Schedule s = schedule_of(batch_sizes);
  const int64_t H = h0.size(1), rows0 = s.steps() ? s.n[0] : 0;
  Mat<T> wx = mat_of<T>(w_x);
  const Opt<T> mh(mask_h), mr(mask_r);
  Tensor Yc = contig(Y), dY = contig(dY_);
  Tensor Hprev = previous_states<T>(s, contig(h0), Yc, mh.p);
  Tensor HMprev = mr.p ? masked_rows<T>(s, Hprev, mr.p) : Hprev;  // what the matmul read: dW_h = HMprev^T dG
  const T *yp = Yc.data_ptr<T>(), *dyp = dY.data_ptr<T>();
  Tensor D = at::empty({s.total, H}, x.options());
  Tensor dh = dhT.contiguous().clone();
  T *dp = D.data_ptr<T>(), *dhp = dh.data_ptr<T>();
  const std::vector<T> ones(H, T(1));
  const SplitGemm<T> step_wt({step_weights_t<T>(w_h, rows0, s.steps())}, rows0, s.steps());  // dh = dG @ W_h^T
  backward_loop(
      s, H,
      [&](int64_t b0, int64_t b1, int64_t off) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r = (off + b) * H;  // the row's first element in the packed (total, H) buffers
          const T *y = yp + r, *dyo = dyp + r, *dhs = dhp + b * H;
          const T* mr = mh.p ? mh.p + b * H : ones.data();
          T* d = dp + r;
          if (relu) {
            for (int64_t j = 0; j < H; ++j) d[j] = y[j] > T(0) ? dyo[j] + mr[j] * dhs[j] : T(0);
          } else {
            for (int64_t j = 0; j < H; ++j) d[j] = (dyo[j] + mr[j] * dhs[j]) * (T(1) - y[j] * y[j]);
          }
        }
      },
      [&](int64_t n, int64_t off) {
        step_wt(n, {dp + off * H}, H, T(0), dhp, H);  // d(h_{t-1} * mask_r): h feeds nothing but the matmul
        unmask_grad(dhp, mr.p, n * H);
      });
  const WeightGrads wg = weight_grads<T>(x, {wx}, D, HMprev, dp, need_dx);
  Tensor db = has(bias) ? D.sum(0) : Tensor();
  return {wg.dx, wg.dwx[0], db, dh, wg.dwh[0]};
}

}  // namespace

std::vector<Tensor> rnn_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                const Tensor& h0, const Tensor& w_h, const OptT& mask_h, bool relu, bool save,
                                const OptT& mask_r) {
  (void)save;  // nothing beyond the outputs is saved
  return dispatch_float(x, "rnn_forward", [&](auto z) {
    return rnn_fwd<decltype(z)>(x, w_x, bias, batch_sizes, h0, w_h, mask_h, mask_r, relu);
  }, /*bf16_x=*/true);
}

std::vector<Tensor> rnn_backward(const Tensor& dY, const Tensor& dhT, const Tensor& x, const Tensor& w_x,
                                 const OptT& bias, const Tensor& batch_sizes, const Tensor& h0, const Tensor& w_h,
                                 const OptT& mask_h, const Tensor& Y, bool relu, bool need_dx, const OptT& mask_r) {
  return dispatch_float(x, "rnn_backward", [&](auto z) {
    return rnn_bwd<decltype(z)>(dY, dhT, x, w_x, bias, batch_sizes, h0, w_h, mask_h, mask_r, Y, relu, need_dx);
  });
}

}  // namespace rnnkit
