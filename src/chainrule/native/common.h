// Shared by the kernels of chainrule.native (compiled together, one translation unit:
// kernels.cpp): the headers, glibc's vector exp, and sigmoid.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(CHAINRULE_LIBMVEC)
// glibc's vector math library (libmvec, <= 4 ulp) for exp inside `omp simd` loops; math.h
// declares these variants only under -ffast-math, which would also change the comparisons.
extern "C" {
__attribute__((__simd__("notinbranch"))) float expf(float) noexcept;
__attribute__((__simd__("notinbranch"))) double exp(double) noexcept;
}
#endif

namespace chainrule_native {

inline float exp_(float x) { return expf(x); }
inline double exp_(double x) { return exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// tanh(x) = 2 sigmoid(2x) - 1: one vector exp, as the PyTorch paths (layers._tanh_into)
template <typename T>
inline T tanh_(T x) {
  return T(2) * sigmoid(T(2) * x) - T(1);
}

}  // namespace chainrule_native
