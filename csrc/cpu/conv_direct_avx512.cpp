// Direct convolution kernels built for the avx512 ISA (flags set in CMakeLists.txt).
#define FC_ISA_NS isa_avx512
#include "conv_direct_impl.h"
