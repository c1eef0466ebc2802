// Direct convolution kernels built for the avx2 ISA (flags set in CMakeLists.txt).
#define FC_ISA_NS isa_avx2
#include "conv_direct_impl.h"
