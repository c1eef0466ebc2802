// Pieces every binding module needs (only csrc/bindings/*.cpp include it):
// the ConvProblem class and the checks that turn a NumPy array into a kernel
// pointer. One copy for _cpu, _emu and _cuda.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "fastconv/problem.h"

namespace fastconv {
namespace bindings {

namespace py = pybind11;

// `module_local`: true in the modules loaded beside _cpu (which binds the type globally).
inline void bind_conv_problem(py::module_& m, bool module_local) {
  py::class_<ConvProblem>(m, "ConvProblem", py::module_local(module_local))
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                       int64_t P, int64_t Q, int64_t pad_h, int64_t pad_w, int64_t stride_h,
                       int64_t stride_w, int64_t dil_h, int64_t dil_w, int64_t groups) {
             ConvProblem p;
             p.N = N; p.C = C; p.H = H; p.W = W; p.K = K; p.R = R; p.S = S; p.P = P; p.Q = Q;
             p.pad_h = pad_h; p.pad_w = pad_w; p.stride_h = stride_h; p.stride_w = stride_w;
             p.dil_h = dil_h; p.dil_w = dil_w; p.groups = groups;
             return p;
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("R"),
           py::arg("S"), py::arg("P"), py::arg("Q"), py::arg("pad_h"), py::arg("pad_w"),
           py::arg("stride_h"), py::arg("stride_w"), py::arg("dil_h"), py::arg("dil_w"),
           py::arg("groups"))
      .def_readonly("N", &ConvProblem::N).def_readonly("C", &ConvProblem::C)
      .def_readonly("H", &ConvProblem::H).def_readonly("W", &ConvProblem::W)
      .def_readonly("K", &ConvProblem::K).def_readonly("R", &ConvProblem::R)
      .def_readonly("S", &ConvProblem::S).def_readonly("P", &ConvProblem::P)
      .def_readonly("Q", &ConvProblem::Q).def_readonly("groups", &ConvProblem::groups)
      .def("flops", &ConvProblem::flops);
}

// Read-only kernel operand: exact dtype, C-contiguous, the element count the problem needs.
template <typename T>
const T* in_ptr(py::array& a, const char* name, int64_t expect) {
  if (!py::isinstance<py::array_t<T>>(a) || a.itemsize() != py::ssize_t(sizeof(T)))
    throw py::type_error(std::string(name) + ": dtype does not match the kernel's");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (a.size() != expect)
    throw py::value_error(std::string(name) + ": has " + std::to_string(a.size()) +
                          " elements, the problem needs " + std::to_string(expect));
  return static_cast<const T*>(a.data());
}

// Output operand: the same checks, and writeable.
template <typename T>
T* out_ptr(py::array& a, const char* name, int64_t expect) {
  in_ptr<T>(a, name, expect);
  if (!a.writeable()) throw py::value_error(std::string(name) + ": is read-only");
  return static_cast<T*>(a.mutable_data());
}

inline bool is_f64(py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 8; }

// The checked buffers of a host Fprop call (input, weight, optional bias, output); `bias_array`
// keeps the cast bias alive while the kernel runs.
template <typename T>
struct FpropBuffers {
  const T* x = nullptr;
  const T* w = nullptr;
  const T* bias = nullptr;
  T* y = nullptr;
  py::array bias_array;
};

template <typename T>
FpropBuffers<T> fprop_buffers(const ConvProblem& p, py::array& x, py::array& w, py::object bias, py::array& y) {
  FpropBuffers<T> b;
  b.x = in_ptr<T>(x, "input", p.input_elems());
  b.w = in_ptr<T>(w, "weight", p.weight_elems());
  if (!bias.is_none()) {
    b.bias_array = bias.cast<py::array>();
    b.bias = in_ptr<T>(b.bias_array, "bias", p.K);
  }
  b.y = out_ptr<T>(y, "output", p.output_elems());
  return b;
}

}  // namespace bindings
}  // namespace fastconv
