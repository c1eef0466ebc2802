// pybind11 bindings of the CUDA pooling and layer kernels (csrc/cuda/pool.cu,
// layers.cu) for the GPU module _cuda, registered by cuda_module.cpp.
//
// Same function names and positional arguments as the CPU module's
// (cpu_pool.cpp, cpu_layers.cpp), with __cuda_array_interface__ arrays
// (C-contiguous; float32/float64 data, int64 indices and targets, uint8
// masks, float64 batch-norm statistics) and one extra keyword, `stream`
// (an int cudaStream_t; default: the output's exported stream, else the legacy
// default stream). Launches are asynchronous; the GIL is released around them.
//
// Differences from the host bindings, because device data cannot be read
// without a copy: pooling indices are not range-checked (the gather only
// compares them, so a bad index drops its gradient, never writes out of
// bounds), and a cross-entropy target outside [0, C) yields a NaN row.
//
// Status: compiled, never run on a GPU by this project; the kernels behind it
// are the ones tests/test_cuda_emu_layers.py runs on the CPU grid emulator.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "cuda_arrays.h"
#include "fastconv/layers_cuda.h"

namespace py = pybind11;
using fastconv::AdaptiveProblem;
using fastconv::PoolKind;
using fastconv::PoolProblem;
using fastconv::bindings::DeviceArray;
using fastconv::bindings::device_array;
using fastconv::bindings::device_array_any;
using fastconv::bindings::pick_stream;
namespace fc = fastconv::cuda;

namespace {

// Checks dtype (kind + itemsize), element count and writability.
DeviceArray dev(py::handle o, const char* name, char kind, int itemsize, int64_t elems, bool out) {
  const DeviceArray a = device_array_any(o, name);
  if (a.kind != kind || a.itemsize != itemsize)
    throw py::type_error(std::string(name) + ": dtype does not match the kernel's");
  if (a.elems != elems)
    throw py::value_error(std::string(name) + ": has " + std::to_string(a.elems) + " elements, the kernel needs " +
                          std::to_string(elems));
  if (out && a.readonly) throw py::value_error(std::string(name) + ": is read-only");
  return a;
}

void* opt(py::object o, const char* name, char kind, int itemsize, int64_t elems, bool out) {
  return o.is_none() ? nullptr : dev(o, name, kind, itemsize, elems, out).ptr;
}

void nonneg(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d < 0) throw py::value_error("sizes must be >= 0");
}

// float32 (4) or float64 (8), from the array that sets the compute dtype
int float_size(py::handle o, const char* name) { return device_array(o, name).itemsize; }

template <typename T>
T* as(void* p) {
  return static_cast<T*>(p);
}

// Runs f(float-tag) or f(double-tag) with the GIL released.
template <typename F>
void dispatch(int es, F&& f) {
  py::gil_scoped_release release;
  if (es == 4) f(float(0));
  else f(double(0));
}

// ----------------------------------------------------------------- pooling
PoolKind kind_of(int k) {
  if (k < 0 || k > 2) throw py::value_error("pool kind must be 0 (max), 1 (min) or 2 (avg)");
  return static_cast<PoolKind>(k);
}

const DeviceArray& planes3(const DeviceArray& a, const char* name) {
  if (a.shape.size() != 3) throw py::value_error(std::string(name) + ": must be 3-D (planes, H, W)");
  return a;
}

PoolProblem make(PoolKind k, const DeviceArray& x, const DeviceArray& y, int64_t kh, int64_t kw, int64_t sh,
                 int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool cip, int64_t div) {
  PoolProblem p;
  p.planes = x.shape[0]; p.H = x.shape[1]; p.W = x.shape[2];
  p.P = y.shape[1]; p.Q = y.shape[2];
  p.kh = kh; p.kw = kw; p.sh = sh; p.sw = sw; p.ph = ph; p.pw = pw; p.dh = dh; p.dw = dw;
  p.count_include_pad = cip;
  p.divisor_override = div;
  if (y.shape[0] != p.planes) throw py::value_error("pool: input and output plane counts differ");
  const std::string why = fc::pool_problem_check(k, p);
  if (!why.empty()) throw py::value_error("pool: " + why);
  return p;
}

AdaptiveProblem make_adaptive(PoolKind k, const DeviceArray& x, const DeviceArray& y) {
  AdaptiveProblem p;
  p.planes = x.shape[0]; p.H = x.shape[1]; p.W = x.shape[2]; p.P = y.shape[1]; p.Q = y.shape[2];
  if (y.shape[0] != p.planes) throw py::value_error("adaptive pool: plane counts differ");
  const std::string why = fc::adaptive_problem_check(k, p);
  if (!why.empty()) throw py::value_error("adaptive pool: " + why);
  return p;
}

// Max/min backward source: the indices, else the input (to recompute the argmax).
void maxmin_source(PoolKind k, py::object x, py::object idx, int es, int64_t in_elems, int64_t out_elems,
                   const void*& xp, const int64_t*& ip) {
  xp = nullptr;
  ip = nullptr;
  if (k == PoolKind::Avg) return;
  ip = static_cast<const int64_t*>(opt(idx, "indices", 'i', 8, out_elems, false));
  if (ip) return;
  if (x.is_none()) throw py::value_error("pool backward: needs the input or the indices");
  xp = dev(x, "input", 'f', es, in_elems, false).ptr;
}

}  // namespace

void register_cuda_layers(py::module_& m) {
  m.def("pool2d_forward",
        [](int kind, py::object x, py::object y, py::object indices, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
           int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad, int64_t divisor_override,
           py::object stream) {
          const PoolKind k = kind_of(kind);
          const DeviceArray xa = planes3(device_array(x, "input"), "input");
          const DeviceArray ya = planes3(device_array(y, "output"), "output");
          const PoolProblem p = make(k, xa, ya, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          const int es = xa.itemsize;
          dev(y, "output", 'f', es, ya.elems, true);
          int64_t* ip = k == PoolKind::Avg ? nullptr : as<int64_t>(opt(indices, "indices", 'i', 8, ya.elems, true));
          void* s = pick_stream(stream, ya);
          dispatch(es, [&](auto tag) {
            using T = decltype(tag);
            fc::pool2d_fwd<T>(k, p, as<const T>(xa.ptr), as<T>(ya.ptr), ip, s);
          });
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
        py::arg("count_include_pad"), py::arg("divisor_override"), py::arg("stream") = py::none());

  m.def("pool2d_backward",
        [](int kind, py::object dy, py::object x, py::object indices, py::object dx, int64_t kh, int64_t kw,
           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool count_include_pad,
           int64_t divisor_override, py::object stream) {
          const PoolKind k = kind_of(kind);
          const DeviceArray ga = planes3(device_array(dy, "grad_output"), "grad_output");
          const DeviceArray da = planes3(device_array(dx, "grad_input"), "grad_input");
          const PoolProblem p = make(k, da, ga, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad, divisor_override);
          const int es = ga.itemsize;
          dev(dx, "grad_input", 'f', es, da.elems, true);
          const void* xp;
          const int64_t* ip;
          maxmin_source(k, x, indices, es, da.elems, ga.elems, xp, ip);
          void* s = pick_stream(stream, da);
          dispatch(es, [&](auto tag) {
            using T = decltype(tag);
            fc::pool2d_bwd<T>(k, p, as<const T>(ga.ptr), static_cast<const T*>(xp), ip, as<T>(da.ptr), s);
          });
        },
        py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("indices"), py::arg("grad_input"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"),
        py::arg("dw"), py::arg("count_include_pad"), py::arg("divisor_override"), py::arg("stream") = py::none());

  m.def("adaptive_pool2d_forward",
        [](int kind, py::object x, py::object y, py::object indices, py::object stream) {
          const PoolKind k = kind_of(kind);
          const DeviceArray xa = planes3(device_array(x, "input"), "input");
          const DeviceArray ya = planes3(device_array(y, "output"), "output");
          const AdaptiveProblem p = make_adaptive(k, xa, ya);
          const int es = xa.itemsize;
          dev(y, "output", 'f', es, ya.elems, true);
          int64_t* ip = k == PoolKind::Avg ? nullptr : as<int64_t>(opt(indices, "indices", 'i', 8, ya.elems, true));
          void* s = pick_stream(stream, ya);
          dispatch(es, [&](auto tag) {
            using T = decltype(tag);
            fc::adaptive_pool2d_fwd<T>(k, p, as<const T>(xa.ptr), as<T>(ya.ptr), ip, s);
          });
        },
        py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("stream") = py::none());

  m.def("adaptive_pool2d_backward",
        [](int kind, py::object dy, py::object x, py::object indices, py::object dx, py::object stream) {
          const PoolKind k = kind_of(kind);
          const DeviceArray ga = planes3(device_array(dy, "grad_output"), "grad_output");
          const DeviceArray da = planes3(device_array(dx, "grad_input"), "grad_input");
          const AdaptiveProblem p = make_adaptive(k, da, ga);
          const int es = ga.itemsize;
          dev(dx, "grad_input", 'f', es, da.elems, true);
          const void* xp;
          const int64_t* ip;
          maxmin_source(k, x, indices, es, da.elems, ga.elems, xp, ip);
          void* s = pick_stream(stream, da);
          dispatch(es, [&](auto tag) {
            using T = decltype(tag);
            fc::adaptive_pool2d_bwd<T>(k, p, as<const T>(ga.ptr), static_cast<const T*>(xp), ip, as<T>(da.ptr), s);
          });
        },
        py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("indices"), py::arg("grad_input"),
        py::arg("stream") = py::none());

  // ---------------------------------------------------------------- layers
  m.def("bn_stats", [](py::object x, int64_t N, int64_t C, int64_t L, py::object mean, py::object var,
                       py::object stream) {
    nonneg({N, C, L});
    if (N * L == 0) throw py::value_error("batch_norm: no elements per channel");
    const int es = float_size(x, "input");
    const DeviceArray xa = dev(x, "input", 'f', es, N * C * L, false);
    const DeviceArray ma = dev(mean, "mean", 'f', 8, C, true), va = dev(var, "var", 'f', 8, C, true);
    void* s = pick_stream(stream, ma);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::bn_stats<T>(N, C, L, as<const T>(xa.ptr), as<double>(ma.ptr), as<double>(va.ptr), s);
    });
  }, py::arg("input"), py::arg("N"), py::arg("C"), py::arg("L"), py::arg("mean"), py::arg("var"),
     py::arg("stream") = py::none());

  m.def("bn_apply", [](py::object x, int64_t N, int64_t C, int64_t L, py::object mean, py::object invstd,
                       py::object w, py::object b, py::object y, py::object stream) {
    nonneg({N, C, L});
    const int es = float_size(x, "input");
    const DeviceArray xa = dev(x, "input", 'f', es, N * C * L, false);
    const DeviceArray ma = dev(mean, "mean", 'f', 8, C, false), ia = dev(invstd, "invstd", 'f', 8, C, false);
    void* wp = opt(w, "weight", 'f', es, C, false);
    void* bp = opt(b, "bias", 'f', es, C, false);
    const DeviceArray ya = dev(y, "output", 'f', es, N * C * L, true);
    void* s = pick_stream(stream, ya);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::bn_apply<T>(N, C, L, as<const T>(xa.ptr), as<const double>(ma.ptr), as<const double>(ia.ptr),
                      as<const T>(wp), as<const T>(bp), as<T>(ya.ptr), s);
    });
  }, py::arg("input"), py::arg("N"), py::arg("C"), py::arg("L"), py::arg("mean"), py::arg("invstd"),
     py::arg("weight"), py::arg("bias"), py::arg("output"), py::arg("stream") = py::none());

  m.def("bn_backward", [](py::object dy, py::object x, int64_t N, int64_t C, int64_t L, py::object mean,
                          py::object invstd, py::object w, bool training, py::object dx, py::object dw, py::object db,
                          py::object stream) {
    nonneg({N, C, L});
    if (N * L == 0) throw py::value_error("batch_norm_backward: no elements per channel");
    const int es = float_size(x, "input");
    const DeviceArray ga = dev(dy, "grad_output", 'f', es, N * C * L, false);
    const DeviceArray xa = dev(x, "input", 'f', es, N * C * L, false);
    const DeviceArray ma = dev(mean, "mean", 'f', 8, C, false), ia = dev(invstd, "invstd", 'f', 8, C, false);
    void* wp = opt(w, "weight", 'f', es, C, false);
    void* dxp = opt(dx, "grad_input", 'f', es, N * C * L, true);
    void* dwp = opt(dw, "grad_weight", 'f', es, C, true);
    void* dbp = opt(db, "grad_bias", 'f', es, C, true);
    void* s = pick_stream(stream, ga);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::bn_backward<T>(N, C, L, as<const T>(ga.ptr), as<const T>(xa.ptr), as<const double>(ma.ptr),
                         as<const double>(ia.ptr), as<const T>(wp), training, as<T>(dxp), as<T>(dwp), as<T>(dbp), s);
    });
  }, py::arg("grad_output"), py::arg("input"), py::arg("N"), py::arg("C"), py::arg("L"), py::arg("mean"),
     py::arg("invstd"), py::arg("weight"), py::arg("training"), py::arg("grad_input"), py::arg("grad_weight"),
     py::arg("grad_bias"), py::arg("stream") = py::none());

  m.def("lrn", [](py::object dy, py::object x, int64_t N, int64_t C, int64_t L, int64_t size, double alpha,
                  double beta, double k, py::object out, py::object stream) {
    nonneg({N, C, L});
    if (size < 1) throw py::value_error("size must be >= 1");
    const int es = float_size(x, "input");
    const DeviceArray xa = dev(x, "input", 'f', es, N * C * L, false);
    void* dyp = opt(dy, "grad_output", 'f', es, N * C * L, false);
    const DeviceArray oa = dev(out, dyp ? "grad_input" : "output", 'f', es, N * C * L, true);
    void* s = pick_stream(stream, oa);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      if (dyp) fc::lrn_backward<T>(N, C, L, as<const T>(dyp), as<const T>(xa.ptr), size, alpha, beta, k, as<T>(oa.ptr), s);
      else fc::lrn_forward<T>(N, C, L, as<const T>(xa.ptr), size, alpha, beta, k, as<T>(oa.ptr), s);
    });
  }, py::arg("grad_output"), py::arg("input"), py::arg("N"), py::arg("C"), py::arg("L"), py::arg("size"),
     py::arg("alpha"), py::arg("beta"), py::arg("k"), py::arg("output"), py::arg("stream") = py::none());

  m.def("activation", [](int kind, py::object dy, py::object x, py::object out, py::object stream) {
    if (kind < 0 || kind > 2) throw py::value_error("unknown activation kind");
    const DeviceArray xa = device_array(x, "input");
    const int es = xa.itemsize;
    const int64_t n = xa.elems;
    void* dyp = opt(dy, "grad_output", 'f', es, n, false);
    const DeviceArray oa = dev(out, "output", 'f', es, n, true);
    void* s = pick_stream(stream, oa);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      if (dyp) fc::activation_backward<T>(kind, n, as<const T>(dyp), as<const T>(xa.ptr), as<T>(oa.ptr), s);
      else fc::activation_forward<T>(kind, n, as<const T>(xa.ptr), as<T>(oa.ptr), s);
    });
  }, py::arg("kind"), py::arg("grad_output"), py::arg("input"), py::arg("output"), py::arg("stream") = py::none());

  m.def("softmax", [](bool log, int64_t outer, int64_t D, int64_t inner, py::object dy, py::object x, py::object out,
                      py::object stream) {
    nonneg({outer, D, inner});
    const int64_t n = outer * D * inner;
    const int es = float_size(x, "input");
    const DeviceArray xa = dev(x, "input", 'f', es, n, false);
    void* dyp = opt(dy, "grad_output", 'f', es, n, false);
    const DeviceArray oa = dev(out, "output", 'f', es, n, true);
    void* s = pick_stream(stream, oa);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      if (dyp) fc::softmax_backward<T>(log, outer, D, inner, as<const T>(dyp), as<const T>(xa.ptr), as<T>(oa.ptr), s);
      else fc::softmax_forward<T>(log, outer, D, inner, as<const T>(xa.ptr), as<T>(oa.ptr), s);
    });
  }, py::arg("log"), py::arg("outer"), py::arg("D"), py::arg("inner"), py::arg("grad_output"), py::arg("input"),
     py::arg("output"), py::arg("stream") = py::none());

  m.def("cross_entropy", [](py::object logits, py::object target, int64_t N, int64_t C, int64_t ignore_index,
                            double eps, double scale, py::object row_loss, py::object grad, py::object stream) {
    nonneg({N, C});
    const int es = float_size(logits, "input");
    const DeviceArray za = dev(logits, "input", 'f', es, N * C, false);
    const DeviceArray ta = dev(target, "target", 'i', 8, N, false);
    const DeviceArray la = dev(row_loss, "row_loss", 'f', 8, N, true);
    const DeviceArray ga = dev(grad, "grad", 'f', es, N * C, true);
    void* s = pick_stream(stream, ga);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::cross_entropy_fused<T>(N, C, as<const T>(za.ptr), as<const int64_t>(ta.ptr), ignore_index, eps, scale,
                                 as<double>(la.ptr), as<T>(ga.ptr), s);
    });
  }, py::arg("input"), py::arg("target"), py::arg("N"), py::arg("C"), py::arg("ignore_index"), py::arg("eps"),
     py::arg("scale"), py::arg("row_loss"), py::arg("grad"), py::arg("stream") = py::none());

  m.def("dropout", [](py::object x, uint64_t seed, uint64_t offset, uint64_t threshold, double scale, py::object y,
                      py::object mask, py::object stream) {
    const DeviceArray xa = device_array(x, "input");
    const int es = xa.itemsize;
    const int64_t n = xa.elems;
    const DeviceArray ya = dev(y, "output", 'f', es, n, true);
    const DeviceArray ma = dev(mask, "mask", 'u', 1, n, true);
    void* s = pick_stream(stream, ya);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::dropout_forward<T>(n, as<const T>(xa.ptr), seed, offset, threshold, T(scale), as<T>(ya.ptr),
                             as<uint8_t>(ma.ptr), s);
    });
  }, py::arg("input"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("scale"), py::arg("output"),
     py::arg("mask"), py::arg("stream") = py::none());

  m.def("dropout_backward", [](py::object dy, py::object mask, double scale, py::object dx, py::object stream) {
    const DeviceArray ga = device_array(dy, "grad_output");
    const int es = ga.itemsize;
    const int64_t n = ga.elems;
    const DeviceArray ma = dev(mask, "mask", 'u', 1, n, false);
    const DeviceArray da = dev(dx, "grad_input", 'f', es, n, true);
    void* s = pick_stream(stream, da);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::dropout_backward<T>(n, as<const T>(ga.ptr), as<const uint8_t>(ma.ptr), T(scale), as<T>(da.ptr), s);
    });
  }, py::arg("grad_output"), py::arg("mask"), py::arg("scale"), py::arg("grad_input"), py::arg("stream") = py::none());

  m.def("linear", [](py::object x, py::object w, py::object b, int64_t M, int64_t I, int64_t O, py::object y,
                     py::object stream) {
    nonneg({M, I, O});
    const int es = float_size(x, "input");
    const DeviceArray xa = dev(x, "input", 'f', es, M * I, false);
    const DeviceArray wa = dev(w, "weight", 'f', es, O * I, false);
    void* bp = opt(b, "bias", 'f', es, O, false);
    const DeviceArray ya = dev(y, "output", 'f', es, M * O, true);
    void* s = pick_stream(stream, ya);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::linear_forward<T>(M, I, O, as<const T>(xa.ptr), as<const T>(wa.ptr), as<const T>(bp), as<T>(ya.ptr), s);
    });
  }, py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("M"), py::arg("I"), py::arg("O"), py::arg("output"),
     py::arg("stream") = py::none());

  m.def("linear_backward", [](py::object dy, py::object x, py::object w, int64_t M, int64_t I, int64_t O,
                              py::object dx, py::object dw, py::object db, py::object stream) {
    nonneg({M, I, O});
    const int es = float_size(x, "input");
    const DeviceArray ga = dev(dy, "grad_output", 'f', es, M * O, false);
    const DeviceArray xa = dev(x, "input", 'f', es, M * I, false);
    const DeviceArray wa = dev(w, "weight", 'f', es, O * I, false);
    void* dxp = opt(dx, "grad_input", 'f', es, M * I, true);
    void* dwp = opt(dw, "grad_weight", 'f', es, O * I, true);
    void* dbp = opt(db, "grad_bias", 'f', es, O, true);
    void* s = pick_stream(stream, ga);
    dispatch(es, [&](auto tag) {
      using T = decltype(tag);
      fc::linear_backward<T>(M, I, O, as<const T>(ga.ptr), as<const T>(xa.ptr), as<const T>(wa.ptr), as<T>(dxp),
                             as<T>(dwp), as<T>(dbp), s);
    });
  }, py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("M"), py::arg("I"), py::arg("O"),
     py::arg("grad_input"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("stream") = py::none());
}
