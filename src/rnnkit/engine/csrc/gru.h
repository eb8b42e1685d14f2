// The GRU's elementwise equations, shared by its sequence kernel (gru.cpp) and the streamed frame (frame.cpp).
// Blocks r, z, n; w units of one row, pointers at the first of them.
#pragma once

#include "loop.h"

namespace rnnkit {

// Reset-after candidate: n = tanh(x_n + b_xn + r * a_n), nn holding x_n, a_n = h @ W_hn + b_hn.
template <typename T>
inline void gru_candidate_after(T* __restrict__ nn, const T* __restrict__ bx, const T* __restrict__ r,
                                const T* __restrict__ an, int64_t w) {
  for (int64_t j = 0; j < w; ++j) nn[j] += bx[j] + r[j] * an[j];
  tanh_inplace(nn, w);
}

// Reset-before candidate: n = tanh(x_n + (r * h) @ W_hn + b_xn), nn holding x_n, a = (r * h) @ W_hn.
template <typename T>
inline void gru_candidate_before(T* __restrict__ nn, const T* __restrict__ a, const T* __restrict__ bx, int64_t w) {
  for (int64_t j = 0; j < w; ++j) nn[j] += a[j] + bx[j];
  tanh_inplace(nn, w);
}

// h' = n + z * (h - n).
template <typename T>
inline void gru_blend(T* __restrict__ y, const T* __restrict__ nn, const T* __restrict__ z, const T* __restrict__ h,
                      int64_t w) {
  for (int64_t j = 0; j < w; ++j) y[j] = nn[j] + z[j] * (h[j] - nn[j]);
}

}  // namespace rnnkit
