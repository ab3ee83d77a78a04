// fold_bias on CUDA: one block per output row, each thread sums a strided slice of the pruned
// neurons in float64, then a fixed-shape tree reduction in shared memory: deterministic bits.
#include "fold_bias.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace vbp {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void fold_bias_kernel(const scalar_t* __restrict__ w2, int64_t s0, int64_t s1,
                                 const scalar_t* __restrict__ b2, int64_t sb, const int64_t* __restrict__ pruned,
                                 const double* __restrict__ mean_p, int64_t n_pruned, scalar_t* __restrict__ out) {
  __shared__ double partial[kThreads];
  const int64_t row = blockIdx.x;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < n_pruned; j += kThreads) {
    acc += static_cast<double>(w2[row * s0 + pruned[j] * s1]) * mean_p[j];
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[row] = static_cast<scalar_t>(static_cast<double>(b2[row * sb]) + partial[0]);
}

at::Tensor fold_bias_cuda(const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& mean,
                          const at::Tensor& pruned) {
  check_fold_bias_inputs(w2, b2, mean, pruned);
  const c10::cuda::CUDAGuard guard(w2.device());
  const at::Tensor idx = pruned.contiguous();
  const at::Tensor mean_p = mean.index_select(0, idx).to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(b2, at::MemoryFormat::Contiguous);
  const int64_t n_out = w2.size(0);
  if (n_out == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w2.scalar_type(), "fold_bias_cuda", [&] {
    fold_bias_kernel<scalar_t><<<n_out, kThreads, 0, stream>>>(
        w2.const_data_ptr<scalar_t>(), w2.stride(0), w2.stride(1), b2.const_data_ptr<scalar_t>(), b2.stride(0),
        idx.const_data_ptr<int64_t>(), mean_p.const_data_ptr<double>(), idx.numel(), out.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vbp, CUDA, m) { m.impl("fold_bias", &fold_bias_cuda); }

}  // namespace vbp
