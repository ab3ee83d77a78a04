// compact_mlp: inference forward of a (pruned) MLP, fc2(GELU(fc1(x))).
// Shared by the backend-independent ATen kernel (CUDA, Meta) and the CPU kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace vbp {

// x [..., in]; w1 [hidden, in]; b1 [hidden]; w2 [out, hidden]; b2 [out]; one dtype and device;
// approximate "none" (exact erf GELU) or "tanh". Throws a c10::Error saying what is wrong otherwise.
void check_compact_mlp_inputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                              const at::Tensor& b2, const std::string& approximate);

// The ATen kernel: two biased GEMMs (addmm's beta term) with GELU in place on the hidden tensor.
// rows [M, in] -> [M, out]; inputs already checked.
at::Tensor compact_mlp_aten_rows(const at::Tensor& rows, const at::Tensor& w1, const at::Tensor& b1,
                                 const at::Tensor& w2, const at::Tensor& b2, const std::string& approximate);

// out [M, out] viewed back to x's leading shape [..., out].
at::Tensor restore_leading_shape(const at::Tensor& out, const at::Tensor& x);

}  // namespace vbp
