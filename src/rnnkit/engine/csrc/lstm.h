// What the LSTM and the layer-normalised LSTM steps share: the gate layout and the scalar options.
#pragma once

#include "loop.h"

namespace rnnkit {

struct LstmCfg {
  int64_t oi, og, of, oo;  // block offsets (in units of H) of i, g, f, o
  double forget_bias, cell_clip, proj_clip;
};

inline LstmCfg cfg_of(at::IntArrayRef order, double fb, double cc, double pc) {
  TORCH_CHECK(order.size() == 4, "rnnkit lstm: gate_order must list the blocks of i, g, f, o");
  return {order[0], order[1], order[2], order[3], fb, cc, pc};
}

// The LSTM's update of w units of one row (TF's LSTMCell math; the step of lstm.cpp and of frame.cpp):
//   i, f = sig(i + w_i c), sig(f + forget_bias + w_f c);  g = tanh(g);  c_t = clip(f * c_{t-1} + i * g)
//   o = sig(o + w_o c_t);  m = o * tanh(c_t)
// gate[0..3]: the pre-activations of i, g, f, o (activated in place); cp: c_{t-1}; cn <- c_t; m <- m; pp: the
// peepholes' first unit (rows w_i, w_f, w_o, H apart) or nullptr; a cell_clip of 0 is none.
template <typename T>
inline void lstm_units(T* const gate[4], const T* __restrict__ cp, T* __restrict__ cn, T* __restrict__ m,
                       const T* pp, int64_t H, int64_t w, T fb, T cclip) {
  T *__restrict__ gi = gate[0], *__restrict__ gg = gate[1], *__restrict__ gf = gate[2], *__restrict__ go = gate[3];
  if (pp) {
    const T *wi = pp, *wf = pp + H;
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
    const T* wo = pp + 2 * H;
    for (int64_t j = 0; j < w; ++j) go[j] += wo[j] * cn[j];
  }
  sigmoid_inplace(go, w);
  for (int64_t j = 0; j < w; ++j) m[j] = tanh_s(cn[j]);
  for (int64_t j = 0; j < w; ++j) m[j] *= go[j];
}

}  // namespace rnnkit
