// Direct convolution kernels built for the base ISA (flags set in CMakeLists.txt).
#define FC_ISA_NS isa_base
#include "conv_direct_impl.h"
