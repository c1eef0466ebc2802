// pybind11 bindings of the CPU pool kernels (registered into fastconv._cpu).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_pool(py::module_& m) { (void)m; }
