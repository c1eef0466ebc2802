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
#include <vector>

#include "common.h"
#include "cuda_arrays.h"
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

bool use_igemm(const std::string& algo) {
  if (algo == "direct") return false;
  if (algo == "im2col") return true;
  throw py::value_error("cuda: unknown algorithm '" + algo + "' (this backend has 'direct' and 'im2col')");
}

void check(bool igemm, const ConvProblem& p) {
  try {
    fastconv::check_problem(p);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  if (igemm) {
    const std::string why = fastconv::cuda::igemm_supports(p);
    if (!why.empty()) throw py::value_error(why);
  }
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
    return use_igemm(algo) ? fastconv::cuda::igemm_supports(p) : std::string();
  }, "Empty string if the algorithm can take the problem, else the reason.");

  m.def("fprop", [](const std::string& algo, const ConvProblem& p, py::object x, py::object w, py::object bias,
                    py::object y, bool relu, py::object stream) {
    const bool ig = use_igemm(algo);
    check(ig, p);
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
    if (es == 4) {
      auto f = ig ? fastconv::cuda::igemm_fprop<float> : fastconv::cuda::direct_fprop<float>;
      f(p, static_cast<const float*>(xa.ptr), static_cast<const float*>(wa.ptr), static_cast<const float*>(bp),
        static_cast<float*>(ya.ptr), relu, s);
    } else {
      // the implicit GEMM is float32 only (double would spill): float64 runs the direct kernel
      fastconv::cuda::direct_fprop<double>(p, static_cast<const double*>(xa.ptr), static_cast<const double*>(wa.ptr), static_cast<const double*>(bp),
        static_cast<double*>(ya.ptr), relu, s);
    }
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("relu") = false, py::arg("stream") = py::none(),
     "Fprop on device arrays. 'direct': one output element per thread; 'im2col': implicit GEMM "
     "(float32; float64 runs the direct kernel).");

  m.def("dgrad", [](const std::string& algo, const ConvProblem& p, py::object dy, py::object w, py::object dx,
                    py::object stream) {
    const bool ig = use_igemm(algo);
    check(ig, p);
    const DeviceArray da = device_array(dy, "grad_output"), wa = device_array(w, "weight"),
                      xa = device_array(dx, "grad_input");
    const int es = da.itemsize;
    expect(da, "grad_output", p.output_elems(), es, false);
    expect(wa, "weight", p.weight_elems(), es, false);
    expect(xa, "grad_input", p.input_elems(), es, true);
    void* s = pick_stream(stream, xa);
    if (p.N == 0) return;
    py::gil_scoped_release release;
    if (es == 4) {
      if (ig)
        fastconv::cuda::igemm_dgrad(p, static_cast<const float*>(da.ptr), static_cast<const float*>(wa.ptr),
                                    static_cast<float*>(xa.ptr), s);
      else
        fastconv::cuda::direct_dgrad<float>(p, static_cast<const float*>(da.ptr), static_cast<const float*>(wa.ptr),
                                            static_cast<float*>(xa.ptr), s);
    } else {
      // the implicit GEMM is float32 only: float64 runs the direct gather
      fastconv::cuda::direct_dgrad<double>(p, static_cast<const double*>(da.ptr), static_cast<const double*>(wa.ptr),
                                           static_cast<double*>(xa.ptr), s);
    }
  }, py::arg("algo"), py::arg("problem"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"),
     py::arg("stream") = py::none(),
     "Dgrad as a gather, no atomics. 'direct': one input element per thread; 'im2col': implicit GEMM "
     "(float32; float64 runs the direct kernel).");

  m.def("wgrad", [](const std::string& algo, const ConvProblem& p, py::object x, py::object dy, py::object dw,
                    py::object workspace, py::object stream) {
    const bool ig = use_igemm(algo);
    check(ig, p);
    const DeviceArray xa = device_array(x, "input"), da = device_array(dy, "grad_output"),
                      wa = device_array(dw, "grad_weight");
    const int es = xa.itemsize;
    expect(xa, "input", p.input_elems(), es, false);
    expect(da, "grad_output", p.output_elems(), es, false);
    expect(wa, "grad_weight", p.weight_elems(), es, true);
    if (p.N == 0) throw py::value_error("wgrad with N == 0: zero grad_weight on the caller's side");
    void* s = pick_stream(stream, wa);
    float* ws = nullptr;
    const int64_t ws_elems = (ig && es == 4) ? fastconv::cuda::igemm_wgrad_workspace_elems(p) : 0;
    if (ws_elems > 0) {
      // the split-K partials: device memory the caller allocates (cuda.py: a CuPy array)
      if (workspace.is_none())
        throw py::value_error("workspace: the implicit-GEMM Wgrad of this problem needs a float32 device array of " +
                              std::to_string(ws_elems) + " elements (igemm_wgrad_workspace_elems)");
      const DeviceArray wsa = device_array(workspace, "workspace");
      if (wsa.itemsize != 4 || wsa.elems < ws_elems || wsa.readonly)
        throw py::value_error("workspace: needs a writeable float32 device array of at least " +
                              std::to_string(ws_elems) + " elements");
      ws = static_cast<float*>(wsa.ptr);
    }
    py::gil_scoped_release release;
    if (es == 4) {
      if (ig)
        fastconv::cuda::igemm_wgrad(p, static_cast<const float*>(xa.ptr), static_cast<const float*>(da.ptr),
                                    static_cast<float*>(wa.ptr), ws, s);
      else
        fastconv::cuda::direct_wgrad<float>(p, static_cast<const float*>(xa.ptr), static_cast<const float*>(da.ptr),
                                            static_cast<float*>(wa.ptr), s);
    } else {
      fastconv::cuda::direct_wgrad<double>(p, static_cast<const double*>(xa.ptr), static_cast<const double*>(da.ptr),
                                           static_cast<double*>(wa.ptr), s);
    }
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"),
     py::arg("workspace") = py::none(), py::arg("stream") = py::none(),
     "Wgrad. 'direct': one weight element per block, fixed-order tree reduction; 'im2col': implicit GEMM "
     "with N*P*Q split into igemm_wgrad_chunks chunks whose partials (in `workspace`) are summed in chunk "
     "order (float32; float64 runs the direct kernel).");

  m.def("igemm_wgrad_workspace_elems", [](const ConvProblem& p) {
    return fastconv::cuda::igemm_wgrad_workspace_elems(p);
  }, "float32 elements of device workspace the implicit-GEMM Wgrad needs (0: none).");

  register_cuda_layers(m);
}
