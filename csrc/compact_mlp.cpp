// compact_mlp: input checks and the kernel for every backend without its own (CUDA, Meta).
// Both GEMMs go through ATen (cuBLAS on CUDA) writing into preallocated outputs with the bias folded in
// (addmm's beta term); GELU runs in place on the hidden tensor, so the only allocations are the hidden
// tensor and the output. The CPU kernel (compact_mlp_cpu.cpp) fuses the epilogues through oneDNN.
#include "compact_mlp.h"

#include <ATen/Functions.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace vbp {

void check_compact_mlp_inputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                              const at::Tensor& b2, const std::string& approximate) {
  TORCH_CHECK(x.dim() >= 1, "compact_mlp: x must have a feature dimension");
  TORCH_CHECK(w1.dim() == 2 && w2.dim() == 2, "compact_mlp: w1 and w2 must be 2-D, got ", w1.dim(), "-D and ", w2.dim(),
              "-D");
  TORCH_CHECK(w1.size(1) == x.size(-1), "compact_mlp: w1 [", w1.size(0), ", ", w1.size(1), "] does not take x's ",
              x.size(-1), " features");
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == w1.size(0), "compact_mlp: b1 must be [", w1.size(0), "], got ", b1.sizes());
  TORCH_CHECK(w2.size(1) == w1.size(0), "compact_mlp: w2 must read the ", w1.size(0), " hidden neurons, got ",
              w2.sizes());
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == w2.size(0), "compact_mlp: b2 must be [", w2.size(0), "], got ", b2.sizes());
  for (const at::Tensor* t : {&w1, &b1, &w2, &b2}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "compact_mlp: all inputs must have x's dtype ", x.scalar_type(),
                ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "compact_mlp: all inputs must be on x's device ", x.device(), ", got ",
                t->device());
  }
  TORCH_CHECK(x.is_floating_point(), "compact_mlp: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(approximate == "none" || approximate == "tanh", "compact_mlp: approximate must be 'none' or 'tanh', got '",
              approximate, "'");
}

at::Tensor compact_mlp_aten_rows(const at::Tensor& rows, const at::Tensor& w1, const at::Tensor& b1,
                                 const at::Tensor& w2, const at::Tensor& b2, const std::string& approximate) {
  at::Tensor hidden = at::empty({rows.size(0), w1.size(0)}, rows.options());
  at::addmm_out(hidden, b1, rows, w1.t());
  at::gelu_(hidden, approximate);
  at::Tensor out = at::empty({rows.size(0), w2.size(0)}, rows.options());
  at::addmm_out(out, b2, hidden, w2.t());
  return out;
}

at::Tensor restore_leading_shape(const at::Tensor& out, const at::Tensor& x) {
  auto shape = x.sizes().vec();
  shape.back() = out.size(1);
  return out.view(shape);
}

namespace {

at::Tensor compact_mlp(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                       const at::Tensor& b2, c10::string_view approximate) {
  const std::string approx(approximate);
  check_compact_mlp_inputs(x, w1, b1, w2, b2, approx);
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  return restore_leading_shape(compact_mlp_aten_rows(rows, w1, b1, w2, b2, approx), x);
}

}  // namespace

// Only ATen ops, so this kernel also traces on meta/fake tensors; CPU has its own (compact_mlp_cpu.cpp).
TORCH_LIBRARY_IMPL(vbp, CompositeExplicitAutograd, m) { m.impl("compact_mlp", &compact_mlp); }

}  // namespace vbp
