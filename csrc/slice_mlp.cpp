// slice_mlp on CPU (and its Meta kernel): rows of W1 copied whole, columns of W2 gathered row by row,
// both in parallel over output rows.
#include "slice_mlp.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "index_checks.h"

namespace vbp {

void check_slice_mlp_inputs(const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& keep) {
  TORCH_CHECK(w1.dim() == 2 && w2.dim() == 2, "slice_mlp: w1 and w2 must be 2-D, got ", w1.dim(), "-D and ", w2.dim(),
              "-D");
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == w1.size(0), "slice_mlp: b1 must be [", w1.size(0), "], got ", b1.sizes());
  TORCH_CHECK(w2.size(1) == w1.size(0), "slice_mlp: w2 must read the ", w1.size(0), " hidden neurons, got ", w2.sizes());
  TORCH_CHECK(w1.is_floating_point(), "slice_mlp: weights must be floating point, got ", w1.scalar_type());
  TORCH_CHECK(b1.scalar_type() == w1.scalar_type() && w2.scalar_type() == w1.scalar_type(),
              "slice_mlp: w1, b1 and w2 must have one dtype");
  TORCH_CHECK(b1.device() == w1.device() && w2.device() == w1.device(), "slice_mlp: w1, b1 and w2 must be on one device");
  check_neuron_index(keep, w1.size(0), w1.device(), "slice_mlp", "keep");
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> slice_mlp_cpu(const at::Tensor& w1, const at::Tensor& b1,
                                                             const at::Tensor& w2, const at::Tensor& keep) {
  check_slice_mlp_inputs(w1, b1, w2, keep);
  const at::Tensor a = w1.contiguous(), c = w2.contiguous(), idx = keep.contiguous();
  const int64_t n_keep = idx.numel(), n_in = a.size(1), n_hidden = a.size(0), n_out = c.size(0);
  at::Tensor w1k = at::empty({n_keep, n_in}, a.options());
  at::Tensor w2k = at::empty({n_out, n_keep}, c.options());
  at::Tensor b1k = b1.index_select(0, idx);
  const int64_t* k = idx.const_data_ptr<int64_t>();
  const size_t row_bytes = n_in * a.element_size();
  const char* src1 = static_cast<const char*>(a.const_data_ptr());
  char* dst1 = static_cast<char*>(w1k.mutable_data_ptr());
  at::parallel_for(0, n_keep, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) std::memcpy(dst1 + r * row_bytes, src1 + k[r] * row_bytes, row_bytes);
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "slice_mlp_cpu", [&] {
    const scalar_t* src2 = c.const_data_ptr<scalar_t>();
    scalar_t* dst2 = w2k.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const scalar_t* row = src2 + o * n_hidden;
        scalar_t* out = dst2 + o * n_keep;
        for (int64_t j = 0; j < n_keep; ++j) out[j] = row[k[j]];
      }
    });
  });
  return {w1k, b1k, w2k};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> slice_mlp_meta(const at::Tensor& w1, const at::Tensor& b1,
                                                              const at::Tensor& w2, const at::Tensor& keep) {
  check_slice_mlp_inputs(w1, b1, w2, keep);
  const int64_t n_keep = keep.size(0);
  return {at::empty({n_keep, w1.size(1)}, w1.options()), at::empty({n_keep}, b1.options()),
          at::empty({w2.size(0), n_keep}, w2.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(vbp, CPU, m) { m.impl("slice_mlp", &slice_mlp_cpu); }
TORCH_LIBRARY_IMPL(vbp, Meta, m) { m.impl("slice_mlp", &slice_mlp_meta); }

}  // namespace vbp
