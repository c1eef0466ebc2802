// pybind11 bindings of the CPU layer kernels (registered into fastconv._cpu).
// fastconv/ops/layers.py validates arguments with friendly messages and
// passes C-contiguous arrays of the compute dtype; these bindings re-check
// dtype, contiguity and element counts so that no call can hand a kernel a
// buffer of the wrong size, and release the GIL around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "fastconv/layers_cpu.h"

namespace py = pybind11;

namespace {

template <typename E>
E* buf(py::array& a, const char* name, int64_t expect, bool write) {
  if (!py::isinstance<py::array_t<E>>(a) || a.itemsize() != static_cast<py::ssize_t>(sizeof(E)))
    throw py::type_error(std::string(name) + ": dtype does not match the kernel's (" +
                         std::string(py::str(a.dtype())) + ")");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (a.size() != expect)
    throw py::value_error(std::string(name) + ": has " + std::to_string(a.size()) +
                          " elements, the kernel needs " + std::to_string(expect));
  if (write && !a.writeable()) throw py::value_error(std::string(name) + ": is read-only");
  return static_cast<E*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

template <typename E>
E* opt(py::object o, const char* name, int64_t expect, bool write) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  return buf<E>(a, name, expect, write);
}

bool f64(py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 8; }

void nonneg(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d < 0) throw py::value_error("sizes must be >= 0");
}

template <typename T>
void bn_stats_t(py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array var) {
  const T* xp = buf<T>(x, "input", N * C * L, false);
  double* mp = buf<double>(mean, "mean", C, true);
  double* vp = buf<double>(var, "var", C, true);
  py::gil_scoped_release r;
  fastconv::bn_stats<T>(N, C, L, xp, mp, vp);
}

template <typename T>
void bn_apply_t(py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array invstd,
                py::object w, py::object b, py::array y) {
  const T* xp = buf<T>(x, "input", N * C * L, false);
  const double* mp = buf<double>(mean, "mean", C, false);
  const double* ip = buf<double>(invstd, "invstd", C, false);
  const T* wp = opt<T>(w, "weight", C, false);
  const T* bp = opt<T>(b, "bias", C, false);
  T* yp = buf<T>(y, "output", N * C * L, true);
  if (N * C * L == 0) return;
  py::gil_scoped_release r;
  fastconv::bn_apply<T>(N, C, L, xp, mp, ip, wp, bp, yp);
}

template <typename T>
void bn_backward_t(py::array dy, py::array x, int64_t N, int64_t C, int64_t L, py::array mean,
                   py::array invstd, py::object w, bool training, py::object dx, py::object dw,
                   py::object db) {
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
  fastconv::bn_backward<T>(N, C, L, dyp, xp, mp, ip, wp, training, dxp, dwp, dbp);
}

template <typename T>
void lrn_t(py::object dy, py::array x, int64_t N, int64_t C, int64_t L, int64_t size, double alpha,
           double beta, double k, py::array out) {
  if (size < 1) throw py::value_error("size must be >= 1");
  const T* xp = buf<T>(x, "input", N * C * L, false);
  const T* dyp = opt<T>(dy, "grad_output", N * C * L, false);
  T* op = buf<T>(out, dyp ? "grad_input" : "output", N * C * L, true);
  if (N * C * L == 0) return;
  py::gil_scoped_release r;
  if (dyp) fastconv::lrn_backward<T>(N, C, L, dyp, xp, size, alpha, beta, k, op);
  else fastconv::lrn_forward<T>(N, C, L, xp, size, alpha, beta, k, op);
}

template <typename T>
void act_t(int kind, py::object dy, py::array x, py::array out) {
  if (kind < 0 || kind > 2) throw py::value_error("unknown activation kind");
  const int64_t n = x.size();
  const T* xp = buf<T>(x, "input", n, false);
  const T* dyp = opt<T>(dy, "grad_output", n, false);
  T* op = buf<T>(out, "output", n, true);
  py::gil_scoped_release r;
  if (dyp) fastconv::activation_backward<T>(kind, n, dyp, xp, op);
  else fastconv::activation_forward<T>(kind, n, xp, op);
}

template <typename T>
void softmax_t(bool log, int64_t outer, int64_t D, int64_t inner, py::object dy, py::array y_or_x,
               py::array out) {
  nonneg({outer, D, inner});
  const int64_t n = outer * D * inner;
  const T* xp = buf<T>(y_or_x, "input", n, false);
  const T* dyp = opt<T>(dy, "grad_output", n, false);
  T* op = buf<T>(out, "output", n, true);
  if (n == 0) return;
  py::gil_scoped_release r;
  if (dyp) fastconv::softmax_backward<T>(log, outer, D, inner, dyp, xp, op);
  else fastconv::softmax_forward<T>(log, outer, D, inner, xp, op);
}

template <typename T>
void ce_t(py::array logits, py::array target, int64_t N, int64_t C, int64_t ignore_index,
          double eps, double scale, py::array row_loss, py::array grad) {
  nonneg({N, C});
  const T* zp = buf<T>(logits, "input", N * C, false);
  const int64_t* tp = buf<int64_t>(target, "target", N, false);
  for (int64_t i = 0; i < N; ++i)
    if (tp[i] != ignore_index && (tp[i] < 0 || tp[i] >= C))
      throw py::value_error("target[" + std::to_string(i) + "] = " + std::to_string(tp[i]) +
                            " is outside [0, " + std::to_string(C) + ")");
  double* lp = buf<double>(row_loss, "row_loss", N, true);
  T* gp = buf<T>(grad, "grad", N * C, true);
  py::gil_scoped_release r;
  fastconv::cross_entropy_fused<T>(N, C, zp, tp, ignore_index, eps, scale, lp, gp);
}

template <typename T>
void dropout_t(py::array x, uint64_t seed, uint64_t offset, uint64_t threshold, double scale,
               py::array y, py::array mask) {
  const int64_t n = x.size();
  const T* xp = buf<T>(x, "input", n, false);
  T* yp = buf<T>(y, "output", n, true);
  uint8_t* mp = buf<uint8_t>(mask, "mask", n, true);
  py::gil_scoped_release r;
  fastconv::dropout_forward<T>(n, xp, seed, offset, threshold, T(scale), yp, mp);
}

template <typename T>
void dropout_bwd_t(py::array dy, py::array mask, double scale, py::array dx) {
  const int64_t n = dy.size();
  const T* dyp = buf<T>(dy, "grad_output", n, false);
  const uint8_t* mp = buf<uint8_t>(mask, "mask", n, false);
  T* dxp = buf<T>(dx, "grad_input", n, true);
  py::gil_scoped_release r;
  fastconv::dropout_backward<T>(n, dyp, mp, T(scale), dxp);
}

template <typename T>
void linear_t(py::array x, py::array w, py::object b, int64_t M, int64_t I, int64_t O,
              py::array y) {
  nonneg({M, I, O});
  const T* xp = buf<T>(x, "input", M * I, false);
  const T* wp = buf<T>(w, "weight", O * I, false);
  const T* bp = opt<T>(b, "bias", O, false);
  T* yp = buf<T>(y, "output", M * O, true);
  if (M == 0 || O == 0) return;
  py::gil_scoped_release r;
  fastconv::linear_forward<T>(M, I, O, xp, wp, bp, yp);
}

template <typename T>
void linear_bwd_t(py::array dy, py::array x, py::array w, int64_t M, int64_t I, int64_t O,
                  py::object dx, py::object dw, py::object db) {
  nonneg({M, I, O});
  const T* dyp = buf<T>(dy, "grad_output", M * O, false);
  const T* xp = buf<T>(x, "input", M * I, false);
  const T* wp = buf<T>(w, "weight", O * I, false);
  T* dxp = opt<T>(dx, "grad_input", M * I, true);
  T* dwp = opt<T>(dw, "grad_weight", O * I, true);
  T* dbp = opt<T>(db, "grad_bias", O, true);
  py::gil_scoped_release r;
  fastconv::linear_backward<T>(M, I, O, dyp, xp, wp, (M > 0 && I > 0) ? dxp : nullptr,
                               (O > 0 && I > 0) ? dwp : nullptr, O > 0 ? dbp : nullptr);
}

}  // namespace

void register_layers(py::module_& m) {
  m.def("bn_stats", [](py::array x, int64_t N, int64_t C, int64_t L, py::array mean, py::array var) {
    nonneg({N, C, L});
    if (N * L == 0) throw py::value_error("batch_norm: no elements per channel");
    if (f64(x)) bn_stats_t<double>(x, N, C, L, mean, var);
    else bn_stats_t<float>(x, N, C, L, mean, var);
  });
  m.def("bn_apply", [](py::array x, int64_t N, int64_t C, int64_t L, py::array mean,
                       py::array invstd, py::object w, py::object b, py::array y) {
    nonneg({N, C, L});
    if (f64(x)) bn_apply_t<double>(x, N, C, L, mean, invstd, w, b, y);
    else bn_apply_t<float>(x, N, C, L, mean, invstd, w, b, y);
  });
  m.def("bn_backward", [](py::array dy, py::array x, int64_t N, int64_t C, int64_t L,
                          py::array mean, py::array invstd, py::object w, bool training,
                          py::object dx, py::object dw, py::object db) {
    nonneg({N, C, L});
    if (f64(x)) bn_backward_t<double>(dy, x, N, C, L, mean, invstd, w, training, dx, dw, db);
    else bn_backward_t<float>(dy, x, N, C, L, mean, invstd, w, training, dx, dw, db);
  });
  m.def("lrn", [](py::object dy, py::array x, int64_t N, int64_t C, int64_t L, int64_t size,
                  double alpha, double beta, double k, py::array out) {
    nonneg({N, C, L});
    if (f64(x)) lrn_t<double>(dy, x, N, C, L, size, alpha, beta, k, out);
    else lrn_t<float>(dy, x, N, C, L, size, alpha, beta, k, out);
  });
  m.def("activation", [](int kind, py::object dy, py::array x, py::array out) {
    if (f64(x)) act_t<double>(kind, dy, x, out);
    else act_t<float>(kind, dy, x, out);
  });
  m.def("softmax", [](bool log, int64_t outer, int64_t D, int64_t inner, py::object dy,
                      py::array x, py::array out) {
    if (f64(x)) softmax_t<double>(log, outer, D, inner, dy, x, out);
    else softmax_t<float>(log, outer, D, inner, dy, x, out);
  });
  m.def("cross_entropy", [](py::array logits, py::array target, int64_t N, int64_t C,
                            int64_t ignore_index, double eps, double scale, py::array row_loss,
                            py::array grad) {
    if (f64(logits)) ce_t<double>(logits, target, N, C, ignore_index, eps, scale, row_loss, grad);
    else ce_t<float>(logits, target, N, C, ignore_index, eps, scale, row_loss, grad);
  });
  m.def("dropout", [](py::array x, uint64_t seed, uint64_t offset, uint64_t threshold,
                      double scale, py::array y, py::array mask) {
    if (f64(x)) dropout_t<double>(x, seed, offset, threshold, scale, y, mask);
    else dropout_t<float>(x, seed, offset, threshold, scale, y, mask);
  });
  m.def("dropout_backward", [](py::array dy, py::array mask, double scale, py::array dx) {
    if (f64(dy)) dropout_bwd_t<double>(dy, mask, scale, dx);
    else dropout_bwd_t<float>(dy, mask, scale, dx);
  });
  m.def("linear", [](py::array x, py::array w, py::object b, int64_t M, int64_t I, int64_t O,
                     py::array y) {
    if (f64(x)) linear_t<double>(x, w, b, M, I, O, y);
    else linear_t<float>(x, w, b, M, I, O, y);
  });
  m.def("linear_backward", [](py::array dy, py::array x, py::array w, int64_t M, int64_t I,
                              int64_t O, py::object dx, py::object dw, py::object db) {
    if (f64(x)) linear_bwd_t<double>(dy, x, w, M, I, O, dx, dw, db);
    else linear_bwd_t<float>(dy, x, w, M, I, O, dx, dw, db);
  });
}
