// compact_mlp on the CPU: both GEMMs run as oneDNN matmuls (torch's mkldnn::_linear_pointwise op) with
// bias + GELU fused into fc1's epilogue and the bias into fc2's, so the hidden tensor is written once and
// never re-read for the activation. oneDNN's GELU post-ops are exact erf ("none") or tanh, like F.gelu.
// Where oneDNN does not run the dtype natively (fp16, fp64, bf16 without AVX512-BF16/AMX), where torch was
// built without oneDNN or the user turned it off (torch.backends.mkldnn.enabled = False), or for empty
// shapes, the ATen kernel of compact_mlp.cpp runs instead.
#include "compact_mlp.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

#include <optional>

namespace vbp {
namespace {

bool cpu_has_native_bf16() {
  static const bool native = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    for (const char* name : {"avx512_bf16", "amx_bf16"}) {
      const auto it = caps.find(name);
      if (it != caps.end() && it->second.isBool() && it->second.toBool()) return true;
    }
    return false;
  }();
  return native;
}

std::optional<c10::OperatorHandle> linear_pointwise_op() {
  static const auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op;
}

bool onednn_runs(const at::Tensor& rows, const at::Tensor& w1, const at::Tensor& w2) {
  if (!at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn() || !linear_pointwise_op()) return false;
  if (rows.size(0) == 0 || w1.size(0) == 0 || w2.size(0) == 0 || rows.size(1) == 0) return false;
  return rows.scalar_type() == at::kFloat || (rows.scalar_type() == at::kBFloat16 && cpu_has_native_bf16());
}

// y [M, N] = post_op(rows [M, K] @ w[N, K]^T + b [N]); post_op "gelu" (with algorithm "none"/"tanh") or "none".
at::Tensor onednn_linear(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& b, const std::string& post_op,
                         const std::optional<std::string>& algorithm) {
  torch::jit::Stack stack{rows, w.contiguous(), b.contiguous(), post_op, c10::List<std::optional<at::Scalar>>(),
                          algorithm};
  linear_pointwise_op()->callBoxed(&stack);
  return stack.back().toTensor();
}

at::Tensor compact_mlp_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                           const at::Tensor& b2, c10::string_view approximate) {
  const std::string approx(approximate);
  check_compact_mlp_inputs(x, w1, b1, w2, b2, approx);
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  if (!onednn_runs(rows, w1, w2)) return restore_leading_shape(compact_mlp_aten_rows(rows, w1, b1, w2, b2, approx), x);
  const at::Tensor hidden = onednn_linear(rows.contiguous(), w1, b1, "gelu", approx);
  return restore_leading_shape(onednn_linear(hidden, w2, b2, "none", std::nullopt), x);
}

}  // namespace

TORCH_LIBRARY_IMPL(vbp, CPU, m) { m.impl("compact_mlp", &compact_mlp_cpu); }

}  // namespace vbp
