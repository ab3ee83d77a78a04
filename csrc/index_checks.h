// Checks shared by the ops that take neuron indices.
#pragma once

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace vbp {

// `index` must be 1-D int64 on `device`, unique, with every value in [0, size). `op` and `name` go in the message.
inline void check_neuron_index(const at::Tensor& index, int64_t size, const c10::Device& device, const char* op,
                               const char* name) {
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, op, ": ", name, " must be 1-D int64, got ",
              index.scalar_type(), " of shape ", index.sizes());
  TORCH_CHECK(index.device() == device, op, ": ", name, " must be on ", device, ", got ", index.device());
  if (index.numel() > 0 && !index.is_meta()) {
    TORCH_CHECK(index.min().item<int64_t>() >= 0 && index.max().item<int64_t>() < size, op, ": ", name,
                " indices must lie in [0, ", size, ")");
    TORCH_CHECK(std::get<0>(at::_unique(index)).numel() == index.numel(), op, ": ", name, " indices must be unique");
  }
}

}  // namespace vbp
