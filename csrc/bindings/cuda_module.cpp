// pybind11 bindings of the CUDA module. Importing it never requires a GPU:
// without a driver/device, runtime_info() says why and the backend reports
// itself unavailable.
//
// The convolution entry points take objects exposing __cuda_array_interface__
// (CuPy arrays, torch CUDA tensors, Numba device arrays): C-contiguous float32
// or float64 device buffers, checked against the ConvProblem here, launched on
// the caller's stream with the GIL released. Launch failures raise
// RuntimeError with CUDA's error string.
//
// Status: these bindings are compiled in CI but have never been run on a GPU
// (no machine of this project has one); the kernels behind them are the ones
// the "cuda-emu" backend executes and tests on the CPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cuda_arrays.h"
#include "cuda_algos.h"
#include "fastconv/conv_cuda.h"
#include "fastconv/cuda_api.h"
#include "fastconv/problem.h"

namespace py = pybind11;
using fastconv::ConvProblem;
using fastconv::bindings::DeviceArray;
using fastconv::bindings::device_array;
using fastconv::bindings::expect;
using fastconv::bindings::pick_stream;

// The pooling and layer kernels (cuda_layers.cpp).
void register_cuda_layers(py::module_& m);

namespace {

// Kernel families by name: "direct", "im2col" (implicit GEMM, float32; float64
// runs the direct kernels), "1x1" (plain GEMM), "separable" (1xn / nx1).
using Algo = fastconv::bindings::CudaAlgo;

Algo parse_algo(const std::string& name) { return fastconv::bindings::parse_cuda_algo(name, "cuda"); }
std::string supports(Algo a, const ConvProblem& p) { return fastconv::bindings::cuda_supports(a, p); }
void check(Algo a, const ConvProblem& p) { fastconv::bindings::check_cuda_problem(a, p); }

template <typename T>
void fprop_t(Algo a, const ConvProblem& p, const void* x, const void* w, const void* b, void* y, bool relu,
             void* s) {
  const T* xp = static_cast<const T*>(x);
  const T* wp = static_cast<const T*>(w);
  const T* bp = static_cast<const T*>(b);
  T* yp = static_cast<T*>(y);
  namespace fc = fastconv::cuda;
  if (a == Algo::OneByOne) return fc::conv1x1_fprop<T>(p, xp, wp, bp, yp, relu, s);
  if (a == Algo::Separable) return fc::separable_fprop<T>(p, xp, wp, bp, yp, relu, s);
  if constexpr (std::is_same_v<T, float>) {
    if (a == Algo::Im2col) return fc::igemm_fprop<float>(p, xp, wp, bp, yp, relu, s);
  }
  // float64 "im2col" (the implicit GEMM is float32 only: double would spill) and "direct"
  fc::direct_fprop<T>(p, xp, wp, bp, yp, relu, s);
}

template <typename T>
void dgrad_t(Algo a, const ConvProblem& p, const void* dy, const void* w, void* dx, void* s) {
  const T* dyp = static_cast<const T*>(dy);
  const T* wp = static_cast<const T*>(w);
  T* dxp = static_cast<T*>(dx);
  namespace fc = fastconv::cuda;
  if (a == Algo::OneByOne) return fc::conv1x1_dgrad<T>(p, dyp, wp, dxp, s);
  if (a == Algo::Separable) return fc::separable_dgrad<T>(p, dyp, wp, dxp, s);
  if constexpr (std::is_same_v<T, float>) {
    if (a == Algo::Im2col) return fc::igemm_dgrad(p, dyp, wp, dxp, s);
  }
  fc::direct_dgrad<T>(p, dyp, wp, dxp, s);
}

template <typename T>
void wgrad_t(Algo a, const ConvProblem& p, const void* x, const void* dy, void* dw, void* ws, void* s) {
  const T* xp = static_cast<const T*>(x);
  const T* dyp = static_cast<const T*>(dy);
  T* dwp = static_cast<T*>(dw);
  namespace fc = fastconv::cuda;
  if (a == Algo::OneByOne) return fc::conv1x1_wgrad<T>(p, xp, dyp, dwp, static_cast<T*>(ws), s);
  if (a == Algo::Separable) return fc::separable_wgrad<T>(p, xp, dyp, dwp, s);
  if constexpr (std::is_same_v<T, float>) {
    if (a == Algo::Im2col) return fc::igemm_wgrad(p, xp, dyp, dwp, static_cast<float*>(ws), s);
  }
  fc::direct_wgrad<T>(p, xp, dyp, dwp, s);
}

// Elements of workspace (of the arrays' dtype) the Wgrad of family `a` needs.
int64_t workspace_elems(Algo a, const ConvProblem& p, int itemsize) {
  if (a == Algo::Im2col && itemsize == 4) return fastconv::cuda::igemm_wgrad_workspace_elems(p);
  if (a == Algo::OneByOne) return fastconv::cuda::conv1x1_wgrad_workspace_elems(p);
  return 0;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "fastconv compiled CUDA module. Convolution entry points take __cuda_array_interface__ arrays; "
      "compiled but not yet run on a GPU by this project (the same kernels are tested on the CPU "
      "through the 'cuda-emu' backend).";
  m.def("runtime_info", [] {
    const auto info = fastconv::cuda::runtime_info();
    py::dict d;
    d["runtime_version"] = info.runtime_version;
    d["driver_version"] = info.driver_version;
    d["device_count"] = info.device_count;
    d["error"] = info.error;
    return d;
  });

  fastconv::bindings::bind_conv_problem(m, /*module_local=*/true);

  m.def("supports", [](const std::string& algo, const ConvProblem& p) {
    return supports(parse_algo(algo), p);
  }, "Empty string if the algorithm can take the problem, else the reason.");

  m.def("fprop", [](const std::string& algo, const ConvProblem& p, py::object x, py::object w, py::object bias,
                    py::object y, bool relu, py::object stream) {
    const Algo a = parse_algo(algo);
    check(a, p);
    const DeviceArray xa = device_array(x, "input"), wa = device_array(w, "weight"), ya = device_array(y, "output");
    const int es = xa.itemsize;
    expect(xa, "input", p.input_elems(), es, false);
    expect(wa, "weight", p.weight_elems(), es, false);
    expect(ya, "output", p.output_elems(), es, true);
    const void* bp = nullptr;
    if (!bias.is_none()) {
      const DeviceArray ba = device_array(bias, "bias");
      expect(ba, "bias", p.K, es, false);
      bp = ba.ptr;
    }
    void* s = pick_stream(stream, ya);
    if (p.N == 0) return;
    py::gil_scoped_release release;
    if (es == 4) fprop_t<float>(a, p, xa.ptr, wa.ptr, bp, ya.ptr, relu, s);
    else fprop_t<double>(a, p, xa.ptr, wa.ptr, bp, ya.ptr, relu, s);
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("relu") = false, py::arg("stream") = py::none(),
     "Fprop on device arrays. 'direct': register-tiled (4 channels x 4 columns per thread) or one output "
     "element per thread; 'im2col': implicit GEMM (float32; float64 runs the direct kernel); '1x1': plain "
     "GEMM on the same tiled core; 'separable': the 1xn / nx1 kernels.");

  m.def("dgrad", [](const std::string& algo, const ConvProblem& p, py::object dy, py::object w, py::object dx,
                    py::object stream) {
    const Algo a = parse_algo(algo);
    check(a, p);
    const DeviceArray da = device_array(dy, "grad_output"), wa = device_array(w, "weight"),
                      xa = device_array(dx, "grad_input");
    const int es = da.itemsize;
    expect(da, "grad_output", p.output_elems(), es, false);
    expect(wa, "weight", p.weight_elems(), es, false);
    expect(xa, "grad_input", p.input_elems(), es, true);
    void* s = pick_stream(stream, xa);
    if (p.N == 0) return;
    py::gil_scoped_release release;
    if (es == 4) dgrad_t<float>(a, p, da.ptr, wa.ptr, xa.ptr, s);
    else dgrad_t<double>(a, p, da.ptr, wa.ptr, xa.ptr, s);
  }, py::arg("algo"), py::arg("problem"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"),
     py::arg("stream") = py::none(),
     "Dgrad as a gather, no atomics. 'direct': register-tiled (4 channels x 4 same-phase columns per "
     "thread) or one input element per thread; 'im2col': implicit GEMM "
     "(float32; float64 runs the direct kernel); '1x1': GEMM writing every element once; 'separable': "
     "32 positions x 16 channels per block.");

  m.def("wgrad", [](const std::string& algo, const ConvProblem& p, py::object x, py::object dy, py::object dw,
                    py::object workspace, py::object stream) {
    const Algo a = parse_algo(algo);
    check(a, p);
    const DeviceArray xa = device_array(x, "input"), da = device_array(dy, "grad_output"),
                      wa = device_array(dw, "grad_weight");
    const int es = xa.itemsize;
    expect(xa, "input", p.input_elems(), es, false);
    expect(da, "grad_output", p.output_elems(), es, false);
    expect(wa, "grad_weight", p.weight_elems(), es, true);
    if (p.N == 0) throw py::value_error("wgrad with N == 0: zero grad_weight on the caller's side");
    void* s = pick_stream(stream, wa);
    void* ws = nullptr;
    const int64_t ws_elems = workspace_elems(a, p, es);
    if (ws_elems > 0) {
      // the split-K partials: device memory the caller allocates (cuda.py: a CuPy array of the input's dtype)
      const std::string dt = es == 4 ? "float32" : "float64";
      if (workspace.is_none())
        throw py::value_error("workspace: the " + algo + " Wgrad of this problem needs a " + dt +
                              " device array of " + std::to_string(ws_elems) + " elements (wgrad_workspace_elems)");
      const DeviceArray wsa = device_array(workspace, "workspace");
      if (wsa.itemsize != es || wsa.elems < ws_elems || wsa.readonly)
        throw py::value_error("workspace: needs a writeable " + dt + " device array of at least " +
                              std::to_string(ws_elems) + " elements");
      ws = wsa.ptr;
    }
    py::gil_scoped_release release;
    if (es == 4) wgrad_t<float>(a, p, xa.ptr, da.ptr, wa.ptr, ws, s);
    else wgrad_t<double>(a, p, xa.ptr, da.ptr, wa.ptr, ws, s);
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"),
     py::arg("workspace") = py::none(), py::arg("stream") = py::none(),
     "Wgrad. 'direct': one weight element per block, fixed-order tree reduction; 'im2col': implicit GEMM "
     "with N*P*Q split into igemm_wgrad_chunks chunks whose partials (in `workspace`) are summed in chunk "
     "order (float32; float64 runs the direct kernel); '1x1': the same split on the 1x1 GEMM (float32 and "
     "float64, workspace of the arrays' dtype); 'separable': one block per 16x8x8 (k, c, tap) tile.");

  m.def("wgrad_workspace_elems", [](const std::string& algo, const ConvProblem& p, int itemsize) {
    return workspace_elems(parse_algo(algo), p, itemsize);
  }, py::arg("algo"), py::arg("problem"), py::arg("itemsize"),
     "Elements (of the arrays' dtype, itemsize 4 or 8) of device workspace the Wgrad of kernel family "
     "`algo` needs (0: none).");

  m.def("igemm_wgrad_workspace_elems", [](const ConvProblem& p) {
    return fastconv::cuda::igemm_wgrad_workspace_elems(p);
  }, "float32 elements of device workspace the implicit-GEMM Wgrad needs (0: none).");

  register_cuda_layers(m);
}
