// fold_bias: mean-shift compensation of VBP, out = b2 + W2[:, pruned] @ mean[pruned].
// Shared input checks of the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace vbp {

// w2 [out, hidden] floating; b2 [out] of w2's dtype; mean [hidden] floating; pruned [P] int64,
// unique, in [0, hidden); all on one device. Throws a c10::Error saying what is wrong otherwise.
void check_fold_bias_inputs(const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& mean,
                            const at::Tensor& pruned);

}  // namespace vbp
