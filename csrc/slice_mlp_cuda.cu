// slice_mlp on CUDA: two gather kernels, one thread per output element, 16-byte vector copies of W1 rows
// when rows are 16-byte aligned.
#include "slice_mlp.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace vbp {
namespace {

constexpr int kThreads = 256;

// dst[r, :] = src[keep[r], :] for rows of `width` elements of type T (T is float4 for vector copies).
template <typename T>
__global__ void gather_rows(const T* __restrict__ src, T* __restrict__ dst, const int64_t* __restrict__ keep,
                            int64_t n_rows, int64_t width) {
  const int64_t total = n_rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i - r * width;
    dst[i] = src[keep[r] * width + c];
  }
}

// dst[o, j] = src[o, keep[j]] for src [n_out, n_hidden].
template <typename scalar_t>
__global__ void gather_cols(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst,
                            const int64_t* __restrict__ keep, int64_t n_out, int64_t n_hidden, int64_t n_keep) {
  const int64_t total = n_out * n_keep;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = i / n_keep, j = i - o * n_keep;
    dst[i] = src[o * n_hidden + keep[j]];
  }
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> slice_mlp_cuda(const at::Tensor& w1, const at::Tensor& b1,
                                                              const at::Tensor& w2, const at::Tensor& keep) {
  check_slice_mlp_inputs(w1, b1, w2, keep);
  const c10::cuda::CUDAGuard guard(w1.device());
  const at::Tensor a = w1.contiguous(), c = w2.contiguous(), idx = keep.contiguous();
  const int64_t n_keep = idx.numel(), n_in = a.size(1), n_out = c.size(0);
  at::Tensor w1k = at::empty({n_keep, n_in}, a.options());
  at::Tensor w2k = at::empty({n_out, n_keep}, c.options());
  at::Tensor b1k = b1.index_select(0, idx);
  if (n_keep == 0) return {w1k, b1k, w2k};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t row_bytes = n_in * a.element_size();
  if (row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(a.const_data_ptr()) % 16 == 0) {
    const int64_t width = row_bytes / 16;
    gather_rows<float4><<<blocks_for(n_keep * width), kThreads, 0, stream>>>(
        static_cast<const float4*>(a.const_data_ptr()), static_cast<float4*>(w1k.mutable_data_ptr()),
        idx.const_data_ptr<int64_t>(), n_keep, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "slice_mlp_rows", [&] {
      gather_rows<scalar_t><<<blocks_for(n_keep * n_in), kThreads, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), w1k.mutable_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), n_keep, n_in);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "slice_mlp_cols", [&] {
    gather_cols<scalar_t><<<blocks_for(n_out * n_keep), kThreads, 0, stream>>>(
        c.const_data_ptr<scalar_t>(), w2k.mutable_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), n_out,
        c.size(1), n_keep);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w1k, b1k, w2k};
}

}  // namespace

TORCH_LIBRARY_IMPL(vbp, CUDA, m) { m.impl("slice_mlp", &slice_mlp_cuda); }

}  // namespace vbp
