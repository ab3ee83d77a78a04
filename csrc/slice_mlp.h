// slice_mlp: the compact layers of a pruned MLP, W1[keep, :], b1[keep] and W2[:, keep], by gathers.
#pragma once

#include <ATen/core/Tensor.h>

namespace vbp {

// w1 [hidden, in]; b1 [hidden]; w2 [out, hidden]: one floating dtype, one device; keep [K] int64, unique,
// in [0, hidden). Throws a c10::Error saying what is wrong otherwise.
void check_slice_mlp_inputs(const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& keep);

}  // namespace vbp
