// Registers the fused kernels as torch.ops.rnnkit.*; no pybind, so the build stays light.
#include <torch/library.h>

#include <atomic>

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

TORCH_LIBRARY(rnnkit, m) {
  m.def("lstm_forward", &rnnkit::lstm_forward);
  m.def("lstm_backward", &rnnkit::lstm_backward);
  m.def("lnlstm_forward", &rnnkit::lnlstm_forward);
  m.def("lnlstm_backward", &rnnkit::lnlstm_backward);
  m.def("gru_forward", &rnnkit::gru_forward);
  m.def("gru_backward", &rnnkit::gru_backward);
  m.def("rnn_forward", &rnnkit::rnn_forward);
  m.def("rnn_backward", &rnnkit::rnn_backward);
  m.def("blas_found", &rnnkit::blas_found);
  m.def("parallel_threads", &rnnkit::parallel_threads);
  m.def("set_min_step_work", &rnnkit::set_min_step_work);
}
