// CPU pooling kernels (max, min, avg; fixed-window and adaptive), forward and
// backward, on dense NCHW data seen as `planes` = N*C independent H x W planes.
//
// Semantics are torch.nn.functional's:
//  * max/min: padding never wins (-inf / +inf); ties go to the FIRST extreme
//    value in row-major window order; a NaN in the window is the result (the
//    last NaN in window order gives the index, as torch's CPU kernel does).
//    Indices are flat h*W + w within the input plane.
//  * avg: torch's divisor (count_include_pad, ceil-mode windows clipped at the
//    padded border, divisor_override).
//  * adaptive: start = floor(i*in/out), end = ceil((i+1)*in/out).
// Backward passes are gathers: each input row is produced by one thread,
// summing the windows that contain it in a fixed order, so results are
// bit-identical for any thread count (no atomics).
#pragma once
#include <cstdint>
#include <string>

namespace fastconv {

enum class PoolKind : int { Max = 0, Min = 1, Avg = 2 };

struct PoolProblem {
  int64_t planes = 0;          // N*C
  int64_t H = 1, W = 1;        // input plane
  int64_t P = 1, Q = 1;        // output plane
  int64_t kh = 1, kw = 1;      // window
  int64_t sh = 1, sw = 1;      // stride
  int64_t ph = 0, pw = 0;      // top/left padding (bottom/right implied by P, Q)
  int64_t dh = 1, dw = 1;      // dilation (max/min only; avg needs 1)
  bool count_include_pad = true;
  int64_t divisor_override = 0;  // 0: none
};

struct AdaptiveProblem {
  int64_t planes = 0, H = 1, W = 1, P = 1, Q = 1;
};

// Empty when the problem is self-consistent, else why not (the Python layer
// validates with friendlier messages first; this guards the raw kernels).
std::string pool_check(PoolKind kind, const PoolProblem& p);
std::string adaptive_check(PoolKind kind, const AdaptiveProblem& p);

// y: planes*P*Q; idx (max/min only, may be null): planes*P*Q flat indices.
template <typename T>
void pool2d_fwd(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx);
// dx (overwritten): planes*H*W. Max/min: idx, or null to recompute the
// argmax from x. Avg: x and idx unused. Returns how many given indices lay
// outside [0, H*W) (they are skipped: the caller raises), 0 otherwise, so
// the range check costs no extra pass over the indices.
template <typename T>
int64_t pool2d_bwd(PoolKind kind, const PoolProblem& p, const T* dy, const T* x, const int64_t* idx,
                   T* dx);

// kind Max or Avg.
template <typename T>
void adaptive_pool2d_fwd(PoolKind kind, const AdaptiveProblem& p, const T* x, T* y, int64_t* idx);
template <typename T>
void adaptive_pool2d_bwd(PoolKind kind, const AdaptiveProblem& p, const T* dy, const T* x,
                         const int64_t* idx, T* dx);

// The instruction set the pooling row kernels dispatch to ("avx512", "avx2", "baseline").
const char* pool_isa();

}  // namespace fastconv
