// The operators rnnkit registers as torch.ops.rnnkit.* (schemas in register.cpp).
//
// Every forward returns {outputs (total, out), final states (B, ...), saved activations...}; every
// backward returns the gradients of the forward's tensor inputs in the order of its signature
// (undefined where a gradient was not asked for or an input was absent). Gate blocks: LSTM
// gate_order = block index of (i, g, f, o) in the weights' columns (TF: 0, 1, 2, 3 for i, j, f, o;
// torch: 0, 2, 1, 3); GRU blocks are always r, z(u), n(candidate), the candidate's optionally in tensors of its
// own (w_xn, w_hn; then w_x, w_h hold r, z only).
// mask_r (B, R), recurrent dropout (Keras / Gal): a per-sequence mask on the h the recurrent matmul reads only
// (h_{t-1} * mask_r @ W_h); the outputs and the carried state are not masked by it (mask_h, a DropoutWrapper's
// state mask, multiplies the carried state). The LSTMs and the RNN take it last, defaulting to None (absent: the
// kernels run as without it); the GRU, after mask_h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace rnnkit {

using at::Tensor;
using OptT = std::optional<Tensor>;

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                 const Tensor& h0, const Tensor& c0, const Tensor& w_h, const OptT& peep,
                                 const OptT& w_proj, const OptT& mask_h, const OptT& mask_c,
                                 at::IntArrayRef gate_order, double forget_bias, double cell_clip, double proj_clip,
                                 bool save, const OptT& mask_r);

std::vector<Tensor> lstm_backward(const Tensor& dY, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                                  const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_h, const OptT& peep, const OptT& w_proj,
                                  const OptT& mask_h, const OptT& mask_c, const Tensor& Y, const Tensor& G,
                                  const Tensor& C, at::IntArrayRef gate_order, double forget_bias, double cell_clip,
                                  double proj_clip, bool need_dx, const OptT& mask_r);

std::vector<Tensor> lnlstm_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                   const Tensor& h0,
                                   const Tensor& c0, const Tensor& w_h, const Tensor& gamma, const Tensor& beta,
                                   const OptT& mask_h, const OptT& mask_c, at::IntArrayRef gate_order,
                                   double forget_bias, double eps, bool save, const OptT& mask_r);

std::vector<Tensor> lnlstm_backward(const Tensor& dY, const Tensor& dhT, const Tensor& dcT, const Tensor& x,
                                    const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes, const Tensor& h0,
                                    const Tensor& c0, const Tensor& w_h, const Tensor& gamma, const Tensor& beta, const OptT& mask_h,
                                    const OptT& mask_c, const Tensor& Y, const Tensor& XH, const Tensor& CH,
                                    const Tensor& RS, at::IntArrayRef gate_order, double forget_bias, double eps,
                                    bool need_dx, const OptT& mask_r);

std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& w_x, const OptT& bias_x, const Tensor& batch_sizes,
                                const Tensor& h0, const Tensor& w_h, const OptT& bias_h, const OptT& w_xn,
                                const OptT& w_hn, const OptT& mask_h, const OptT& mask_r, bool reset_after,
                                bool save);

std::vector<Tensor> gru_backward(const Tensor& dY, const Tensor& dhT, const Tensor& x, const Tensor& w_x,
                                 const OptT& bias_x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& w_h,
                                 const OptT& bias_h, const OptT& w_xn, const OptT& w_hn, const OptT& mask_h,
                                 const OptT& mask_r, const Tensor& Y, const Tensor& G, const Tensor& S,
                                 bool reset_after, bool need_dx);

std::vector<Tensor> rnn_forward(const Tensor& x, const Tensor& w_x, const OptT& bias, const Tensor& batch_sizes,
                                const Tensor& h0, const Tensor& w_h, const OptT& mask_h, bool relu, bool save,
                                const OptT& mask_r);

std::vector<Tensor> rnn_backward(const Tensor& dY, const Tensor& dhT, const Tensor& x, const Tensor& w_x,
                                 const OptT& bias, const Tensor& batch_sizes, const Tensor& h0, const Tensor& w_h,
                                 const OptT& mask_h, const Tensor& Y, bool relu, bool need_dx, const OptT& mask_r);

// A compiled user cell's step (program.cpp; the program's description in compiler/native.py).
std::vector<Tensor> program_forward(const Tensor& x, const Tensor& batch_sizes, at::TensorList states0,
                                    at::TensorList weights, at::TensorList params, at::TensorList seqs,
                                    at::IntArrayRef slots, at::IntArrayRef steps, at::IntArrayRef fns,
                                    int64_t out_width, bool save);

std::vector<Tensor> program_backward(const Tensor& dY, at::TensorList dfinals, const Tensor& x,
                                     const Tensor& batch_sizes, at::TensorList states0, at::TensorList weights,
                                     at::TensorList params, at::TensorList seqs, const Tensor& Y,
                                     at::TensorList saved, at::IntArrayRef slots, at::IntArrayRef steps,
                                     at::IntArrayRef fns);

// One frame of a stack of layers: every layer's forward for a single step, in one call (frame.cpp).
std::vector<Tensor> frame_forward(const Tensor& x, at::TensorList weights, at::TensorList states,
                                  at::IntArrayRef desc, at::ArrayRef<double> scalars, int64_t stacked);
// frame_forward's weights, description and scalars kept between frames under a handle (frame_keep; frame_drop frees
// them) with the parameters they were made from, and a frame run on them: frame_run(x, states, handle, stacked) is
// frame_forward(x, *kept, states, stacked) while every parameter keeps its storage, dtype and version and the thread
// count is the same, else {} (nothing run: the caller makes them again).
int64_t frame_keep(at::TensorList weights, at::IntArrayRef desc, at::ArrayRef<double> scalars, at::TensorList params);
void frame_drop(int64_t handle);
std::vector<Tensor> frame_run(const Tensor& x, at::TensorList states, int64_t handle, int64_t stacked);
// A layer's weights packed for frames: the columns of `gates` blocks of `units`, over the rows of `mats` stacked, in
// panels per chunk of units (frame.cpp), float32 or (bf16: a bf16 model's values, exact) bfloat16; and how many
// chunks a frame of that layer is worth.
Tensor frame_pack(at::TensorList mats, int64_t units, int64_t gates, int64_t chunks, bool bf16);
int64_t frame_chunks(int64_t units, int64_t rows, int64_t k, int64_t gates);

}  // namespace rnnkit
