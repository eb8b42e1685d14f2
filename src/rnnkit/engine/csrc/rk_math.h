// rnnkit's float exp, sigmoid and tanh: branch-free (a Cephes exp, about 1 ulp; tanh by Cephes' odd polynomial below
// |x| = 0.625, else 1 - 2 / (e^{2|x|} + 1)), so that GCC vectorises the loops that call them (-O3 -march=native
// -fno-math-errno). Plain C, valid C++: the fused kernels (common.h) and the generated code of compiled cells
// (rnnkit.engine.compiler.cops, which inlines this file into every unit) share these definitions.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float rk_exp_f(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
static inline float rk_sigmoid_f(float x) { return 1.0f / (1.0f + rk_exp_f(-x)); }
static inline float rk_tanh_f(float x) {
  /* small |x|: Cephes' odd polynomial (relative accuracy near 0) */
  float a = fabsf(x), z = x * x;
  float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
                 3.33332819422e-1f) * z * x + x;
  float big = copysignf(1.0f - 2.0f / (rk_exp_f(2.0f * a) + 1.0f), x);
  return a < 0.625f ? small : big;
}
