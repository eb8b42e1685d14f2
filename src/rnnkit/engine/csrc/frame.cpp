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
// inference (dropout off).
#include "ops.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace rnnkit {
namespace {

OptT present(const Tensor& t) { return t.numel() ? OptT(t) : OptT(); }

// Reads the flat lists in order, checking that each holds what the description asks for.
struct Cursor {
  at::IntArrayRef desc;
  at::TensorList weights, states;
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
  const Tensor& state() {
    TORCH_CHECK(s < states.size(), "rnnkit frame_forward: fewer states than the description needs");
    return states[s++];
  }
  double scalar() {
    TORCH_CHECK(f < scalars.size(), "rnnkit frame_forward: fewer scalars than the description needs");
    return scalars[f++];
  }
};

}  // namespace

std::vector<Tensor> frame_forward(const Tensor& x, at::TensorList weights, at::TensorList states,
                                  at::IntArrayRef desc, at::ArrayRef<double> scalars) {
  TORCH_CHECK(x.dim() == 2, "rnnkit frame_forward: expected x of shape (batch, features), got ", x.dim(), "-D");
  Tensor bs = at::empty({1}, x.options().dtype(at::kLong));
  bs.data_ptr<int64_t>()[0] = x.size(0);  // one step of every row
  Cursor in{desc, weights, states, scalars};
  std::vector<Tensor> out{Tensor()};
  Tensor h = x;
  const std::nullopt_t none = std::nullopt;
  while (in.d < desc.size()) {
    const int64_t family = in.ints(1)[0];
    std::vector<Tensor> r;
    if (family == 0 || family == 1) {
      const at::IntArrayRef order = in.ints(4);
      const Tensor &w_x = in.weight(), &bias = in.weight(), &w_h = in.weight(), &a = in.weight(), &b = in.weight();
      const Tensor &h0 = in.state(), &c0 = in.state();
      const double fb = in.scalar();
      if (family == 0) {
        const double cell_clip = in.scalar(), proj_clip = in.scalar();
        r = lstm_forward(h, w_x, present(bias), bs, h0, c0, w_h, present(a), present(b), none, none, order, fb,
                         cell_clip, proj_clip, false, none);
      } else {
        r = lnlstm_forward(h, w_x, present(bias), bs, h0, c0, w_h, a, b, none, none, order, fb, in.scalar(), false,
                           none);
      }
      out.push_back(r[1]);
      out.push_back(r[2]);
    } else if (family == 2) {
      const bool reset_after = in.ints(1)[0] != 0;
      const Tensor &w_x = in.weight(), &bias_x = in.weight(), &w_h = in.weight(), &bias_h = in.weight();
      const Tensor &w_xn = in.weight(), &w_hn = in.weight();
      r = gru_forward(h, w_x, present(bias_x), bs, in.state(), w_h, present(bias_h), present(w_xn), present(w_hn),
                      none, none, reset_after, false);
      out.push_back(r[1]);
    } else {
      TORCH_CHECK(family == 3, "rnnkit frame_forward: unknown family ", family, " (0 lstm, 1 lnlstm, 2 gru, 3 rnn)");
      const bool relu = in.ints(1)[0] != 0;
      const Tensor &w_x = in.weight(), &bias = in.weight(), &w_h = in.weight();
      r = rnn_forward(h, w_x, present(bias), bs, in.state(), w_h, none, relu, false, none);
      out.push_back(r[1]);
    }
    h = r[0];
  }
  TORCH_CHECK(in.w == weights.size() && in.s == states.size() && in.f == scalars.size(),
              "rnnkit frame_forward: more weights, states or scalars than the description uses");
  out[0] = h;
  return out;
}

}  // namespace rnnkit
