// pybind11 bindings of the CUDA pooling and layer kernels (csrc/cuda/pool.cu,
// layers.cu) compiled for the CPU grid emulator, registered into fastconv._emu
// by emu_module.cpp. Same function names, arguments and checks as the CPU
// module's (cpu_pool.cpp, cpu_layers.cpp), so fastconv.ops runs them through
// backends.layer_kernel(name, "cuda-emu") unchanged; arrays are NumPy buffers
// standing in for device memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "fastconv/layers_cuda.h"

namespace py = pybind11;
using fastconv::AdaptiveProblem;
using fastconv::PoolKind;
using fastconv::PoolProblem;
namespace fc = fastconv::cuda;

namespace {

bool f64(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 8; }

// ------------------------------------------------------------ array checks
template <typename E>
E* buf(py::array& a, const char* name, int64_t expect, bool write) {
  if (!py::isinstance<py::array_t<E>>(a) || a.itemsize() != static_cast<py::ssize_t>(sizeof(E)))
    throw py::type_error(std::string(name) + ": dtype does not match the kernel's (" + std::string(py::str(a.dtype())) +
                         ")");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (a.size() != expect)
    throw py::value_error(std::string(name) + ": has " + std::to_string(a.size()) + " elements, the kernel needs " +
                          std::to_string(expect));
  if (write && !a.writeable()) throw py::value_error(std::string(name) + ": is read-only");
  return static_cast<E*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

template <typename E>
E* opt(py::object o, const char* name, int64_t expect, bool write) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  return buf<E>(a, name, expect, write);
}

void nonneg(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d < 0) throw py::value_error("sizes must be >= 0");
}

// (d0, d1, d2) array of T
template <typename T>
T* data3(py::array& a, const char* name, int64_t d0, int64_t d1, int64_t d2, bool write) {
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().kind() != 'f' || a.itemsize() != py::ssize_t(sizeof(T)))
    throw py::type_error(std::string(name) + ": dtype does not match the kernel's");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (a.ndim() != 3 || a.shape(0) != d0 || a.shape(1) != d1 || a.shape(2) != d2)
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(d0) + ", " + std::to_string(d1) +
                          ", " + std::to_string(d2) + ")");
  if (write && !a.writeable()) throw py::value_error(std::string(name) + ": is read-only");
  return static_cast<T*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

int64_t* idx3(py::object o, int64_t d0, int64_t d1, int64_t d2, bool write) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  if (a.dtype().kind() != 'i' || a.itemsize() != 8) throw py::type_error("indices: must be an int64 array");
  if (!(a.flags() & py::array::c_style)) throw py::value_error("indices: must be C-contiguous");
  if (a.ndim() != 3 || a.shape(0) != d0 || a.shape(1) != d1 || a.shape(2) != d2)
    throw py::value_error("indices: shape does not match the output");
  if (write && !a.writeable()) throw py::value_error("indices: is read-only");
  return static_cast<int64_t*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

// ----------------------------------------------------------------- pooling
PoolKind kind_of(int k) {
  if (k < 0 || k > 2) throw py::value_error("pool kind must be 0 (max), 1 (min) or 2 (avg)");
  return static_cast<PoolKind>(k);
}

PoolProblem make(PoolKind k, const py::array& x, const py::array& y, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                 int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool cip, int64_t div) {
  if (x.ndim() != 3 || y.ndim() != 3) throw py::value_error("pool: arrays must be 3-D (planes, H, W)");
  PoolProblem p;
  p.planes = x.shape(0); p.H = x.shape(1); p.W = x.shape(2);
  p.P = y.shape(1); p.Q = y.shape(2);
  p.kh = kh; p.kw = kw; p.sh = sh; p.sw = sw; p.ph = ph; p.pw = pw; p.dh = dh; p.dw = dw;
  p.count_include_pad = cip;
  p.divisor_override = div;
  if (y.shape(0) != p.planes) throw py::value_error("pool: input and output plane counts differ");
  const std::string why = fc::pool_problem_check(k, p);
  if (!why.empty()) throw py::value_error("pool: " + why);
  return p;
}

AdaptiveProblem make_adaptive(PoolKind k, const py::array& x, const py::array& y) {
  if (x.ndim() != 3 || y.ndim() != 3) throw py::value_error("adaptive pool: arrays must be 3-D");
  AdaptiveProblem p;
  p.planes = x.shape(0); p.H = x.shape(1); p.W = x.shape(2); p.P = y.shape(1); p.Q = y.shape(2);
  if (y.shape(0) != p.planes) throw py::value_error("adaptive pool: plane counts differ");
  const std::string why = fc::adaptive_problem_check(k, p);
  if (!why.empty()) throw py::value_error("adaptive pool: " + why);
  return p;
}

// The CUDA backward gathers, for each input element, over the windows that
// contain it, so a saved index must be a tap of its own window (every index
// the forward produces is). The CPU module scatters to any index; rather
// than silently dropping such a gradient, say so.
[[noreturn]] void bad_index(int64_t plane, int64_t o, int64_t v) {
  throw py::value_error("indices: entry " + std::to_string(v) + " at (plane " + std::to_string(plane) + ", output " +
                        std::to_string(o) +
                        ") is not a position of its own pooling window (the CUDA backward gathers over the "
                        "windows containing each input element)");
}

void check_window_indices(const PoolProblem& p, const int64_t* idx) {
  for (int64_t plane = 0; plane < p.planes; ++plane)
    for (int64_t oh = 0; oh < p.P; ++oh)
      for (int64_t q = 0; q < p.Q; ++q) {
        const int64_t o = oh * p.Q + q, v = idx[(plane * p.P + oh) * p.Q + q];
        if (v < 0 || v >= p.H * p.W) bad_index(plane, o, v);
        const int64_t rh = v / p.W - (oh * p.sh - p.ph), rw = v % p.W - (q * p.sw - p.pw);
        if (rh < 0 || rh % p.dh || rh / p.dh >= p.kh || rw < 0 || rw % p.dw || rw / p.dw >= p.kw)
          bad_index(plane, o, v);
      }
}

void check_adaptive_indices(const AdaptiveProblem& p, const int64_t* idx) {
  for (int64_t plane = 0; plane < p.planes; ++plane)
    for (int64_t oh = 0; oh < p.P; ++oh)
      for (int64_t q = 0; q < p.Q; ++q) {
        const int64_t o = oh * p.Q + q, v = idx[(plane * p.P + oh) * p.Q + q];
        if (v < 0 || v >= p.H * p.W) bad_index(plane, o, v);
        const int64_t h = v / p.W, w = v % p.W;
        if (h < oh * p.H / p.P || h >= ((oh + 1) * p.H + p.P - 1) / p.P || w < q * p.W / p.Q ||
            w >= ((q + 1) * p.W + p.Q - 1) / p.Q)
          bad_index(plane, o, v);
      }
}

template <typename T>
void fwd_t(PoolKind k, const PoolProblem& p, py::array& x, py::array& y, py::object idx) {
  const T* xp = data3<T>(x, "input", p.planes, p.H, p.W, false);
  T* yp = data3<T>(y, "output", p.planes, p.P, p.Q, true);
  int64_t* ip = idx3(idx, p.planes, p.P, p.Q, true);
  py::gil_scoped_release release;
  fc::pool2d_fwd<T>(k, p, xp, yp, ip, nullptr);
}

template <typename T>
void bwd_t(PoolKind k, const PoolProblem& p, py::array& dy, py::object x, py::object idx, py::array& dx) {
  const T* dyp = data3<T>(dy, "grad_output", p.planes, p.P, p.Q, false);
  T* dxp = data3<T>(dx, "grad_input", p.planes, p.H, p.W, true);
  const int64_t* ip = k == PoolKind::Avg ? nullptr : idx3(idx, p.planes, p.P, p.Q, false);
  const T* xp = nullptr;
  py::array xa;
  if (k != PoolKind::Avg && ip == nullptr) {
    if (x.is_none()) throw py::value_error("pool backward: needs the input or the indices");
    xa = x.cast<py::array>();
    xp = data3<T>(xa, "input", p.planes, p.H, p.W, false);
  }
  if (ip) check_window_indices(p, ip);
  py::gil_scoped_release release;
  fc::pool2d_bwd<T>(k, p, dyp, xp, ip, dxp, nullptr);
}

template <typename T>
void afwd_t(PoolKind k, const AdaptiveProblem& p, py::array& x, py::array& y, py::object idx) {
  const T* xp = data3<T>(x, "input", p.planes, p.H, p.W, false);
  T* yp = data3<T>(y, "output", p.planes, p.P, p.Q, true);
  int64_t* ip = k == PoolKind::Avg ? nullptr : idx3(idx, p.planes, p.P, p.Q, true);
  py::gil_scoped_release release;
  fc::adaptive_pool2d_fwd<T>(k, p, xp, yp, ip, nullptr);
}

template <typename T>
void abwd_t(PoolKind k, const AdaptiveProblem& p, py::array& dy, py::object x, py::object idx, py::array& dx) {
  const T* dyp = data3<T>(dy, "grad_output", p.planes, p.P, p.Q, false);
  T* dxp = data3<T>(dx, "grad_input", p.planes, p.H, p.W, true);
  const int64_t* ip = k == PoolKind::Avg ? nullptr : idx3(idx, p.planes, p.P, p.Q, false);
  const T* xp = nullptr;
  py::array xa;
  if (k != PoolKind::Avg && ip == nullptr) {
    if (x.is_none()) throw py::value_error("adaptive pool backward: needs the input or the indices");
    xa = x.cast<py::array>();
    xp = data3<T>(xa, "input", p.planes, p.H, p.W, false);
  }
  if (ip) check_adaptive_indices(p, ip);
  py::gil_scoped_release release;
  fc::adaptive_pool2d_bwd<T>(k, p, dyp, xp, ip, dxp, nullptr);
}

// ------------------------------------------------------------------ layers
template <typename T>
void bn_stats_t(py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array var) {
  const T* xp = buf<T>(x, "input", N * C * L, false);
  double* mp = buf<double>(mean, "mean", C, true);
  double* vp = buf<double>(var, "var", C, true);
  py::gil_scoped_release r;
  fc::bn_stats<T>(N, C, L, xp, mp, vp, nullptr);
}

template <typename T>
void bn_apply_t(py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array invstd, py::object w,
                py::object b, py::array y) {
  const T* xp = buf<T>(x, "input", N * C * L, false);
  const double* mp = buf<double>(mean, "mean", C, false);
  const double* ip = buf<double>(invstd, "invstd", C, false);
  const T* wp = opt<T>(w, "weight", C, false);
  const T* bp = opt<T>(b, "bias", C, false);
  T* yp = buf<T>(y, "output", N * C * L, true);
  py::gil_scoped_release r;
  fc::bn_apply<T>(N, C, L, xp, mp, ip, wp, bp, yp, nullptr);
}

template <typename T>
void bn_backward_t(py::array dy, py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array invstd,
                   py::object w, bool training, py::object dx, py::object dw, py::object db) {
  const T* dyp = buf<T>(dy, "grad_output", N * C * L, false);
  const T* xp = buf<T>(x, "input", N * C * L, false);
  const double* mp = buf<double>(mean, "mean", C, false);
  const double* ip = buf<double>(invstd, "invstd", C, false);
  const T* wp = opt<T>(w, "weight", C, false);
  T* dxp = opt<T>(dx, "grad_input", N * C * L, true);
  T* dwp = opt<T>(dw, "grad_weight", C, true);
  T* dbp = opt<T>(db, "grad_bias", C, true);
  if (N * L == 0) throw py::value_error("batch_norm_backward: no elements per channel");
  py::gil_scoped_release r;
  fc::bn_backward<T>(N, C, L, dyp, xp, mp, ip, wp, training, dxp, dwp, dbp, nullptr);
}

template <typename T>
void lrn_t(py::object dy, py::array x, int64_t N, int64_t C, int64_t L, int64_t size, double alpha, double beta,
           double k, py::array out) {
  if (size < 1) throw py::value_error("size must be >= 1");
  const T* xp = buf<T>(x, "input", N * C * L, false);
  const T* dyp = opt<T>(dy, "grad_output", N * C * L, false);
  T* op = buf<T>(out, dyp ? "grad_input" : "output", N * C * L, true);
  py::gil_scoped_release r;
  if (dyp) fc::lrn_backward<T>(N, C, L, dyp, xp, size, alpha, beta, k, op, nullptr);
  else fc::lrn_forward<T>(N, C, L, xp, size, alpha, beta, k, op, nullptr);
}

template <typename T>
void act_t(int kind, py::object dy, py::array x, py::array out) {
  if (kind < 0 || kind > 2) throw py::value_error("unknown activation kind");
  const int64_t n = x.size();
  const T* xp = buf<T>(x, "input", n, false);
  const T* dyp = opt<T>(dy, "grad_output", n, false);
  T* op = buf<T>(out, "output", n, true);
  py::gil_scoped_release r;
  if (dyp) fc::activation_backward<T>(kind, n, dyp, xp, op, nullptr);
  else fc::activation_forward<T>(kind, n, xp, op, nullptr);
}

template <typename T>
void softmax_t(bool log, int64_t outer, int64_t D, int64_t inner, py::object dy, py::array y_or_x, py::array out) {
  nonneg({outer, D, inner});
  const int64_t n = outer * D * inner;
  const T* xp = buf<T>(y_or_x, "input", n, false);
  const T* dyp = opt<T>(dy, "grad_output", n, false);
  T* op = buf<T>(out, "output", n, true);
  py::gil_scoped_release r;
  if (dyp) fc::softmax_backward<T>(log, outer, D, inner, dyp, xp, op, nullptr);
  else fc::softmax_forward<T>(log, outer, D, inner, xp, op, nullptr);
}

template <typename T>
void ce_t(py::array logits, py::array target, int64_t N, int64_t C, int64_t ignore_index, double eps, double scale,
          py::array row_loss, py::array grad) {
  nonneg({N, C});
  const T* zp = buf<T>(logits, "input", N * C, false);
  const int64_t* tp = buf<int64_t>(target, "target", N, false);
  for (int64_t i = 0; i < N; ++i)
    if (tp[i] != ignore_index && (tp[i] < 0 || tp[i] >= C))
      throw py::value_error("target[" + std::to_string(i) + "] = " + std::to_string(tp[i]) + " is outside [0, " +
                            std::to_string(C) + ")");
  double* lp = buf<double>(row_loss, "row_loss", N, true);
  T* gp = buf<T>(grad, "grad", N * C, true);
  py::gil_scoped_release r;
  fc::cross_entropy_fused<T>(N, C, zp, tp, ignore_index, eps, scale, lp, gp, nullptr);
}

template <typename T>
void dropout_t(py::array x, uint64_t seed, uint64_t offset, uint64_t threshold, double scale, py::array y,
               py::array mask) {
  const int64_t n = x.size();
  const T* xp = buf<T>(x, "input", n, false);
  T* yp = buf<T>(y, "output", n, true);
  uint8_t* mp = buf<uint8_t>(mask, "mask", n, true);
  py::gil_scoped_release r;
  fc::dropout_forward<T>(n, xp, seed, offset, threshold, T(scale), yp, mp, nullptr);
}

template <typename T>
void dropout_bwd_t(py::array dy, py::array mask, double scale, py::array dx) {
  const int64_t n = dy.size();
  const T* dyp = buf<T>(dy, "grad_output", n, false);
  const uint8_t* mp = buf<uint8_t>(mask, "mask", n, false);
  T* dxp = buf<T>(dx, "grad_input", n, true);
  py::gil_scoped_release r;
  fc::dropout_backward<T>(n, dyp, mp, T(scale), dxp, nullptr);
}

template <typename T>
void linear_t(py::array x, py::array w, py::object b, int64_t M, int64_t I, int64_t O, py::array y) {
  nonneg({M, I, O});
  const T* xp = buf<T>(x, "input", M * I, false);
  const T* wp = buf<T>(w, "weight", O * I, false);
  const T* bp = opt<T>(b, "bias", O, false);
  T* yp = buf<T>(y, "output", M * O, true);
  py::gil_scoped_release r;
  fc::linear_forward<T>(M, I, O, xp, wp, bp, yp, nullptr);
}

template <typename T>
void linear_bwd_t(py::array dy, py::array x, py::array w, int64_t M, int64_t I, int64_t O, py::object dx,
                  py::object dw, py::object db) {
  nonneg({M, I, O});
  const T* dyp = buf<T>(dy, "grad_output", M * O, false);
  const T* xp = buf<T>(x, "input", M * I, false);
  const T* wp = buf<T>(w, "weight", O * I, false);
  T* dxp = opt<T>(dx, "grad_input", M * I, true);
  T* dwp = opt<T>(dw, "grad_weight", O * I, true);
  T* dbp = opt<T>(db, "grad_bias", O, true);
  py::gil_scoped_release r;
  fc::linear_backward<T>(M, I, O, dyp, xp, wp, dxp, dwp, dbp, nullptr);
}

}  // namespace

void register_emu_layers(py::module_& m) {
  m.def("pool2d_forward",
        [](int kind, py::array x, py::array y, py::object indices, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
           int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad, int64_t divisor_override) {
          const PoolKind k = kind_of(kind);
          const PoolProblem p = make(k, x, y, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          if (f64(x)) fwd_t<double>(k, p, x, y, indices);
          else fwd_t<float>(k, p, x, y, indices);
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
        py::arg("count_include_pad"), py::arg("divisor_override"),
        "Pooling forward on (planes, H, W) -> (planes, P, Q); kind 0 max, 1 min, 2 avg. One output per "
        "thread; global windows one block per plane.");

  m.def("pool2d_backward",
        [](int kind, py::array dy, py::object x, py::object indices, py::array dx, int64_t kh, int64_t kw,
           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad,
           int64_t divisor_override) {
          const PoolKind k = kind_of(kind);
          const PoolProblem p = make(k, dx, dy, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          if (f64(dy)) bwd_t<double>(k, p, dy, x, indices, dx);
          else bwd_t<float>(k, p, dy, x, indices, dx);
        },
        py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("indices"), py::arg("grad_input"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"),
        py::arg("dw"), py::arg("count_include_pad"), py::arg("divisor_override"),
        "Pooling backward: a gather, one input element per thread; max/min without indices recompute each "
        "window's argmax. Indices must be positions of their own window.");

  m.def("adaptive_pool2d_forward",
        [](int kind, py::array x, py::array y, py::object indices) {
          const PoolKind k = kind_of(kind);
          const AdaptiveProblem p = make_adaptive(k, x, y);
          if (f64(x)) afwd_t<double>(k, p, x, y, indices);
          else afwd_t<float>(k, p, x, y, indices);
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"));

  m.def("adaptive_pool2d_backward",
        [](int kind, py::array dy, py::object x, py::object indices, py::array dx) {
          const PoolKind k = kind_of(kind);
          const AdaptiveProblem p = make_adaptive(k, dx, dy);
          if (f64(dy)) abwd_t<double>(k, p, dy, x, indices, dx);
          else abwd_t<float>(k, p, dy, x, indices, dx);
        },
        py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("indices"), py::arg("grad_input"));

  m.def("bn_stats", [](py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array var) {
    nonneg({N, C, L});
    if (N * L == 0) throw py::value_error("batch_norm: no elements per channel");
    if (f64(x)) bn_stats_t<double>(x, N, C, L, mean, var);
    else bn_stats_t<float>(x, N, C, L, mean, var);
  });
  m.def("bn_apply", [](py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array invstd, py::object w,
                       py::object b, py::array y) {
    nonneg({N, C, L});
    if (f64(x)) bn_apply_t<double>(x, N, C, L, mean, invstd, w, b, y);
    else bn_apply_t<float>(x, N, C, L, mean, invstd, w, b, y);
  });
  m.def("bn_backward", [](py::array dy, py::array x, int64_t N, int64_t C, int64_t L, py::array mean,
                          py::array invstd, py::object w, bool training, py::object dx, py::object dw, py::object db) {
    nonneg({N, C, L});
    if (f64(x)) bn_backward_t<double>(dy, x, N, C, L, mean, invstd, w, training, dx, dw, db);
    else bn_backward_t<float>(dy, x, N, C, L, mean, invstd, w, training, dx, dw, db);
  });
  m.def("lrn", [](py::object dy, py::array x, int64_t N, int64_t C, int64_t L, int64_t size, double alpha,
                  double beta, double k, py::array out) {
    nonneg({N, C, L});
    if (f64(x)) lrn_t<double>(dy, x, N, C, L, size, alpha, beta, k, out);
    else lrn_t<float>(dy, x, N, C, L, size, alpha, beta, k, out);
  });
  m.def("activation", [](int kind, py::object dy, py::array x, py::array out) {
    if (f64(x)) act_t<double>(kind, dy, x, out);
    else act_t<float>(kind, dy, x, out);
  });
  m.def("softmax", [](bool log, int64_t outer, int64_t D, int64_t inner, py::object dy, py::array x, py::array out) {
    if (f64(x)) softmax_t<double>(log, outer, D, inner, dy, x, out);
    else softmax_t<float>(log, outer, D, inner, dy, x, out);
  });
  m.def("cross_entropy", [](py::array logits, py::array target, int64_t N, int64_t C, int64_t ignore_index,
                            double eps, double scale, py::array row_loss, py::array grad) {
    if (f64(logits)) ce_t<double>(logits, target, N, C, ignore_index, eps, scale, row_loss, grad);
    else ce_t<float>(logits, target, N, C, ignore_index, eps, scale, row_loss, grad);
  });
  m.def("dropout", [](py::array x, uint64_t seed, uint64_t offset, uint64_t threshold, double scale, py::array y,
                      py::array mask) {
    if (f64(x)) dropout_t<double>(x, seed, offset, threshold, scale, y, mask);
    else dropout_t<float>(x, seed, offset, threshold, scale, y, mask);
  });
  m.def("dropout_backward", [](py::array dy, py::array mask, double scale, py::array dx) {
    if (f64(dy)) dropout_bwd_t<double>(dy, mask, scale, dx);
    else dropout_bwd_t<float>(dy, mask, scale, dx);
  });
  m.def("linear", [](py::array x, py::array w, py::object b, int64_t M, int64_t I, int64_t O, py::array y) {
    if (f64(x)) linear_t<double>(x, w, b, M, I, O, y);
    else linear_t<float>(x, w, b, M, I, O, y);
  });
  m.def("linear_backward", [](py::array dy, py::array x, py::array w, int64_t M, int64_t I, int64_t O, py::object dx,
                              py::object dw, py::object db) {
    if (f64(x)) linear_bwd_t<double>(dy, x, w, M, I, O, dx, dw, db);
    else linear_bwd_t<float>(dy, x, w, M, I, O, dx, dw, db);
  });

#if defined(FC_EMU_TEST_HOOKS)
  m.def("_pool2d_forward_off_by_one",
        [](int kind, py::array x, py::array y, py::object indices, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
           int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad, int64_t divisor_override) {
          const PoolKind k = kind_of(kind);
          const PoolProblem p = make(k, x, y, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          const bool d = f64(x);
          if (d) {
            const double* xp = data3<double>(x, "input", p.planes, p.H, p.W, false);
            double* yp = data3<double>(y, "output", p.planes, p.P, p.Q, true);
            int64_t* ip = idx3(indices, p.planes, p.P, p.Q, true);
            py::gil_scoped_release release;
            fc::pool2d_fwd_off_by_one<double>(k, p, xp, yp, ip);
          } else {
            const float* xp = data3<float>(x, "input", p.planes, p.H, p.W, false);
            float* yp = data3<float>(y, "output", p.planes, p.P, p.Q, true);
            int64_t* ip = idx3(indices, p.planes, p.P, p.Q, true);
            py::gil_scoped_release release;
            fc::pool2d_fwd_off_by_one<float>(k, p, xp, yp, ip);
          }
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
        py::arg("count_include_pad"), py::arg("divisor_override"),
        "TEST ONLY: pool2d_forward's fixed-window kernel (never the global one) with an off-by-one image bound: "
        "the last input column is treated as padding. A test shows its results are wrong.");
#endif
}
