// Registers the fused kernels as torch.ops.rnnkit.*; no pybind, so the build stays light.
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace rnnkit {
namespace {
bool blas_found() { return have_blas(); }
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
  m.def("set_min_step_work", &rnnkit::set_min_step_work);
}
