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
// inference (dropout off). stacked = n > 0: the states are given as n tensors (layers, B, size) instead (torch.nn's
// h_0, c_0: part j of layer l is states[j][l]) and returned so.
//
// Packed layers (float32, every width a multiple of 8): the weights re-laid out once by frame_pack into 16-column
// panels per chunk of units, as the sequence kernels lay them out per call (gemm.h), kept by the caller between
// frames; a layer's frame is then one parallel region: each thread multiplies [x | h] by its own chunk's panels
// (which stay in its core's cache from frame to frame) and updates its own units with the family's equations
// (lstm.h, gru.h); threads meet once per layer (twice for a projection or the reset-before GRU).
//   desc:    10 lstm: gate_order (4), chunks, proj chunks;  12 gru: reset_after, chunks;  13 rnn: relu, chunks
//   weights: lstm: W (packed [W_x; W_h], 4 gates), bias (4H), peep or empty, W_proj (packed, 1 gate) or empty
//            gru: W_rz (packed [W_x; W_h] r, z), W_xn (packed), W_hn (packed), b_rz (2H, both biases), b_xn, b_hn
//            rnn: W (packed [W_x; W_h]), bias (H)
//   states and scalars: as the unpacked family's.
#include "gru.h"
#include "lstm.h"
#include "ops.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

namespace rnnkit {
namespace {

OptT present(const Tensor& t) { return t.numel() ? OptT(t) : OptT(); }

// Chunk c of `chunks` over `units` (a multiple of 8): units [lo, hi), both multiples of 8 (split_units' rule).
Units frame_units(int64_t units, int64_t chunks) {
  Units u;
  for (int64_t c = 0; c < chunks; ++c) {
    u.lo.push_back((units * c / chunks) / 8 * 8);
    u.hi.push_back(c + 1 == chunks ? units : (units * (c + 1) / chunks) / 8 * 8);
  }
  return u;
}

// Packed weights of `gates` blocks of `units` columns over k rows: chunk c's gate q at P + k * (gates * lo + q * w).
struct Packed {
  const float* p;
  int64_t k;
  int64_t gates;
  const float* at(const Units& u, int64_t c, int64_t q) const {
    return p + k * (gates * u.lo[c] + q * (u.hi[c] - u.lo[c]));
  }
};

Packed packed_of(const Tensor& t, int64_t k, int64_t gates, int64_t units) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == k * gates * units,
              "rnnkit frame_forward: packed weights of ", k, " x ", gates * units, " floats expected, got ",
              t.numel(), " (", t.scalar_type(), ")");
  return {t.data_ptr<float>(), k, gates};
}

// [x | h] (B, I + R): the rows every chunk's multiply reads (x and h contiguous float32).
Tensor joined(const Tensor& x, const Tensor& h) {
  const int64_t B = x.size(0), I = x.size(1), R = h.size(1);
  Tensor a = at::empty({B, I + R}, x.options());
  const float *xp = x.data_ptr<float>(), *hp = h.data_ptr<float>();
  float* ap = a.data_ptr<float>();
  for (int64_t r = 0; r < B; ++r) {
    std::memcpy(ap + r * (I + R), xp + r * I, sizeof(float) * I);
    std::memcpy(ap + r * (I + R) + I, hp + r * R, sizeof(float) * R);
  }
  return a;
}

void check_rows(const Tensor& t, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == rows && t.size(1) == cols &&
                  t.is_contiguous(),
              "rnnkit frame_forward: expected ", what, " of shape (", rows, ", ", cols, ") float32, got ", t.sizes());
}

// A packed LSTM layer: {y, h, c}.
std::vector<Tensor> lstm_packed(const Tensor& x, const Tensor& h0, const Tensor& c0_, const Tensor& w, const Tensor& bias,
                                const Tensor& peep, const Tensor& w_proj, at::IntArrayRef order, int64_t chunks,
                                int64_t chunks_p, float fb, float cclip, float pclip) {
  const Tensor c0 = c0_.contiguous();
  const int64_t B = x.size(0), I = x.size(1), R = h0.size(1), H = c0.size(1), K = I + R, G4 = 4 * H;
  const bool proj = w_proj.numel() > 0;
  check_rows(h0, B, R, "h");
  check_rows(c0, B, H, "c");
  const Packed P = packed_of(w, K, 4, H);
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == G4,
              "rnnkit frame_forward: expected a float32 bias of ", G4, " values, got ", bias.sizes());
  const Tensor A = joined(x, h0);
  Tensor S = at::empty({B, G4}, x.options()), h1 = at::empty({B, R}, x.options());
  Tensor c1 = at::empty({B, H}, x.options()), M = proj ? at::empty({B, H}, x.options()) : h1;
  const float *a = A.data_ptr<float>(), *b = bias.data_ptr<float>(), *cp = c0.data_ptr<float>();
  const float* pp = peep.numel() ? peep.data_ptr<float>() : nullptr;
  float *sp = S.data_ptr<float>(), *cn = c1.data_ptr<float>(), *mp = M.data_ptr<float>();
  const Units u = frame_units(H, chunks);
  for_chunks(u, [&](int64_t c) {
    const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
    for (int64_t q = 0; q < 4; ++q) panel_gemm_at(P.at(u, c, q), K, wd, B, a, K, 0.0f, sp + 4 * lo + q * wd, G4);
    for (int64_t r = 0; r < B; ++r) {
      float* gate[4];
      for (int k = 0; k < 4; ++k) {
        float* __restrict__ g = sp + r * G4 + 4 * lo + order[k] * wd;
        const float* __restrict__ bk = b + order[k] * H + lo;
        for (int64_t j = 0; j < wd; ++j) g[j] += bk[j];
        gate[k] = g;
      }
      lstm_units(gate, cp + r * H + lo, cn + r * H + lo, mp + r * H + lo, pp ? pp + lo : nullptr, H, wd, fb, cclip);
    }
  });
  if (proj) {  // h = clip(m @ W_proj): every unit of m, so a second region, split over the projection's outputs
    const Packed Pp = packed_of(w_proj, H, 1, R);
    const Units up = frame_units(R, chunks_p);
    float* hp = h1.data_ptr<float>();
    for_chunks(up, [&](int64_t c) {
      const int64_t lo = up.lo[c], wd = up.hi[c] - up.lo[c];
      panel_gemm_at(Pp.at(up, c, 0), H, wd, B, mp, H, 0.0f, hp + lo, R);
      if (pclip > 0.0f) {
        for (int64_t r = 0; r < B; ++r)
          for (int64_t j = 0; j < wd; ++j) hp[r * R + lo + j] = std::min(std::max(hp[r * R + lo + j], -pclip), pclip);
      }
    });
  }
  return {h1, h1, c1};
}

// A packed GRU layer (both maths): {y, h}. S holds each chunk's r, z, x_n, a_n side by side.
std::vector<Tensor> gru_packed(const Tensor& x, const Tensor& h0_, const Tensor& w_rz, const Tensor& w_xn,
                               const Tensor& w_hn, const Tensor& b_rz, const Tensor& b_xn, const Tensor& b_hn,
                               bool reset_after, int64_t chunks) {
  const Tensor h0 = h0_.contiguous();
  const int64_t B = x.size(0), I = x.size(1), H = h0.size(1), K = I + H, G4 = 4 * H;
  check_rows(h0, B, H, "h");
  const Packed Prz = packed_of(w_rz, K, 2, H), Pxn = packed_of(w_xn, I, 1, H), Phn = packed_of(w_hn, H, 1, H);
  const Tensor A = joined(x, h0);
  Tensor S = at::empty({B, G4}, x.options()), h1 = at::empty({B, H}, x.options());
  Tensor RH = reset_after ? Tensor() : at::empty({B, H}, x.options());
  const float *a = A.data_ptr<float>(), *hp = h0.data_ptr<float>(), *brz = b_rz.data_ptr<float>();
  const float *bxn = b_xn.data_ptr<float>(), *bhn = b_hn.data_ptr<float>();
  float *sp = S.data_ptr<float>(), *yp = h1.data_ptr<float>(), *rh = reset_after ? nullptr : RH.data_ptr<float>();
  const Units u = frame_units(H, chunks);
  for_chunks(u, [&](int64_t c) {
    const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
    float* s = sp + 4 * lo;
    for (int64_t q = 0; q < 2; ++q) panel_gemm_at(Prz.at(u, c, q), K, wd, B, a, K, 0.0f, s + q * wd, G4);
    panel_gemm_at(Pxn.at(u, c, 0), I, wd, B, a, K, 0.0f, s + 2 * wd, G4);
    if (reset_after) panel_gemm_at(Phn.at(u, c, 0), H, wd, B, a + I, K, 0.0f, s + 3 * wd, G4);
    for (int64_t r = 0; r < B; ++r) {
      float *__restrict__ rg = s + r * G4, *__restrict__ z = rg + wd, *__restrict__ nn = rg + 2 * wd;
      for (int64_t j = 0; j < wd; ++j) {
        rg[j] += brz[lo + j];
        z[j] += brz[H + lo + j];
      }
      sigmoid_inplace(rg, wd);
      sigmoid_inplace(z, wd);
      if (reset_after) {
        float* __restrict__ an = rg + 3 * wd;
        for (int64_t j = 0; j < wd; ++j) an[j] += bhn[lo + j];
        gru_candidate_after(nn, bxn + lo, rg, an, wd);
        gru_blend(yp + r * H + lo, nn, z, hp + r * H + lo, wd);
      } else {
        for (int64_t j = 0; j < wd; ++j) rh[r * H + lo + j] = rg[j] * hp[r * H + lo + j];
      }
    }
  });
  if (!reset_after) {  // the candidate reads r * h of every unit: a second region
    for_chunks(u, [&](int64_t c) {
      const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
      float* s = sp + 4 * lo;
      panel_gemm_at(Phn.at(u, c, 0), H, wd, B, rh, H, 0.0f, s + 3 * wd, G4);
      for (int64_t r = 0; r < B; ++r) {
        float* rg = s + r * G4;
        gru_candidate_before(rg + 2 * wd, rg + 3 * wd, bxn + lo, wd);
        gru_blend(yp + r * H + lo, rg + 2 * wd, rg + wd, hp + r * H + lo, wd);
      }
    });
  }
  return {h1, h1};
}

// A packed Elman layer: {y, h}, h' = act([x | h] @ [W_x; W_h] + b).
std::vector<Tensor> rnn_packed(const Tensor& x, const Tensor& h0, const Tensor& w, const Tensor& bias, bool relu,
                               int64_t chunks) {
  const int64_t B = x.size(0), I = x.size(1), H = h0.size(1), K = I + H;
  check_rows(h0, B, H, "h");
  const Packed P = packed_of(w, K, 1, H);
  const Tensor A = joined(x, h0);
  Tensor h1 = at::empty({B, H}, x.options());
  const float *a = A.data_ptr<float>(), *b = bias.data_ptr<float>();
  float* yp = h1.data_ptr<float>();
  const Units u = frame_units(H, chunks);
  for_chunks(u, [&](int64_t c) {
    const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
    panel_gemm_at(P.at(u, c, 0), K, wd, B, a, K, 0.0f, yp + lo, H);
    for (int64_t r = 0; r < B; ++r) {
      float* __restrict__ y = yp + r * H + lo;
      for (int64_t j = 0; j < wd; ++j) y[j] += b[lo + j];
      if (relu) {
        for (int64_t j = 0; j < wd; ++j) y[j] = std::max(y[j], 0.0f);
      } else {
        tanh_inplace(y, wd);
      }
    }
  });
  return {h1, h1};
}

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

Tensor frame_pack(at::TensorList mats, int64_t units, int64_t gates, int64_t chunks) {
  TORCH_CHECK(units % 8 == 0 && chunks >= 1, "rnnkit frame_pack: units must be a multiple of 8, got ", units);
  std::vector<Mat<float>> blocks;
  int64_t k = 0;
  for (const Tensor& m : mats) {
    TORCH_CHECK(m.scalar_type() == at::kFloat && m.dim() == 2 && m.size(1) == gates * units,
                "rnnkit frame_pack: expected float32 (rows, ", gates * units, ") blocks, got ", m.sizes());
    blocks.push_back(mat_of<float>(m));
    k += m.size(0);
  }
  Tensor out = at::empty({k * gates * units}, mats[0].options());
  const Units u = frame_units(units, chunks);
  const Packed P{out.data_ptr<float>(), k, gates};
  for (int64_t c = 0; c < u.chunks(); ++c) {
    const int64_t lo = u.lo[c], wd = u.hi[c] - u.lo[c];
    for (int64_t q = 0; q < gates; ++q) {
      std::vector<Mat<float>> cols;
      for (const Mat<float>& b : blocks) cols.push_back(cols_of(b, q * units + lo, wd));
      pack_panels_into(const_cast<float*>(P.at(u, c, q)), cols, wd);
    }
  }
  return out;
}

int64_t frame_chunks(int64_t units, int64_t rows, int64_t k, int64_t gates) {
  return units % 8 ? 1 : split_units(units, rows, k, gates).chunks();
}

std::vector<Tensor> frame_forward(const Tensor& x, at::TensorList weights, at::TensorList given,
                                  at::IntArrayRef desc, at::ArrayRef<double> scalars, int64_t stacked) {
  TORCH_CHECK(x.dim() == 2, "rnnkit frame_forward: expected x of shape (batch, features), got ", x.dim(), "-D");
  // stacked = n > 0: the states come as n tensors (layers, B, size), torch.nn's h_0 and c_0, and go back so.
  std::vector<Tensor> unstacked, parts;
  if (stacked > 0) {  // views of each layer's rows (no dispatch per view), and the outputs stacked alike
    TORCH_CHECK(static_cast<int64_t>(given.size()) == stacked, "rnnkit frame_forward: expected ", stacked,
                " stacked states, got ", given.size());
    for (int64_t j = 0; j < stacked; ++j) {
      TORCH_CHECK(given[j].dim() == 3 && given[j].size(0) == given[0].size(0) && given[j].is_contiguous(),
                  "rnnkit frame_forward: expected contiguous stacked states (layers, B, size), got ", given[j].sizes());
      parts.push_back(at::empty_like(given[j]));
    }
    for (int64_t l = 0; l < given[0].size(0); ++l) {
      for (int64_t j = 0; j < stacked; ++j) {
        const Tensor& g = given[j];
        const int64_t rows = g.size(1), width = g.size(2);
        unstacked.push_back(at::from_blob(static_cast<char*>(g.data_ptr()) + l * rows * width * g.element_size(),
                                          {rows, width}, g.options()));
      }
    }
  }
  const at::TensorList states = stacked > 0 ? at::TensorList(unstacked) : given;
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
    } else if (family == 10) {
      const at::IntArrayRef order = in.ints(4);
      const at::IntArrayRef chunks = in.ints(2);
      const Tensor &w = in.weight(), &bias = in.weight(), &peep = in.weight(), &w_proj = in.weight();
      const Tensor &h0 = in.state(), &c0 = in.state();
      const float fb = in.scalar(), cclip = in.scalar(), pclip = in.scalar();
      r = lstm_packed(h, h0, c0, w, bias, peep, w_proj, order, chunks[0], chunks[1], fb, cclip, pclip);
      out.push_back(r[1]);
      out.push_back(r[2]);
    } else if (family == 12) {
      const at::IntArrayRef ints = in.ints(2);
      const Tensor &w_rz = in.weight(), &w_xn = in.weight(), &w_hn = in.weight();
      const Tensor &b_rz = in.weight(), &b_xn = in.weight(), &b_hn = in.weight();
      r = gru_packed(h, in.state(), w_rz, w_xn, w_hn, b_rz, b_xn, b_hn, ints[0] != 0, ints[1]);
      out.push_back(r[1]);
    } else if (family == 13) {
      const at::IntArrayRef ints = in.ints(2);
      const Tensor &w = in.weight(), &bias = in.weight();
      r = rnn_packed(h, in.state(), w, bias, ints[0] != 0, ints[1]);
      out.push_back(r[1]);
    } else {
      TORCH_CHECK(family == 3, "rnnkit frame_forward: unknown family ", family,
                  " (0 lstm, 1 lnlstm, 2 gru, 3 rnn; packed: 10 lstm, 12 gru, 13 rnn)");
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
  if (stacked > 0) {  // each part's layers in one (layers, B, size) tensor
    for (size_t k = 1; k < out.size(); ++k) {
      const Tensor& part = parts[(k - 1) % stacked];
      const Tensor state = out[k].contiguous();
      TORCH_CHECK(state.numel() == part.size(1) * part.size(2) && state.scalar_type() == part.scalar_type(),
                  "rnnkit frame_forward: a layer's next state ", state.sizes(), " does not fit its stacked part ",
                  part.sizes());
      std::memcpy(static_cast<char*>(part.data_ptr()) + ((k - 1) / stacked) * state.numel() * state.element_size(),
                  state.data_ptr(), state.numel() * state.element_size());
    }
    parts.insert(parts.begin(), h);
    return parts;
  }
  return out;
}

}  // namespace rnnkit
