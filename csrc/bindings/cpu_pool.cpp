// pybind11 bindings of the CPU pool kernels (registered into fastconv._cpu).
// Arrays arrive as C-contiguous (planes, H, W) / (planes, P, Q) views; the
// Python layer (fastconv/ops/pool.py) validates arguments with friendly
// messages, and these bindings re-check dtype, contiguity and shapes so no
// call can hand a kernel a buffer that does not match its problem.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "fastconv/pool_cpu.h"

namespace py = pybind11;
using fastconv::AdaptiveProblem;
using fastconv::PoolKind;
using fastconv::PoolProblem;

namespace {

PoolKind kind_of(int k) {
  if (k < 0 || k > 2) throw py::value_error("pool kind must be 0 (max), 1 (min) or 2 (avg)");
  return static_cast<PoolKind>(k);
}

bool is_f64(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 8; }

template <typename T>
T* data_of(py::array& a, const char* name, int64_t d0, int64_t d1, int64_t d2, bool write) {
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().kind() != 'f' ||
      a.itemsize() != py::ssize_t(sizeof(T)))
    throw py::type_error(std::string(name) + ": dtype does not match the kernel's");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (a.ndim() != 3 || a.shape(0) != d0 || a.shape(1) != d1 || a.shape(2) != d2)
    throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(d0) + ", " +
                          std::to_string(d1) + ", " + std::to_string(d2) + ")");
  if (write && !a.writeable()) throw py::value_error(std::string(name) + ": is read-only");
  return static_cast<T*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

int64_t* idx_of(py::object o, int64_t d0, int64_t d1, int64_t d2, bool write) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  if (a.dtype().kind() != 'i' || a.itemsize() != 8)
    throw py::type_error("indices: must be an int64 array");
  if (!(a.flags() & py::array::c_style)) throw py::value_error("indices: must be C-contiguous");
  if (a.ndim() != 3 || a.shape(0) != d0 || a.shape(1) != d1 || a.shape(2) != d2)
    throw py::value_error("indices: shape does not match the output");
  if (write && !a.writeable()) throw py::value_error("indices: is read-only");
  return static_cast<int64_t*>(write ? a.mutable_data() : const_cast<void*>(a.data()));
}

PoolProblem make(const py::array& x, const py::array& y, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                 int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool cip, int64_t div) {
  if (x.ndim() != 3 || y.ndim() != 3) throw py::value_error("pool: arrays must be 3-D (planes, H, W)");
  PoolProblem p;
  p.planes = x.shape(0); p.H = x.shape(1); p.W = x.shape(2);
  p.P = y.shape(1); p.Q = y.shape(2);
  p.kh = kh; p.kw = kw; p.sh = sh; p.sw = sw; p.ph = ph; p.pw = pw; p.dh = dh; p.dw = dw;
  p.count_include_pad = cip;
  p.divisor_override = div;
  if (y.shape(0) != p.planes) throw py::value_error("pool: input and output plane counts differ");
  return p;
}

void check(PoolKind k, const PoolProblem& p) {
  const std::string why = fastconv::pool_check(k, p);
  if (!why.empty()) throw py::value_error("pool: " + why);
}

AdaptiveProblem make_adaptive(PoolKind k, const py::array& x, const py::array& y) {
  if (x.ndim() != 3 || y.ndim() != 3) throw py::value_error("adaptive pool: arrays must be 3-D");
  AdaptiveProblem p;
  p.planes = x.shape(0); p.H = x.shape(1); p.W = x.shape(2); p.P = y.shape(1); p.Q = y.shape(2);
  if (y.shape(0) != p.planes) throw py::value_error("adaptive pool: plane counts differ");
  const std::string why = fastconv::adaptive_check(k, p);
  if (!why.empty()) throw py::value_error("adaptive pool: " + why);
  return p;
}

template <typename T>
void fwd_t(PoolKind k, const PoolProblem& p, py::array& x, py::array& y, py::object idx) {
  const T* xp = data_of<T>(x, "input", p.planes, p.H, p.W, false);
  T* yp = data_of<T>(y, "output", p.planes, p.P, p.Q, true);
  int64_t* ip = idx_of(idx, p.planes, p.P, p.Q, true);
  py::gil_scoped_release release;
  fastconv::pool2d_fwd<T>(k, p, xp, yp, ip);
}

template <typename T>
int64_t bwd_t(PoolKind k, const PoolProblem& p, py::array& dy, py::object x, py::object idx, py::array& dx) {
  const T* dyp = data_of<T>(dy, "grad_output", p.planes, p.P, p.Q, false);
  T* dxp = data_of<T>(dx, "grad_input", p.planes, p.H, p.W, true);
  const int64_t* ip = k == PoolKind::Avg ? nullptr : idx_of(idx, p.planes, p.P, p.Q, false);
  const T* xp = nullptr;
  py::array xa;
  if (k != PoolKind::Avg && ip == nullptr) {
    if (x.is_none()) throw py::value_error("pool backward: needs the input or the indices");
    xa = x.cast<py::array>();
    xp = data_of<T>(xa, "input", p.planes, p.H, p.W, false);
  }
  py::gil_scoped_release release;
  return fastconv::pool2d_bwd<T>(k, p, dyp, xp, ip, dxp);
}

template <typename T>
void afwd_t(PoolKind k, const AdaptiveProblem& p, py::array& x, py::array& y, py::object idx) {
  const T* xp = data_of<T>(x, "input", p.planes, p.H, p.W, false);
  T* yp = data_of<T>(y, "output", p.planes, p.P, p.Q, true);
  int64_t* ip = k == PoolKind::Avg ? nullptr : idx_of(idx, p.planes, p.P, p.Q, true);
  py::gil_scoped_release release;
  fastconv::adaptive_pool2d_fwd<T>(k, p, xp, yp, ip);
}

template <typename T>
void abwd_t(PoolKind k, const AdaptiveProblem& p, py::array& dy, py::object x, py::object idx,
            py::array& dx) {
  const T* dyp = data_of<T>(dy, "grad_output", p.planes, p.P, p.Q, false);
  T* dxp = data_of<T>(dx, "grad_input", p.planes, p.H, p.W, true);
  const int64_t* ip = k == PoolKind::Avg ? nullptr : idx_of(idx, p.planes, p.P, p.Q, false);
  const T* xp = nullptr;
  py::array xa;
  if (k != PoolKind::Avg && ip == nullptr) {
    if (x.is_none()) throw py::value_error("adaptive pool backward: needs the input or the indices");
    xa = x.cast<py::array>();
    xp = data_of<T>(xa, "input", p.planes, p.H, p.W, false);
  }
  py::gil_scoped_release release;
  fastconv::adaptive_pool2d_bwd<T>(k, p, dyp, xp, ip, dxp);
}

}  // namespace

void register_pool(py::module_& m) {
  m.def("pool2d_forward",
        [](int kind, py::array x, py::array y, py::object indices, int64_t kh, int64_t kw, int64_t sh,
           int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad,
           int64_t divisor_override) {
          const PoolKind k = kind_of(kind);
          const PoolProblem p = make(x, y, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          check(k, p);
          if (is_f64(x)) fwd_t<double>(k, p, x, y, indices);
          else fwd_t<float>(k, p, x, y, indices);
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("kh"),
        py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"),
        py::arg("dw"), py::arg("count_include_pad"), py::arg("divisor_override"),
        "Pooling forward on (planes, H, W) -> (planes, P, Q); kind 0 max, 1 min, 2 avg.");

  m.def("pool2d_backward",
        [](int kind, py::array dy, py::object x, py::object indices, py::array dx, int64_t kh, int64_t kw,
           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad,
           int64_t divisor_override) {
          const PoolKind k = kind_of(kind);
          const PoolProblem p = make(dx, dy, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          check(k, p);
          return is_f64(dy) ? bwd_t<double>(k, p, dy, x, indices, dx) : bwd_t<float>(k, p, dy, x, indices, dx);
        },
        py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("indices"), py::arg("grad_input"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh"), py::arg("dw"), py::arg("count_include_pad"), py::arg("divisor_override"),
        "Pooling backward (deterministic); max/min without indices recompute the argmax. Returns the number "
        "of given indices outside [0, H*W) (skipped; the caller raises), else 0.");

  m.def("adaptive_pool2d_forward",
        [](int kind, py::array x, py::array y, py::object indices) {
          const PoolKind k = kind_of(kind);
          const AdaptiveProblem p = make_adaptive(k, x, y);
          if (is_f64(x)) afwd_t<double>(k, p, x, y, indices);
          else afwd_t<float>(k, p, x, y, indices);
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"));

  m.def("adaptive_pool2d_backward",
        [](int kind, py::array dy, py::object x, py::object indices, py::array dx) {
          const PoolKind k = kind_of(kind);
          const AdaptiveProblem p = make_adaptive(k, dx, dy);
          if (is_f64(dy)) abwd_t<double>(k, p, dy, x, indices, dx);
          else abwd_t<float>(k, p, dy, x, indices, dx);
        },
        py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("indices"), py::arg("grad_input"));

  m.def("pool_isa", &fastconv::pool_isa, "Instruction set of the pooling row kernels.");
}
