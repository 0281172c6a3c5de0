// The Row LSTM recurrence (chainrule.models.layers._RowLSTMRecurrence) with its per-row
// elementwise work fused: the PyTorch loop spends about a dozen operations per row on the LSTM
// update and its derivative; here each row is one product (at::addmm / at::mm, as before) and
// one pass over its cells. Buffers and layouts are the Python path's (see its docstring).
#pragma once

#include "common.h"

namespace chainrule_native::row_lstm {

// forward of one row: gates g (n, 4u) -> act (n, 4u) = sigmoid(i, f, o), tanh(g); the cell
// c = f c_prev + i g, tc = tanh(c), h = o tc
template <typename T>
void lstm_row(const T* __restrict g, const T* __restrict c_prev, T* __restrict act,
              T* __restrict c, T* __restrict tc, T* __restrict h, int64_t n, int64_t u) {
  for (int64_t i = 0; i < n; ++i) {
    const T* gi = g + i * 4 * u;
    T* ai = act + i * 4 * u;
#pragma omp simd
    for (int64_t j = 0; j < 3 * u; ++j) ai[j] = sigmoid(gi[j]);
#pragma omp simd
    for (int64_t j = 3 * u; j < 4 * u; ++j) ai[j] = tanh_(gi[j]);
    const int64_t o = i * u;
#pragma omp simd
    for (int64_t j = 0; j < u; ++j) {
      const T cj = ai[u + j] * c_prev[o + j] + ai[j] * ai[3 * u + j];
      const T t = tanh_(cj);
      c[o + j] = cj;
      tc[o + j] = t;
      h[o + j] = ai[2 * u + j] * t;
    }
  }
}

// the state taps of row r from the previous row's h: for pixel (b, j), tap t is column
// j + t - p of the same image (zero outside): taps[(b*w + j), kf + t*u + ci]
template <typename T>
void fill_state_taps(T* taps, int64_t ld, int64_t kf, const T* hprev, int64_t b, int64_t w,
                     int64_t u, int64_t k) {
  const int64_t p = k / 2;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t j = 0; j < w; ++j) {
      T* dst = taps + (bi * w + j) * ld + kf;
      for (int64_t t = 0; t < k; ++t) {
        const int64_t src = j + t - p;
        if (src < 0 || src >= w)
          std::fill(dst + t * u, dst + (t + 1) * u, T(0));
        else
          std::copy(hprev + (bi * w + src) * u, hprev + (bi * w + src + 1) * u, dst + t * u);
      }
    }
}

// taps (H, n, kf + k*u), its input columns filled; wcat_t (kf + k*u, 4u); bias (4u)
std::vector<torch::Tensor> row_lstm_forward(torch::Tensor taps, torch::Tensor wcat_t,
                                            torch::Tensor bias, int64_t b, int64_t w,
                                            int64_t k) {
  TORCH_CHECK(taps.is_contiguous() && taps.dim() == 3, "taps: contiguous (H, n, K)");
  const int64_t hh = taps.size(0), n = taps.size(1), ld = taps.size(2);
  const int64_t u4 = wcat_t.size(1), u = u4 / 4, kf = ld - k * u;
  TORCH_CHECK(n == b * w && kf >= 0, "row_lstm_forward: shapes do not match");
  auto out = torch::empty({hh, n, u}, taps.options());
  auto act = torch::empty({hh, n, u4}, taps.options());
  auto cell = torch::empty({hh + 1, n, u}, taps.options());
  auto tc = torch::empty({hh, n, u}, taps.options());
  auto gates = torch::empty({n, u4}, taps.options());
  cell[0].zero_();
  taps[0].narrow(1, kf, k * u).zero_();
  AT_DISPATCH_FLOATING_TYPES(taps.scalar_type(), "row_lstm_forward", [&] {
    for (int64_t r = 0; r < hh; ++r) {
      if (r > 0)
        fill_state_taps<scalar_t>(taps[r].data_ptr<scalar_t>(), ld, kf,
                                  out[r - 1].data_ptr<scalar_t>(), b, w, u, k);
      at::addmm_out(gates, bias, taps[r], wcat_t);
      lstm_row<scalar_t>(gates.data_ptr<scalar_t>(), cell[r].data_ptr<scalar_t>(),
                         act[r].data_ptr<scalar_t>(), cell[r + 1].data_ptr<scalar_t>(),
                         tc[r].data_ptr<scalar_t>(), out[r].data_ptr<scalar_t>(), n, u);
    }
  });
  return {out, act, cell, tc};
}

template <typename T>
void row_lstm_backward_kernel(const torch::Tensor& dout, const torch::Tensor& w_state,
                              const torch::Tensor& act, const torch::Tensor& cell,
                              const torch::Tensor& tc, torch::Tensor& dgates, torch::Tensor& dh,
                              torch::Tensor& carry, int64_t b, int64_t w, int64_t k) {
  const int64_t hh = act.size(0), n = act.size(1), u4 = act.size(2), u = u4 / 4, p = k / 2;
  std::copy(dout[hh - 1].data_ptr<T>(), dout[hh - 1].data_ptr<T>() + n * u, dh.data_ptr<T>());
  T* dhp = dh.data_ptr<T>();
  T* cp = carry.data_ptr<T>();
  for (int64_t r = hh - 1; r >= 0; --r) {
    const T* a = act[r].data_ptr<T>();
    const T* cprev = cell[r].data_ptr<T>();
    const T* t = tc[r].data_ptr<T>();
    T* dg = dgates[r].data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* ai = a + i * u4;
      T* dgi = dg + i * u4;
      const int64_t o = i * u;
#pragma omp simd
      for (int64_t j = 0; j < u; ++j) {
        const T ig = ai[j], fg = ai[u + j], og = ai[2 * u + j], gt = ai[3 * u + j];
        const T tj = t[o + j], dhj = dhp[o + j];
        const T dc = cp[o + j] + dhj * og * (T(1) - tj * tj);
        dgi[j] = dc * ig * (T(1) - ig) * gt;
        dgi[u + j] = dc * fg * (T(1) - fg) * cprev[o + j];
        dgi[2 * u + j] = dhj * og * (T(1) - og) * tj;
        dgi[3 * u + j] = dc * ig * (T(1) - gt * gt);
        cp[o + j] = dc * fg;
      }
    }
    if (r == 0) break;
    auto dtaps = at::mm(dgates[r], w_state);  // (n, k*u)
    const T* dt = dtaps.data_ptr<T>();
    const T* prev = dout[r - 1].data_ptr<T>();
    std::copy(prev, prev + n * u, dhp);
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t j = 0; j < w; ++j) {
        for (int64_t tt = 0; tt < k; ++tt) {
          const int64_t dst = j + tt - p;
          if (dst < 0 || dst >= w) continue;
          const T* s = dt + (bi * w + j) * k * u + tt * u;
          T* d = dhp + (bi * w + dst) * u;
#pragma omp simd
          for (int64_t c = 0; c < u; ++c) d[c] += s[c];
        }
      }
    }
  }
}

// dout (H, n, u); w_state (4u, k*u); act, cell, tc from the forward -> dgates (H, n, 4u)
torch::Tensor row_lstm_backward(torch::Tensor dout, torch::Tensor w_state, torch::Tensor act,
                                torch::Tensor cell, torch::Tensor tc, int64_t b, int64_t w,
                                int64_t k) {
  TORCH_CHECK(dout.is_contiguous() && act.is_contiguous() && cell.is_contiguous() &&
                  tc.is_contiguous() && w_state.is_contiguous(),
              "row_lstm_backward: contiguous tensors");
  const int64_t n = act.size(1), u = act.size(2) / 4;
  auto dgates = torch::empty_like(act);
  auto dh = torch::empty({n, u}, act.options());
  auto carry = torch::zeros({n, u}, act.options());
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "row_lstm_backward", [&] {
    row_lstm_backward_kernel<scalar_t>(dout, w_state, act, cell, tc, dgates, dh, carry, b, w, k);
  });
  return dgates;
}

}  // namespace chainrule_native::row_lstm

inline void bind_row_lstm(pybind11::module_ m) {
  using namespace chainrule_native::row_lstm;
  m.def("row_lstm_forward", &row_lstm_forward, "Row LSTM recurrence, forward");
  m.def("row_lstm_backward", &row_lstm_backward, "Row LSTM recurrence, gate gradients");
}
