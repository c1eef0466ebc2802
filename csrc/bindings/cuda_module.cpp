// pybind11 bindings of the CUDA module. Importing it never requires a GPU:
// without a driver/device, runtime_info() says why and the backend reports
// itself unavailable.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "fastconv/cuda_api.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastconv compiled CUDA module";
  m.def("runtime_info", [] {
    const auto info = fastconv::cuda::runtime_info();
    py::dict d;
    d["runtime_version"] = info.runtime_version;
    d["driver_version"] = info.driver_version;
    d["device_count"] = info.device_count;
    d["error"] = info.error;
    return d;
  });
}
