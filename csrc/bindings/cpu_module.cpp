// pybind11 bindings of the CPU kernels (the only CPU file that sees Python).
// The Python layer (fastconv/ops) validates arguments with friendly messages;
// these bindings re-check dtype, contiguity and sizes so that no call can
// reach a kernel with a buffer that does not match its ConvProblem, and they
// release the GIL around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common.h"
#include "fastconv/conv_cpu.h"
#include "fastconv/gemm.h"
#include "fastconv/parallel.h"
#include "fastconv/problem.h"

namespace py = pybind11;
using fastconv::ConvProblem;
using fastconv::bindings::in_ptr;
using fastconv::bindings::is_f64;
using fastconv::bindings::out_ptr;

namespace {

enum class Algo { Direct, Im2col, Conv1x1, Separable, Winograd };

Algo parse_algo(const std::string& name) {
  if (name == "direct") return Algo::Direct;
  if (name == "im2col") return Algo::Im2col;
  if (name == "1x1") return Algo::Conv1x1;
  if (name == "separable") return Algo::Separable;
  if (name == "winograd") return Algo::Winograd;
  throw py::value_error("unknown algorithm '" + name + "'");
}

std::string supports(Algo a, const ConvProblem& p) {
  switch (a) {
    case Algo::Direct: return fastconv::direct_supports(p);
    case Algo::Im2col: return fastconv::im2col_supports(p);
    case Algo::Conv1x1: return fastconv::conv1x1_supports(p);
    case Algo::Separable: return fastconv::separable_supports(p);
    case Algo::Winograd: return fastconv::winograd_supports(p);
  }
  return "unknown algorithm";
}

void check(const Algo a, const ConvProblem& p) {
  try {
    fastconv::check_problem(p);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  const std::string why = supports(a, p);
  if (!why.empty()) throw py::value_error(why);
}

template <typename T>
void fprop_t(Algo a, const ConvProblem& p, py::array& x, py::array& w, py::object bias, py::array& y,
             bool relu) {
  const auto buf = fastconv::bindings::fprop_buffers<T>(p, x, w, bias, y);
  const T *xp = buf.x, *wp = buf.w, *bp = buf.bias;
  T* yp = buf.y;
  if (p.N == 0) return;
  py::gil_scoped_release release;
  switch (a) {
    case Algo::Direct: fastconv::direct_fprop<T>(p, xp, wp, bp, yp, relu); break;
    case Algo::Im2col: fastconv::im2col_fprop<T>(p, xp, wp, bp, yp, relu); break;
    case Algo::Conv1x1: fastconv::conv1x1_fprop<T>(p, xp, wp, bp, yp, relu); break;
    case Algo::Separable: fastconv::separable_fprop<T>(p, xp, wp, bp, yp, relu); break;
    case Algo::Winograd: fastconv::winograd_fprop<T>(p, xp, wp, bp, yp, relu); break;
  }
}

template <typename T>
void dgrad_t(Algo a, const ConvProblem& p, py::array& dy, py::array& w, py::array& dx) {
  const T* dyp = in_ptr<T>(dy, "grad_output", p.output_elems());
  const T* wp = in_ptr<T>(w, "weight", p.weight_elems());
  T* dxp = out_ptr<T>(dx, "grad_input", p.input_elems());
  if (p.N == 0) return;
  py::gil_scoped_release release;
  switch (a) {
    case Algo::Direct: fastconv::direct_dgrad<T>(p, dyp, wp, dxp); break;
    case Algo::Im2col: fastconv::im2col_dgrad<T>(p, dyp, wp, dxp); break;
    case Algo::Conv1x1: fastconv::conv1x1_dgrad<T>(p, dyp, wp, dxp); break;
    case Algo::Separable: fastconv::separable_dgrad<T>(p, dyp, wp, dxp); break;
    case Algo::Winograd: fastconv::winograd_dgrad<T>(p, dyp, wp, dxp); break;
  }
}

template <typename T>
void wgrad_t(Algo a, const ConvProblem& p, py::array& x, py::array& dy, py::array& dw) {
  const T* xp = in_ptr<T>(x, "input", p.input_elems());
  const T* dyp = in_ptr<T>(dy, "grad_output", p.output_elems());
  T* dwp = out_ptr<T>(dw, "grad_weight", p.weight_elems());
  py::gil_scoped_release release;
  if (p.N == 0) {
    for (int64_t i = 0; i < p.weight_elems(); ++i) dwp[i] = T(0);
    return;
  }
  switch (a) {
    case Algo::Direct: fastconv::direct_wgrad<T>(p, xp, dyp, dwp); break;
    case Algo::Im2col: fastconv::im2col_wgrad<T>(p, xp, dyp, dwp); break;
    case Algo::Conv1x1: fastconv::conv1x1_wgrad<T>(p, xp, dyp, dwp); break;
    case Algo::Separable: fastconv::separable_wgrad<T>(p, xp, dyp, dwp); break;
    case Algo::Winograd: fastconv::winograd_wgrad<T>(p, xp, dyp, dwp); break;
  }
}

// C = beta*C + A.B over arbitrary (element) strides: exposes the GEMM itself
// to tests and benchmarks. A (M x K), B (K x N), C (M x N) C-contiguous rows.
template <typename T>
void gemm_t(py::array& A, py::array& B, py::array& C, double beta, bool parallel) {
  if (A.ndim() != 2 || B.ndim() != 2 || C.ndim() != 2) throw py::value_error("gemm: 2-D arrays only");
  const int64_t M = A.shape(0), K = A.shape(1), N = B.shape(1);
  if (B.shape(0) != K || C.shape(0) != M || C.shape(1) != N)
    throw py::value_error("gemm: shapes do not chain");
  for (py::array* arr : {&A, &B, &C})
    if (!py::isinstance<py::array_t<T>>(*arr) || arr->itemsize() != py::ssize_t(sizeof(T)))
      throw py::type_error("gemm: A, B and C must share one float dtype");
  const int64_t es = sizeof(T);
  for (py::array* arr : {&A, &B, &C})
    for (int d = 0; d < 2; ++d)
      if (arr->strides(d) % es) throw py::value_error("gemm: strides must be whole elements");
  if (C.strides(1) != es && N > 1) throw py::value_error("gemm: C rows must be contiguous");
  if (!C.writeable()) throw py::value_error("gemm: C is read-only");
  const T* a = static_cast<const T*>(A.data());
  const T* b = static_cast<const T*>(B.data());
  T* c = static_cast<T*>(C.mutable_data());
  const int64_t rsa = A.strides(0) / es, csa = A.strides(1) / es;
  const int64_t rsb = B.strides(0) / es, csb = B.strides(1) / es, ldc = C.strides(0) / es;
  py::gil_scoped_release release;
  fastconv::gemm<T>(M, N, K, a, rsa, csa, b, rsb, csb, T(beta), c, ldc, parallel);
}

}  // namespace

// Other binding files of this module (csrc/bindings/cpu_*.cpp) register their
// functions through these hooks.
void register_pool(py::module_& m);    // cpu_pool.cpp
void register_layers(py::module_& m);  // cpu_layers.cpp
void register_buffers(py::module_& m);  // cpu_buffers.cpp

PYBIND11_MODULE(_cpu, m) {
  fastconv::max_threads();  // the count at import (OMP_NUM_THREADS), before any other library changes it
  m.doc() = "fastconv compiled CPU kernels (C++, OpenMP, AVX-512/AVX2 dispatch)";

  fastconv::bindings::bind_conv_problem(m, /*module_local=*/false);

  m.def("out_size", &fastconv::out_size, py::arg("in_size"), py::arg("pad_lo"), py::arg("pad_hi"),
        py::arg("kernel"), py::arg("stride"), py::arg("dilation"),
        "The one output-size formula of the C++ kernels (problem.h).");

  m.def("supports", [](const std::string& algo, const ConvProblem& p) {
    return supports(parse_algo(algo), p);
  }, "Empty string if the algorithm can take the problem, else the reason.");

  m.def("direct_vectorized", &fastconv::direct_vectorized, py::arg("op"), py::arg("problem"),
        "Whether algo 'direct' runs the register-blocked AVX-512 kernel for this fp32 problem.");

  m.def("fprop", [](const std::string& algo, const ConvProblem& p, py::array x, py::array w,
                    py::object bias, py::array y, bool relu) {
    const Algo a = parse_algo(algo);
    check(a, p);
    if (is_f64(x)) fprop_t<double>(a, p, x, w, bias, y, relu);
    else fprop_t<float>(a, p, x, w, bias, y, relu);
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("weight"), py::arg("bias"),
     py::arg("output"), py::arg("relu") = false);

  m.def("dgrad", [](const std::string& algo, const ConvProblem& p, py::array dy, py::array w,
                    py::array dx) {
    const Algo a = parse_algo(algo);
    check(a, p);
    if (is_f64(dy)) dgrad_t<double>(a, p, dy, w, dx);
    else dgrad_t<float>(a, p, dy, w, dx);
  }, py::arg("algo"), py::arg("problem"), py::arg("grad_output"), py::arg("weight"),
     py::arg("grad_input"));

  m.def("wgrad", [](const std::string& algo, const ConvProblem& p, py::array x, py::array dy,
                    py::array dw) {
    const Algo a = parse_algo(algo);
    check(a, p);
    if (is_f64(x)) wgrad_t<double>(a, p, x, dy, dw);
    else wgrad_t<float>(a, p, x, dy, dw);
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("grad_output"),
     py::arg("grad_weight"));

  m.def("gemm", [](py::array A, py::array B, py::array C, double beta, bool parallel) {
    if (is_f64(A)) gemm_t<double>(A, B, C, beta, parallel);
    else gemm_t<float>(A, B, C, beta, parallel);
  }, py::arg("A"), py::arg("B"), py::arg("C"), py::arg("beta") = 0.0, py::arg("parallel") = true,
     "C = beta*C + A @ B with the packed GEMM (any strides for A and B).");

  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
    fastconv::set_max_threads(n);
  });
  m.def("get_num_threads", &fastconv::max_threads);
  m.def("parallel_min_work", &fastconv::parallel_min_work,
        "Elements touched below which the pooling and layer kernels run on one thread "
        "(2^15; 2^19 under OMP_WAIT_POLICY=passive).");
  m.def("gemm_isa", &fastconv::gemm_isa);
  m.def("set_gemm_isa", [](const std::string& isa) {
    try {
      fastconv::set_gemm_isa(isa.c_str());
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  });
  m.def("cpu_has_avx512", &fastconv::cpu_has_avx512);
  m.def("cpu_has_avx2_fma", &fastconv::cpu_has_avx2_fma);
  m.def("measure_peak_gflops", [](int threads, double seconds) {
    py::gil_scoped_release release;
    return fastconv::measure_peak_gflops(threads, seconds);
  }, py::arg("threads"), py::arg("seconds") = 0.5);
  register_pool(m);
  register_layers(m);
  register_buffers(m);
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
