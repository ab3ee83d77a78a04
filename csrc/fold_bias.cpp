// fold_bias on CPU (and its Meta kernel for torch.compile tracing).
// Each output row is summed in float64 in a fixed order (four interleaved partial sums over `pruned`, so the
// additions do not wait on one another, combined pairwise): the same bits on every run and thread count.
#include "fold_bias.h"
#include "index_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace vbp {

void check_fold_bias_inputs(const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& mean,
                            const at::Tensor& pruned) {
  TORCH_CHECK(w2.dim() == 2, "fold_bias: w2 must be 2-D [out, hidden], got ", w2.dim(), "-D");
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == w2.size(0), "fold_bias: b2 must be [", w2.size(0), "], got ",
              b2.sizes());
  TORCH_CHECK(mean.dim() == 1 && mean.size(0) == w2.size(1), "fold_bias: mean must be [", w2.size(1), "], got ",
              mean.sizes());
  TORCH_CHECK(w2.is_floating_point() && mean.is_floating_point(), "fold_bias: w2 and mean must be floating point");
  TORCH_CHECK(b2.scalar_type() == w2.scalar_type(), "fold_bias: b2 (", b2.scalar_type(), ") and w2 (",
              w2.scalar_type(), ") must have one dtype");
  TORCH_CHECK(b2.device() == w2.device() && mean.device() == w2.device(), "fold_bias: all inputs must be on one device");
  check_neuron_index(pruned, w2.size(1), w2.device(), "fold_bias", "pruned");
}

namespace {

at::Tensor fold_bias_cpu(const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& mean,
                         const at::Tensor& pruned) {
  check_fold_bias_inputs(w2, b2, mean, pruned);
  const at::Tensor idx = pruned.contiguous();
  const at::Tensor mean_p = mean.index_select(0, idx).to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(b2, at::MemoryFormat::Contiguous);
  const int64_t n_out = w2.size(0), n_pruned = idx.numel();
  const int64_t s0 = w2.stride(0), s1 = w2.stride(1), sb = b2.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w2.scalar_type(), "fold_bias_cpu", [&] {
    const scalar_t* w = w2.const_data_ptr<scalar_t>();
    const scalar_t* b = b2.const_data_ptr<scalar_t>();
    const int64_t* p = idx.const_data_ptr<int64_t>();
    const double* mu = mean_p.const_data_ptr<double>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* w_row = w + row * s0;
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        int64_t j = 0;
        for (; j + 4 <= n_pruned; j += 4) {
          for (int u = 0; u < 4; ++u) acc[u] += static_cast<double>(w_row[p[j + u] * s1]) * mu[j + u];
        }
        for (; j < n_pruned; ++j) acc[0] += static_cast<double>(w_row[p[j] * s1]) * mu[j];
        o[row] = static_cast<scalar_t>(static_cast<double>(b[row * sb]) + ((acc[0] + acc[1]) + (acc[2] + acc[3])));
      }
    });
  });
  return out;
}

at::Tensor fold_bias_meta(const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& mean,
                          const at::Tensor& pruned) {
  check_fold_bias_inputs(w2, b2, mean, pruned);
  return at::empty_like(b2, at::MemoryFormat::Contiguous);
}

}  // namespace

TORCH_LIBRARY_IMPL(vbp, CPU, m) { m.impl("fold_bias", &fold_bias_cpu); }
TORCH_LIBRARY_IMPL(vbp, Meta, m) { m.impl("fold_bias", &fold_bias_meta); }

}  // namespace vbp
