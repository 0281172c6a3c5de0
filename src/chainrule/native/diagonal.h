// The Diagonal BiLSTM recurrence (chainrule.models.layers._DiagonalBiLSTMRecurrence), one cell
// at a time: each cell's gates are its input-to-state gates plus the two state-to-state products
// (the pixel above, the pixel to the left: u x 4u each), followed by the LSTM update, all in one
// pass; the backward is the same walk in reverse. The PyTorch path does this per diagonal with
// two batched products and about a dozen elementwise operations; with u = 16 units the products
// are small enough that their cost is the operations' count, not their arithmetic.
// Buffers, slots and the order of cells are DiagonalPlan's (see its docstring).
#pragma once

#include "common.h"

namespace chainrule_native::diagonal {

// out (cols) += coef (rows) @ m (rows, cols): a sum of m's rows; with R, C known when compiling
// (R = C = 0: the runtime rows, cols) the loops unroll and out stays in registers. The forward
// adds h (u) @ w (u, 4u) to the gates; the backward dg (4u) @ w^T (4u, u) to the state's gradient.
template <typename T, int R, int C>
inline void add_rows(T* __restrict out, const T* __restrict coef, const T* __restrict m,
                     int64_t rows_, int64_t cols_) {
  const int64_t rows = R > 0 ? R : rows_, cols = C > 0 ? C : cols_;
  for (int64_t r = 0; r < rows; ++r) {
    const T cr = coef[r];
    const T* mr = m + r * cols;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) out[k] += cr * mr[k];
  }
}

// one direction d of the forward walk
template <typename T, int U>
void forward_direction(int64_t d, const T* gin, const T* w_up, const T* w_left,
                       const int64_t* steps, int64_t n_steps, T* hs, T* cs, T* act, T* tc,
                       int64_t hw, int64_t slots, int64_t b, int64_t u_) {
  const int64_t u = U > 0 ? U : u_, u4 = 4 * u;
  std::vector<T> gbuf(u4);
  T* g = gbuf.data();
  const T* wu = w_up + d * u * u4;
  const T* wl = w_left + d * u * u4;
  T* hsd = hs + d * slots * b * u;
  T* csd = cs + d * slots * b * u;
  for (int64_t s = 0; s < n_steps; ++s) {
    const int64_t o = steps[4 * s], nr = steps[4 * s + 1], up = steps[4 * s + 2],
                  cur = steps[4 * s + 3];
    for (int64_t rr = 0; rr < nr; ++rr) {
      for (int64_t bi = 0; bi < b; ++bi) {
        const int64_t cell = (o + rr) * b + bi;  // packed (diagonal order) cell
        const T* above = hsd + ((up + rr) * b + bi) * u;
        const T* left = hsd + ((up + 1 + rr) * b + bi) * u;
        const T* c_left = csd + ((up + 1 + rr) * b + bi) * u;
        const T* gi = gin + (d * hw * b + cell) * u4;
        std::copy(gi, gi + u4, g);
        add_rows<T, U, 4 * U>(g, above, wu, u, u4);
        add_rows<T, U, 4 * U>(g, left, wl, u, u4);
        T* a = act + (d * hw * b + cell) * u4;
#pragma omp simd
        for (int64_t k = 0; k < 3 * u; ++k) a[k] = sigmoid(g[k]);
#pragma omp simd
        for (int64_t k = 3 * u; k < u4; ++k) a[k] = tanh_(g[k]);
        T* h = hsd + ((cur + rr) * b + bi) * u;
        T* c = csd + ((cur + rr) * b + bi) * u;
        T* t = tc + (d * hw * b + cell) * u;
#pragma omp simd
        for (int64_t k = 0; k < u; ++k) {
          const T ck = a[u + k] * c_left[k] + a[k] * a[3 * u + k];
          const T tk = tanh_(ck);
          c[k] = ck;
          t[k] = tk;
          h[k] = a[2 * u + k] * tk;
        }
      }
    }
  }
}

// the two directions are independent: one thread each when two are allowed
template <typename F>
void both_directions(const F& fn) {
  if (at::get_num_threads() > 1) {
    std::thread other([&] { fn(1); });
    fn(0);
    other.join();
  } else {
    fn(0);
    fn(1);
  }
}

template <typename T>
void forward_kernel(const T* gin, const T* w_up, const T* w_left, const int64_t* steps,
                    int64_t n_steps, T* hs, T* cs, T* act, T* tc, int64_t hw, int64_t slots,
                    int64_t b, int64_t u) {
  both_directions([&](int64_t d) {
    if (u == 16)
      forward_direction<T, 16>(d, gin, w_up, w_left, steps, n_steps, hs, cs, act, tc, hw, slots,
                               b, u);
    else
      forward_direction<T, 0>(d, gin, w_up, w_left, steps, n_steps, hs, cs, act, tc, hw, slots,
                              b, u);
  });
}

// one direction d of the backward walk
template <typename T, int U>
void backward_direction(int64_t d, T* dh_all, const T* w_up, const T* w_left,
                        const int64_t* steps, int64_t n_steps, const T* cs, const T* act,
                        const T* tc, T* dgates, int64_t hw, int64_t slots, int64_t b,
                        int64_t u_) {
  const int64_t u = U > 0 ? U : u_, u4 = 4 * u;
  std::vector<T> dc_all(static_cast<size_t>(slots * b * u), T(0));
  std::vector<T> dcbuf(u);
  T* dcv = dcbuf.data();
  const T* wu = w_up + d * u * u4;
  const T* wl = w_left + d * u * u4;
  T* dhd = dh_all + d * slots * b * u;
  T* dcd = dc_all.data();
  const T* csd = cs + d * slots * b * u;
  for (int64_t s = n_steps - 1; s >= 0; --s) {
    const int64_t o = steps[4 * s], nr = steps[4 * s + 1], up = steps[4 * s + 2],
                  cur = steps[4 * s + 3];
    for (int64_t rr = 0; rr < nr; ++rr) {
      for (int64_t bi = 0; bi < b; ++bi) {
        const int64_t cell = (o + rr) * b + bi;
        const int64_t here = ((cur + rr) * b + bi) * u;
        const int64_t left = ((up + 1 + rr) * b + bi) * u;
        const T* a = act + (d * hw * b + cell) * u4;
        const T* t = tc + (d * hw * b + cell) * u;
        const T* dh = dhd + here;
        T* dg = dgates + (d * hw * b + cell) * u4;
#pragma omp simd
        for (int64_t k = 0; k < u; ++k) {
          const T ig = a[k], fg = a[u + k], og = a[2 * u + k], gt = a[3 * u + k];
          const T tk = t[k], dhk = dh[k];
          const T dck = dcd[here + k] + dhk * og * (T(1) - tk * tk);
          dcv[k] = dck;
          dg[k] = dck * ig * (T(1) - ig) * gt;
          dg[u + k] = dck * fg * (T(1) - fg) * csd[left + k];
          dg[2 * u + k] = dhk * og * (T(1) - og) * tk;
          dg[3 * u + k] = dck * ig * (T(1) - gt * gt);
        }
        if (s == 0) continue;
#pragma omp simd
        for (int64_t k = 0; k < u; ++k) dcd[left + k] += dcv[k] * a[u + k];
        add_rows<T, 4 * U, U>(dhd + ((up + rr) * b + bi) * u, dg, wu, u4, u);
        add_rows<T, 4 * U, U>(dhd + left, dg, wl, u4, u);
      }
    }
  }
}

template <typename T>
void backward_kernel(T* dh_all, const T* w_up, const T* w_left, const int64_t* steps,
                     int64_t n_steps, const T* cs, const T* act, const T* tc, T* dgates,
                     int64_t hw, int64_t slots, int64_t b, int64_t u) {
  both_directions([&](int64_t d) {
    if (u == 16)
      backward_direction<T, 16>(d, dh_all, w_up, w_left, steps, n_steps, cs, act, tc, dgates,
                                hw, slots, b, u);
    else
      backward_direction<T, 0>(d, dh_all, w_up, w_left, steps, n_steps, cs, act, tc, dgates, hw,
                               slots, b, u);
  });
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, ": a contiguous CPU tensor");
}

// gin (2, HW, B, 4u); w_up, w_left (2, u, 4u); steps (J, 4) int64; slots S
// -> hs, cs (2, S, B, u), act (2, HW, B, 4u), tc (2, HW, B, u)
std::vector<torch::Tensor> forward(torch::Tensor gin, torch::Tensor w_up, torch::Tensor w_left,
                                   torch::Tensor steps, int64_t slots) {
  check(gin, "gin"), check(w_up, "w_up"), check(w_left, "w_left"), check(steps, "steps");
  const int64_t hw = gin.size(1), b = gin.size(2), u = gin.size(3) / 4;
  auto hs = torch::zeros({2, slots, b, u}, gin.options());
  auto cs = torch::zeros({2, slots, b, u}, gin.options());
  auto act = torch::empty_like(gin);
  auto tc = torch::empty({2, hw, b, u}, gin.options());
  AT_DISPATCH_FLOATING_TYPES(gin.scalar_type(), "diagonal_forward", [&] {
    forward_kernel<scalar_t>(gin.data_ptr<scalar_t>(), w_up.data_ptr<scalar_t>(),
                             w_left.data_ptr<scalar_t>(), steps.data_ptr<int64_t>(),
                             steps.size(0), hs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                             act.data_ptr<scalar_t>(), tc.data_ptr<scalar_t>(), hw, slots, b, u);
  });
  return {hs, cs, act, tc};
}

// dh_all (2, S, B, u): the output's gradient at each cell's slot (added to in place);
// w_up_t, w_left_t (2, 4u, u): the transposed weights -> the gates' gradients (2, HW, B, 4u)
torch::Tensor backward(torch::Tensor dh_all, torch::Tensor w_up, torch::Tensor w_left,
                       torch::Tensor steps, torch::Tensor cs, torch::Tensor act,
                       torch::Tensor tc) {
  check(dh_all, "dh_all"), check(w_up, "w_up"), check(w_left, "w_left"), check(steps, "steps");
  check(cs, "cs"), check(act, "act"), check(tc, "tc");
  const int64_t slots = dh_all.size(1), hw = act.size(1), b = act.size(2), u = act.size(3) / 4;
  auto dgates = torch::empty_like(act);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "diagonal_backward", [&] {
    backward_kernel<scalar_t>(dh_all.data_ptr<scalar_t>(), w_up.data_ptr<scalar_t>(),
                              w_left.data_ptr<scalar_t>(), steps.data_ptr<int64_t>(),
                              steps.size(0), cs.data_ptr<scalar_t>(), act.data_ptr<scalar_t>(),
                              tc.data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>(), hw, slots, b,
                              u);
  });
  return dgates;
}

}  // namespace chainrule_native::diagonal

inline void bind_diagonal(pybind11::module_ m) {
  using namespace chainrule_native::diagonal;
  m.def("forward", &forward, "Diagonal BiLSTM recurrence, forward");
  m.def("backward", &backward, "Diagonal BiLSTM recurrence, gate gradients");
}
