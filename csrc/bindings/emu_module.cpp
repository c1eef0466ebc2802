// pybind11 bindings of the CUDA kernels compiled for the CPU grid emulator
// (module fastconv._emu, backend "cuda-emu"). The kernels are the very
// csrc/cuda/*.cu sources of the GPU module, compiled by g++ against
// csrc/emu/emu.h; "device pointers" are NumPy buffers. Same function names and
// checks as the CPU module (cpu_module.cpp), so a test can run any CUDA kernel
// here and compare it with the C++ CPU path.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cuda_algos.h"
#include "fastconv/conv_cuda.h"
#include "fastconv/problem.h"
// after pybind11: the emulator's CUDA keyword macros must not reach its headers
#include "emu/emu.h"

namespace py = pybind11;
using fastconv::ConvProblem;
using fastconv::bindings::in_ptr;
using fastconv::bindings::is_f64;
using fastconv::bindings::out_ptr;

// The pooling and layer kernels (emu_layers.cpp).
void register_emu_layers(py::module_& m);

namespace {

// "direct": direct kernels for all three operators (Fprop and Dgrad
// register-tiled when direct_fprop_tiled(p) / direct_dgrad_tiled(p)). "im2col": the implicit GEMM for all three (float32;
// float64 runs the direct kernels). "1x1": the 1x1 GEMM kernels, "separable":
// the 1xn / nx1 kernels (float32 and float64 both).
using Algo = fastconv::bindings::CudaAlgo;

Algo parse_algo(const std::string& name) { return fastconv::bindings::parse_cuda_algo(name, "cuda-emu"); }
std::string supports(Algo a, const ConvProblem& p) { return fastconv::bindings::cuda_supports(a, p); }
void check(Algo a, const ConvProblem& p) { fastconv::bindings::check_cuda_problem(a, p); }

template <typename T>
void fprop_t(Algo a, const ConvProblem& p, py::array& x, py::array& w, py::object bias, py::array& y, bool relu) {
  const auto buf = fastconv::bindings::fprop_buffers<T>(p, x, w, bias, y);
  const T *xp = buf.x, *wp = buf.w, *bp = buf.bias;
  T* yp = buf.y;
  if (p.N == 0) return;
  py::gil_scoped_release release;
  if (a == Algo::OneByOne) return fastconv::cuda::conv1x1_fprop<T>(p, xp, wp, bp, yp, relu, nullptr);
  if (a == Algo::Separable) return fastconv::cuda::separable_fprop<T>(p, xp, wp, bp, yp, relu, nullptr);
  // the implicit GEMM is float32 only (double would spill): float64 runs the direct kernel
  if constexpr (std::is_same_v<T, float>) {
    if (a == Algo::Im2col) {
      fastconv::cuda::igemm_fprop<float>(p, xp, wp, bp, yp, relu, nullptr);
      return;
    }
  }
  fastconv::cuda::direct_fprop<T>(p, xp, wp, bp, yp, relu, nullptr);
}

template <typename T>
void dgrad_t(Algo a, const ConvProblem& p, py::array& dy, py::array& w, py::array& dx) {
  const T* dyp = in_ptr<T>(dy, "grad_output", p.output_elems());
  const T* wp = in_ptr<T>(w, "weight", p.weight_elems());
  T* dxp = out_ptr<T>(dx, "grad_input", p.input_elems());
  if (p.N == 0) return;
  py::gil_scoped_release release;
  if (a == Algo::OneByOne) return fastconv::cuda::conv1x1_dgrad<T>(p, dyp, wp, dxp, nullptr);
  if (a == Algo::Separable) return fastconv::cuda::separable_dgrad<T>(p, dyp, wp, dxp, nullptr);
  if constexpr (std::is_same_v<T, float>) {
    if (a == Algo::Im2col) {
      fastconv::cuda::igemm_dgrad(p, dyp, wp, dxp, nullptr);
      return;
    }
  }
  fastconv::cuda::direct_dgrad<T>(p, dyp, wp, dxp, nullptr);
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
  if (a == Algo::OneByOne) {
    // the split-K partials live in host memory here (device memory on a GPU)
    std::vector<T> ws(size_t(fastconv::cuda::conv1x1_wgrad_workspace_elems(p)));
    return fastconv::cuda::conv1x1_wgrad<T>(p, xp, dyp, dwp, ws.empty() ? nullptr : ws.data(), nullptr);
  }
  if (a == Algo::Separable) return fastconv::cuda::separable_wgrad<T>(p, xp, dyp, dwp, nullptr);
  if constexpr (std::is_same_v<T, float>) {
    if (a == Algo::Im2col) {
      // the split-K partials live in host memory here (device memory on a GPU)
      std::vector<float> ws(size_t(fastconv::cuda::igemm_wgrad_workspace_elems(p)));
      fastconv::cuda::igemm_wgrad(p, xp, dyp, dwp, ws.empty() ? nullptr : ws.data(), nullptr);
      return;
    }
  }
  fastconv::cuda::direct_wgrad<T>(p, xp, dyp, dwp, nullptr);
}

}  // namespace

PYBIND11_MODULE(_emu, m) {
  m.doc() =
      "fastconv CUDA kernels (csrc/cuda/*.cu) compiled for the CPU grid emulator (csrc/emu/emu.h): "
      "backend 'cuda-emu', NumPy arrays, for tests. Slow by design: every block's threads are OS "
      "threads that hand a baton around between barriers. It checks results and barrier placement, "
      "not timing, coalescing, bank conflicts or warp-synchronous code.";

  // module_local: the CPU module binds the same C++ type
  fastconv::bindings::bind_conv_problem(m, /*module_local=*/true);

  m.def("supports", [](const std::string& algo, const ConvProblem& p) { return supports(parse_algo(algo), p); },
        "Empty string if the algorithm can take the problem, else the reason.");

  m.def("fprop", [](const std::string& algo, const ConvProblem& p, py::array x, py::array w, py::object bias,
                    py::array y, bool relu) {
    const Algo a = parse_algo(algo);
    check(a, p);
    if (is_f64(x)) fprop_t<double>(a, p, x, w, bias, y, relu);
    else fprop_t<float>(a, p, x, w, bias, y, relu);
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("relu") = false,
     "Fprop. 'direct': register-tiled (4 channels x 4 columns per thread) or one output element per "
     "thread; 'im2col': the implicit GEMM (64x64 tiles, float32; float64 runs the direct kernel); "
     "'1x1': a plain GEMM on the same tiled core; 'separable': the 1xn / nx1 kernels.");

  m.def("dgrad", [](const std::string& algo, const ConvProblem& p, py::array dy, py::array w, py::array dx) {
    const Algo a = parse_algo(algo);
    check(a, p);
    if (is_f64(dy)) dgrad_t<double>(a, p, dy, w, dx);
    else dgrad_t<float>(a, p, dy, w, dx);
  }, py::arg("algo"), py::arg("problem"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"),
     "Dgrad as a gather, no atomics. 'direct': register-tiled (4 channels x 4 same-phase columns per "
     "thread) or one input element per thread; 'im2col': the implicit GEMM "
     "(float32; float64 runs the direct kernel); '1x1': a GEMM writing every element once; 'separable': "
     "32 positions x 16 channels per block.");

  m.def("wgrad", [](const std::string& algo, const ConvProblem& p, py::array x, py::array dy, py::array dw) {
    const Algo a = parse_algo(algo);
    check(a, p);
    if (is_f64(x)) wgrad_t<double>(a, p, x, dy, dw);
    else wgrad_t<float>(a, p, x, dy, dw);
  }, py::arg("algo"), py::arg("problem"), py::arg("input"), py::arg("grad_output"), py::arg("grad_weight"),
     "Wgrad. 'direct': one weight element per block, fixed-order tree reduction; 'im2col': the implicit "
     "GEMM with N*P*Q split into a fixed number of chunks reduced in chunk order (float32; float64 runs "
     "the direct kernel); '1x1': the same split on the 1x1 GEMM (float32 and float64); 'separable': one "
     "block per 16x8x8 (k, c, tap) tile, fixed-order walk.");

  m.def("conv1x1_wgrad_chunks", [](const ConvProblem& p) { return fastconv::cuda::conv1x1_wgrad_chunks(p); },
        "How many N*P*Q chunks the 1x1 Wgrad splits this problem into (a function of the problem only).");
  m.def("direct_fprop_tiled", [](const ConvProblem& p) { return fastconv::cuda::direct_fprop_tiled(p); },
        "Whether the direct Fprop runs its register-tiled kernel for this problem (else one output per thread).");

  m.def("_direct_fprop_variant", [](const std::string& variant, const ConvProblem& p, py::array x, py::array w,
                                    py::object bias, py::array y, bool relu) {
    if (variant != "naive" && variant != "tiled")
      throw py::value_error("variant must be 'naive' or 'tiled', got '" + variant + "'");
    check(Algo::Direct, p);
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const auto buf = fastconv::bindings::fprop_buffers<T>(p, x, w, bias, y);
      const T *xp = buf.x, *wp = buf.w, *bp = buf.bias;
      T* yp = buf.y;
      if (p.N == 0) return;
      py::gil_scoped_release release;
      fastconv::cuda::direct_fprop_variant<T>(variant == "tiled", p, xp, wp, bp, yp, relu);
    };
    if (is_f64(x)) run(double());
    else run(float());
  }, py::arg("variant"), py::arg("problem"), py::arg("input"), py::arg("weight"), py::arg("bias"),
     py::arg("output"), py::arg("relu") = false,
     "TEST ONLY: the direct Fprop with its kernel forced: 'naive' (one output element per thread) or "
     "'tiled' (register-tiled, 4 output channels x 4 output columns per thread), whatever "
     "direct_fprop_tiled(problem) says.");

  m.def("direct_dgrad_tiled", [](const ConvProblem& p) { return fastconv::cuda::direct_dgrad_tiled(p); },
        "Whether the direct Dgrad runs its register-tiled gather for this problem (else one input per thread).");

  m.def("_direct_dgrad_variant", [](const std::string& variant, const ConvProblem& p, py::array dy, py::array w,
                                    py::array dx) {
    if (variant != "naive" && variant != "tiled")
      throw py::value_error("variant must be 'naive' or 'tiled', got '" + variant + "'");
    check(Algo::Direct, p);
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const T* dyp = in_ptr<T>(dy, "grad_output", p.output_elems());
      const T* wp = in_ptr<T>(w, "weight", p.weight_elems());
      T* dxp = out_ptr<T>(dx, "grad_input", p.input_elems());
      if (p.N == 0) return;
      py::gil_scoped_release release;
      fastconv::cuda::direct_dgrad_variant<T>(variant == "tiled", p, dyp, wp, dxp);
    };
    if (is_f64(dy)) run(double());
    else run(float());
  }, py::arg("variant"), py::arg("problem"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"),
     "TEST ONLY: the direct Dgrad with its kernel forced: 'naive' (one input element per thread) or 'tiled' "
     "(register-tiled gather, 4 input channels x 4 same-phase input columns per thread), whatever "
     "direct_dgrad_tiled(problem) says.");

  m.def("igemm_wgrad_chunks", [](const ConvProblem& p) { return fastconv::cuda::igemm_wgrad_chunks(p); },
        "How many N*P*Q chunks the implicit-GEMM Wgrad splits this problem into (a function of the problem only).");

  m.def("set_schedule", [](const std::string& name, uint64_t seed) {
    namespace emu = fastconv::emu;
    if (name == "random") emu::set_schedule(emu::Schedule::Random, seed);
    else if (name == "concurrent") emu::set_schedule(emu::Schedule::Concurrent, seed);
    else throw py::value_error("schedule must be 'random' or 'concurrent', got '" + name + "'");
  }, py::arg("name"), py::arg("seed") = 0x5eedf00dULL,
     "'random' (default): the threads of a block run one at a time between barriers, in a seeded "
     "random order per phase (a missing __syncthreads() reads stale shared memory); 'concurrent': all "
     "threads of a block run at once under the OS scheduler.");
  m.def("get_schedule", [] {
    return fastconv::emu::config().schedule == fastconv::emu::Schedule::Random ? "random" : "concurrent";
  });

  m.def("_igemm_fprop_without_barrier", [](const ConvProblem& p, py::array x, py::array w, py::array y) {
    check(Algo::Im2col, p);
    const float* xp = in_ptr<float>(x, "input", p.input_elems());
    const float* wp = in_ptr<float>(w, "weight", p.weight_elems());
    float* yp = out_ptr<float>(y, "output", p.output_elems());
    py::gil_scoped_release release;
    fastconv::cuda::igemm_fprop_without_barrier(p, xp, wp, yp);
  }, py::arg("problem"), py::arg("input"), py::arg("weight"), py::arg("output"),
     "TEST ONLY: the implicit-GEMM Fprop (float32, no bias) with its __syncthreads() removed. Its "
     "result is wrong under the 'random' schedule; a test uses it to show the emulator catches a "
     "missing barrier.");

  m.def("_igemm_defective", [](const std::string& op, const ConvProblem& p, py::array a, py::array b,
                               py::array out) {
    check(Algo::Im2col, p);
    int64_t na = p.input_elems(), nb = p.weight_elems(), nout = p.output_elems();
    if (op == "dgrad") na = p.output_elems(), nb = p.weight_elems(), nout = p.input_elems();
    else if (op == "wgrad") na = p.input_elems(), nb = p.output_elems(), nout = p.weight_elems();
    else if (op != "fprop") throw py::value_error("op must be 'fprop', 'dgrad' or 'wgrad', got '" + op + "'");
    if (p.N == 0) throw py::value_error("N must be > 0");
    const float* ap = in_ptr<float>(a, "a", na);
    const float* bp = in_ptr<float>(b, "b", nb);
    float* op_ = out_ptr<float>(out, "out", nout);
    std::vector<float> ws(size_t(op == "wgrad" ? fastconv::cuda::igemm_wgrad_workspace_elems(p) : 0));
    py::gil_scoped_release release;
    fastconv::cuda::igemm_defective(op, p, ap, bp, op_, ws.empty() ? nullptr : ws.data());
  }, py::arg("op"), py::arg("problem"), py::arg("a"), py::arg("b"), py::arg("out"),
     "TEST ONLY: the implicit GEMM of `op` (fprop: a=input, b=weight; dgrad: a=grad_output, b=weight; "
     "wgrad: a=input, b=grad_output) with an off-by-one K loop (the last 8-deep slice is never "
     "multiplied). A test shows its result is caught as wrong.");

  register_emu_layers(m);
}
