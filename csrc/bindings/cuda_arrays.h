// __cuda_array_interface__ handling shared by the _cuda binding files
// (cuda_module.cpp: convolution; cuda_layers.cpp: pooling and layers).
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fastconv {
namespace bindings {

namespace py = pybind11;

struct DeviceArray {
  void* ptr = nullptr;
  int64_t elems = 1;
  int itemsize = 0;
  char kind = 'f';  // 'f' float32/float64, 'i' int64, 'u' uint8
  std::vector<int64_t> shape;
  bool readonly = false;
  py::object stream;  // the producer's stream entry (None when absent)
};

// Reads and checks one __cuda_array_interface__ (v2/v3) of any dtype the
// kernels take: float32, float64, int64 (pooling indices, targets), uint8
// (dropout masks).
inline DeviceArray device_array_any(py::handle obj, const char* name) {
  const std::string n(name);
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    throw py::type_error(n + ": expected a GPU array with __cuda_array_interface__ (CuPy array, torch CUDA tensor), got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::dict d = obj.attr("__cuda_array_interface__");
  DeviceArray a;
  const std::string typestr = d["typestr"].cast<std::string>();
  if (typestr == "<f4") a.itemsize = 4;
  else if (typestr == "<f8") a.itemsize = 8;
  else if (typestr == "<i8") a.itemsize = 8, a.kind = 'i';
  else if (typestr == "|u1" || typestr == "<u1") a.itemsize = 1, a.kind = 'u';
  else throw py::type_error(n + ": unsupported dtype, typestr " + typestr);
  a.shape = d["shape"].cast<std::vector<int64_t>>();
  for (int64_t s : a.shape) a.elems *= s;
  if (d.contains("strides") && !d["strides"].is_none()) {
    const auto strides = d["strides"].cast<std::vector<int64_t>>();
    int64_t expect = a.itemsize;
    for (size_t i = a.shape.size(); i-- > 0;) {
      if (a.shape[i] > 1 && strides[i] != expect) throw py::value_error(n + ": must be C-contiguous");
      expect *= a.shape[i];
    }
  }
  if (d.contains("mask") && !d["mask"].is_none()) throw py::value_error(n + ": masked arrays are not supported");
  const py::tuple data = d["data"];
  a.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  a.readonly = data[1].cast<bool>();
  a.stream = d.contains("stream") ? py::object(d["stream"]) : py::object(py::none());
  if (a.elems > 0 && a.ptr == nullptr) throw py::value_error(n + ": null device pointer");
  return a;
}

// A float32 / float64 device array.
inline DeviceArray device_array(py::handle obj, const char* name) {
  DeviceArray a = device_array_any(obj, name);
  if (a.kind != 'f')
    throw py::type_error(std::string(name) + ": dtype must be float32 or float64, got typestr " +
                         obj.attr("__cuda_array_interface__")["typestr"].cast<std::string>());
  return a;
}

inline void expect(const DeviceArray& a, const char* name, int64_t elems, int itemsize, bool output) {
  if (a.itemsize != itemsize) throw py::type_error(std::string(name) + ": dtype does not match the input's");
  if (a.elems != elems)
    throw py::value_error(std::string(name) + ": has " + std::to_string(a.elems) + " elements, the problem needs " +
                          std::to_string(elems));
  if (output && a.readonly) throw py::value_error(std::string(name) + ": is read-only");
}

// Explicit stream (an int cudaStream_t, e.g. cupy.cuda.get_current_stream().ptr)
// wins; otherwise the stream the output's producer exported (CuPy exports its
// current stream in interface v3); otherwise the legacy default stream.
inline void* pick_stream(py::object stream, const DeviceArray& out) {
  if (!stream.is_none()) return reinterpret_cast<void*>(stream.cast<uintptr_t>());
  if (!out.stream.is_none()) return reinterpret_cast<void*>(out.stream.cast<uintptr_t>());
  return nullptr;
}

}  // namespace bindings
}  // namespace fastconv
