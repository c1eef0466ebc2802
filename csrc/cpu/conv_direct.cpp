// Direct convolution: runtime dispatch between the per-ISA builds of
// conv_direct_impl.h. The ISA follows the GEMM's choice (fastconv::gemm_isa(),
// CPUID or set_gemm_isa()), so one switch selects every vectorized path.
#include <cstring>
#include <type_traits>

#include "fastconv/conv_cpu.h"
#include "fastconv/gemm.h"
#include "conv_kvec.h"

namespace fastconv {

#define FC_DECLARE_ISA(ns)                                                                  \
  namespace ns {                                                                            \
  template <typename T>                                                                     \
  void direct_fprop(const ConvProblem&, const T*, const T*, const T*, T*, bool);            \
  template <typename T>                                                                     \
  void direct_dgrad(const ConvProblem&, const T*, const T*, T*);                            \
  template <typename T>                                                                     \
  void direct_wgrad(const ConvProblem&, const T*, const T*, T*);                            \
  }
FC_DECLARE_ISA(isa_base)
#ifndef FASTCONV_NO_X86_KERNELS
FC_DECLARE_ISA(isa_avx2)
FC_DECLARE_ISA(isa_avx512)
#endif
#undef FC_DECLARE_ISA

std::string direct_supports(const ConvProblem&) { return ""; }

namespace {
enum class Isa { Base, Avx2, Avx512 };
Isa current_isa() {
#ifndef FASTCONV_NO_X86_KERNELS
  const char* isa = gemm_isa();
  if (std::strcmp(isa, "avx512") == 0) return Isa::Avx512;
  if (std::strcmp(isa, "avx2") == 0) return Isa::Avx2;
#endif
  return Isa::Base;
}
}  // namespace

#ifndef FASTCONV_NO_X86_KERNELS
#define FC_DISPATCH(fn, ...)                                  \
  switch (current_isa()) {                                    \
    case Isa::Avx512: return isa_avx512::fn<T>(__VA_ARGS__); \
    case Isa::Avx2: return isa_avx2::fn<T>(__VA_ARGS__);     \
    default: return isa_base::fn<T>(__VA_ARGS__);            \
  }
#else
#define FC_DISPATCH(fn, ...) return isa_base::fn<T>(__VA_ARGS__);
#endif

template <typename T>
void direct_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  // fp32 with 16+ output channels per group on AVX-512: the register-blocked kernel
  if constexpr (std::is_same_v<T, float>) {
    if (detail::kvec_fprop_ok(p)) return detail::kvec_fprop(p, x, w, bias, y, relu);
  }
  FC_DISPATCH(direct_fprop, p, x, w, bias, y, relu)
}
template <typename T>
void direct_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  if constexpr (std::is_same_v<T, float>) {
    if (detail::kvec_dgrad_ok(p)) return detail::kvec_dgrad(p, dy, w, dx);
  }
  FC_DISPATCH(direct_dgrad, p, dy, w, dx)
}
template <typename T>
void direct_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  if constexpr (std::is_same_v<T, float>) {
    if (detail::kvec_wgrad_ok(p)) return detail::kvec_wgrad(p, x, dy, dw);
  }
  FC_DISPATCH(direct_wgrad, p, x, dy, dw)
}
#undef FC_DISPATCH

#define FC_INSTANTIATE(T)                                                                    \
  template void direct_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool); \
  template void direct_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                 \
  template void direct_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace fastconv
