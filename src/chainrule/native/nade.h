// NADE over binary data, one row tile at a time: the loop of the paper with the rows' state kept
// in the core's cache (see chainrule/native/__init__.py for how it is built and when it is used).
//
// Per image, over the steps i of its ordering (weights already in step order):
//     out_i = v_i . h,   then if x_i = 1:  a += w_i,  h = act(a)      (a starts at c)
// so the hidden units are recomputed only where the input is 1 (as the library's sparse path).
// Rows are independent: tiles of TILE rows are spread over the threads (std::thread), and
// within a tile each weight row is read once per step for all the tile's rows.
#pragma once

#include "common.h"

namespace chainrule_native::nade {

constexpr int64_t TILE = 8;

// fn(part, first_tile, end_tile) on at::get_num_threads() threads of our own (the kernels are
// built without OpenMP, so that they never start a second OpenMP runtime beside PyTorch's)
template <typename F>
void parallel_tiles(int64_t tiles, const F& fn) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
  if (parts == 1) {
    fn(0, 0, tiles);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t p = 1; p < parts; ++p)
    pool.emplace_back([&, p] { fn(p, p * tiles / parts, (p + 1) * tiles / parts); });
  fn(0, 0, tiles / parts);
  for (auto& th : pool) th.join();
}

// a += w; h = act(a)   (act: sigmoid, or relu)
template <typename T>
inline void add_activate(T* __restrict a, T* __restrict h, const T* __restrict w, int64_t n,
                         bool sigmoid) {
  if (sigmoid) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const T z = a[k] + w[k];
      a[k] = z;
      h[k] = chainrule_native::sigmoid(z);
    }
  } else {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const T z = a[k] + w[k];
      a[k] = z;
      h[k] = z > T(0) ? z : T(0);
    }
  }
}

template <typename T>
inline T dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += x[k] * y[k];
  return s;
}

template <typename T>
inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] += alpha * x[k];
}

// the initial state: a = c, h = act(c)
template <typename T>
inline void start(T* a, T* h, const T* c, int64_t n, bool sigmoid) {
  for (int64_t k = 0; k < n; ++k) a[k] = T(0);
  add_activate(a, h, c, n, sigmoid);
}

// ------------------------------------------------------------------------------- the walk
// The forward loop of n images over D steps, tile by tile: visit(j, i, h) at row j's step i
// (j = row * D + i, h its hidden units) returns that step's value; a one updates a and h.
template <typename T, typename Visit>
void walk(const T* w, const T* c, const T* v, int64_t n, int64_t D, int64_t H, bool sigmoid,
          const Visit& visit) {
  const int64_t tiles = (n + TILE - 1) / TILE;
  parallel_tiles(tiles, [&](int64_t, int64_t t0, int64_t t1) {
    std::vector<T> a(TILE * H), h(TILE * H);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * TILE, nr = std::min(TILE, n - r0);
      for (int64_t r = 0; r < nr; ++r) start(&a[r * H], &h[r * H], c, H, sigmoid);
      for (int64_t i = 0; i < D; ++i) {
        const T* vi = v + i * H;
        const T* wi = w + i * H;
        for (int64_t r = 0; r < nr; ++r) {
          if (visit((r0 + r) * D + i, vi, &h[r * H]))
            add_activate(&a[r * H], &h[r * H], wi, H, sigmoid);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------- forward
// x (B, D) in {0, 1}; w, v (D, H); c (H) -> (B, D) pre-logits v_i . h_i
template <typename T>
void forward_kernel(const T* x, const T* w, const T* c, const T* v, T* out, int64_t B, int64_t D,
                    int64_t H, bool sigmoid) {
  walk(w, c, v, B, D, H, sigmoid, [&](int64_t j, const T* vi, const T* h) {
    out[j] = dot(h, vi, H);
    return x[j] != T(0);
  });
}

// ------------------------------------------------------------------------------- backward
// g (B, D) = dL/d out. Returns dw, dv (D, H) and dc (H). Per row, walking the steps backwards:
// the hidden units are constant between two ones; dL/da of such a segment is
// act'(a) * sum_i g_i v_i over its steps; dw_i gets the sum of dL/da over the segments after i.
template <typename T>
void backward_kernel(const T* x, const T* w, const T* c, const T* v, const T* g, T* dw, T* dv,
                     T* dc, int64_t B, int64_t D, int64_t H, bool sigmoid) {
  const int64_t tiles = (B + TILE - 1) / TILE;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // per-thread accumulators (part 0 writes straight into the outputs)
  std::vector<std::vector<T>> acc(threads - 1);
  parallel_tiles(tiles, [&](int64_t part, int64_t t0, int64_t t1) {
    T *mdw = dw, *mdv = dv, *mdc = dc;
    if (part > 0) {
      auto& buf = acc[part - 1];
      buf.assign(2 * D * H + H, T(0));
      mdw = buf.data();
      mdv = mdw + D * H;
      mdc = mdv + D * H;
    }
    std::vector<T> a(TILE * H), gh(TILE * H), later(TILE * H);
    std::vector<std::vector<T>> stack(TILE);  // per row: h of each segment, in order
    std::vector<int64_t> top(TILE);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * TILE, nr = std::min(TILE, B - r0);
      // forward again, keeping the hidden units of every segment
      for (int64_t r = 0; r < nr; ++r) {
        const T* xr = x + (r0 + r) * D;
        int64_t ones = 0;
        for (int64_t i = 0; i < D; ++i) ones += xr[i] != T(0);
        auto& s = stack[r];
        s.resize((ones + 1) * H);
        T* ar = &a[r * H];
        start(ar, s.data(), c, H, sigmoid);
        int64_t k = 0;
        for (int64_t i = 0; i < D; ++i) {
          if (xr[i] != T(0)) {
            ++k;
            add_activate(ar, s.data() + k * H, w + i * H, H, sigmoid);
          }
        }
        top[r] = k;
        std::fill(&gh[r * H], &gh[r * H] + H, T(0));
        std::fill(&later[r * H], &later[r * H] + H, T(0));
      }
      for (int64_t i = D - 1; i >= 0; --i) {
        const T* vi = v + i * H;
        T* dvi = mdv + i * H;
        T* dwi = mdw + i * H;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t b = r0 + r;
          T* ghr = &gh[r * H];
          T* lr = &later[r * H];
          if (x[b * D + i] != T(0)) {  // the segment that began after step i closes
            const T* hs = stack[r].data() + top[r] * H;
            if (sigmoid) {
#pragma omp simd
              for (int64_t k = 0; k < H; ++k) lr[k] += ghr[k] * hs[k] * (T(1) - hs[k]);
            } else {
#pragma omp simd
              for (int64_t k = 0; k < H; ++k) lr[k] += hs[k] > T(0) ? ghr[k] : T(0);
            }
#pragma omp simd
            for (int64_t k = 0; k < H; ++k) {
              dwi[k] += lr[k];
              ghr[k] = T(0);
            }
            --top[r];
          }
          const T gi = g[b * D + i];
          if (gi != T(0)) {
            axpy(gi, stack[r].data() + top[r] * H, dvi, H);
            axpy(gi, vi, ghr, H);
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) {  // the first segment: its activation is c
        const T* hs = stack[r].data();
        const T* ghr = &gh[r * H];
        const T* lr = &later[r * H];
        if (sigmoid) {
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) mdc[k] += lr[k] + ghr[k] * hs[k] * (T(1) - hs[k]);
        } else {
#pragma omp simd
          for (int64_t k = 0; k < H; ++k) mdc[k] += lr[k] + (hs[k] > T(0) ? ghr[k] : T(0));
        }
      }
    }
  });
  for (auto& part : acc) {
    if (part.empty()) continue;
    const T* buf = part.data();
    for (int64_t k = 0; k < D * H; ++k) dw[k] += buf[k];
    for (int64_t k = 0; k < D * H; ++k) dv[k] += buf[D * H + k];
    for (int64_t k = 0; k < H; ++k) dc[k] += buf[2 * D * H + k];
  }
}

// ------------------------------------------------------------------------------- sampling
// thr (n, D) = logit(u): x_i = 1 iff thr_i < v_i . h + b_i. mask/given (n, D) or empty: where
// the mask is set the given value is kept (completion). Returns x (n, D), uint8.
template <typename T>
void sample_kernel(const T* w, const T* c, const T* v, const T* bias, const T* thr,
                   const bool* mask, const T* given, uint8_t* out, int64_t n, int64_t D,
                   int64_t H, bool sigmoid) {
  walk(w, c, v, n, D, H, sigmoid, [&](int64_t j, const T* vi, const T* h) {
    const bool one = (mask != nullptr && mask[j]) ? given[j] != T(0)
                                                  : thr[j] < dot(h, vi, H) + bias[j % D];
    out[j] = one;
    return one;
  });
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions");
}

torch::Tensor forward(torch::Tensor x, torch::Tensor w, torch::Tensor c, torch::Tensor v,
                      bool sigmoid) {
  check(x, "x", 2), check(w, "w", 2), check(c, "c", 1), check(v, "v", 2);
  const int64_t B = x.size(0), D = x.size(1), H = w.size(1);
  auto out = torch::empty({B, D}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "nade_forward", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                             c.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), B, D, H, sigmoid);
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor w, torch::Tensor c,
                                    torch::Tensor v, torch::Tensor g, bool sigmoid) {
  check(x, "x", 2), check(w, "w", 2), check(c, "c", 1), check(v, "v", 2), check(g, "g", 2);
  const int64_t B = x.size(0), D = x.size(1), H = w.size(1);
  auto dw = torch::zeros_like(w), dv = torch::zeros_like(v), dc = torch::zeros_like(c);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "nade_backward", [&] {
    backward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                              c.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                              g.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
                              dv.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), B, D, H, sigmoid);
  });
  return {dw, dc, dv};
}

torch::Tensor sample(torch::Tensor w, torch::Tensor c, torch::Tensor v, torch::Tensor bias,
                     torch::Tensor thr, torch::Tensor mask, torch::Tensor given, bool sigmoid) {
  check(w, "w", 2), check(c, "c", 1), check(v, "v", 2), check(bias, "bias", 1);
  check(thr, "thr", 2);
  const bool completing = mask.numel() > 0;
  if (completing) check(mask, "mask", 2), check(given, "given", 2);
  const int64_t n = thr.size(0), D = thr.size(1), H = w.size(1);
  auto out = torch::empty({n, D}, thr.options().dtype(torch::kUInt8));
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "nade_sample", [&] {
    sample_kernel<scalar_t>(w.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                            v.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                            thr.data_ptr<scalar_t>(),
                            completing ? mask.data_ptr<bool>() : nullptr,
                            completing ? given.data_ptr<scalar_t>() : nullptr,
                            out.data_ptr<uint8_t>(), n, D, H, sigmoid);
  });
  return out;
}

}  // namespace chainrule_native::nade

inline void bind_nade(pybind11::module_ m) {
  using namespace chainrule_native::nade;
  m.def("forward", &forward, "NADE pre-logits of binary x (B, D)");
  m.def("backward", &backward, "gradients (dw, dc, dv) of the pre-logits");
  m.def("sample", &sample, "ancestral sampling (and completion) from logit(u) thresholds");
}
