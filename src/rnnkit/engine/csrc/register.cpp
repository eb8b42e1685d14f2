// Registers the fused kernels as torch.ops.rnnkit.*; no pybind, so the build stays light.
#include <torch/library.h>

#include <atomic>

#include "bf16.h"
#include "gemm.h"
#include "ops.h"

namespace rnnkit {
namespace {
bool blas_found() { return have_blas(); }

// How many threads a parallel region of the kernels really runs on: 1 when the build lacks the OpenMP
// that torch parallelises with (at::parallel_for then runs serially, silently).
int64_t parallel_threads() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) { seen.fetch_or(uint64_t(1) << (at::get_thread_num() % 64)); });
  return __builtin_popcountll(seen.load());
}
}  // namespace
}  // namespace rnnkit

// The LSTMs' and the RNN's schemas are written out: their trailing mask_r defaults to None (see ops.h).
TORCH_LIBRARY(rnnkit, m) {
  m.def("lstm_forward(Tensor x, Tensor w_x, Tensor? bias, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_h,"
        " Tensor? peep, Tensor? w_proj, Tensor? mask_h, Tensor? mask_c, int[] gate_order, float forget_bias,"
        " float cell_clip, float proj_clip, bool save, Tensor? mask_r=None) -> Tensor[]",
        &rnnkit::lstm_forward);
  m.def("lstm_backward(Tensor dY, Tensor dhT, Tensor dcT, Tensor x, Tensor w_x, Tensor? bias, Tensor batch_sizes,"
        " Tensor h0, Tensor c0, Tensor w_h, Tensor? peep, Tensor? w_proj, Tensor? mask_h, Tensor? mask_c, Tensor Y,"
        " Tensor G, Tensor C, int[] gate_order, float forget_bias, float cell_clip, float proj_clip, bool need_dx,"
        " Tensor? mask_r=None) -> Tensor[]",
        &rnnkit::lstm_backward);
  m.def("lnlstm_forward(Tensor x, Tensor w_x, Tensor? bias, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_h,"
        " Tensor gamma, Tensor beta, Tensor? mask_h, Tensor? mask_c, int[] gate_order, float forget_bias, float eps,"
        " bool save, Tensor? mask_r=None) -> Tensor[]",
        &rnnkit::lnlstm_forward);
  m.def("lnlstm_backward(Tensor dY, Tensor dhT, Tensor dcT, Tensor x, Tensor w_x, Tensor? bias, Tensor batch_sizes,"
        " Tensor h0, Tensor c0, Tensor w_h, Tensor gamma, Tensor beta, Tensor? mask_h, Tensor? mask_c, Tensor Y,"
        " Tensor XH, Tensor CH, Tensor RS, int[] gate_order, float forget_bias, float eps, bool need_dx,"
        " Tensor? mask_r=None) -> Tensor[]",
        &rnnkit::lnlstm_backward);
  m.def("gru_forward", &rnnkit::gru_forward);
  m.def("gru_backward", &rnnkit::gru_backward);
  m.def("rnn_forward(Tensor x, Tensor w_x, Tensor? bias, Tensor batch_sizes, Tensor h0, Tensor w_h, Tensor? mask_h,"
        " bool relu, bool save, Tensor? mask_r=None) -> Tensor[]",
        &rnnkit::rnn_forward);
  m.def("rnn_backward(Tensor dY, Tensor dhT, Tensor x, Tensor w_x, Tensor? bias, Tensor batch_sizes, Tensor h0,"
        " Tensor w_h, Tensor? mask_h, Tensor Y, bool relu, bool need_dx, Tensor? mask_r=None) -> Tensor[]",
        &rnnkit::rnn_backward);
  m.def("program_forward(Tensor x, Tensor batch_sizes, Tensor[] states0, Tensor[] weights, Tensor[] params,"
        " Tensor[] seqs, int[] slots, int[] steps, int[] fns, int out_width, bool save) -> Tensor[]",
        &rnnkit::program_forward);
  m.def("program_backward(Tensor dY, Tensor[] dfinals, Tensor x, Tensor batch_sizes, Tensor[] states0,"
        " Tensor[] weights, Tensor[] params, Tensor[] seqs, Tensor Y, Tensor[] saved, int[] slots, int[] steps,"
        " int[] fns) -> Tensor[]",
        &rnnkit::program_backward);
  m.def("frame_forward(Tensor x, Tensor[] weights, Tensor[] states, int[] desc, float[] scalars, int stacked=0)"
        " -> Tensor[]",
        &rnnkit::frame_forward);
  m.def("frame_keep(Tensor[] weights, int[] desc, float[] scalars, Tensor[] params) -> int", &rnnkit::frame_keep);
  m.def("frame_drop(int handle) -> ()", &rnnkit::frame_drop);
  m.def("frame_run(Tensor x, Tensor[] states, int handle, int stacked=0) -> Tensor[]", &rnnkit::frame_run);
  m.def("frame_pack(Tensor[] mats, int units, int gates, int chunks, bool bf16=False) -> Tensor", &rnnkit::frame_pack);
  m.def("frame_chunks(int units, int rows, int k, int gates) -> int", &rnnkit::frame_chunks);
  m.def("set_bf16_multiplies", &rnnkit::set_bf16_multiplies);
  m.def("bf16_multiply_units", &rnnkit::bf16_multiply_units);
  m.def("allow_bf16_units", &rnnkit::allow_bf16_units);
  m.def("blas_found", &rnnkit::blas_found);
  m.def("parallel_threads", &rnnkit::parallel_threads);
  m.def("set_min_step_work", &rnnkit::set_min_step_work);
  m.def("row_block_calls", &rnnkit::row_block_calls);
}
