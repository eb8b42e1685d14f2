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

}  // namespace rnnkit
