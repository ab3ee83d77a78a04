// The vbp._C module: the schemas of the torch.ops.vbp operators, and the Python module that loads them.
#include <pybind11/pybind11.h>
#include <torch/library.h>

namespace vbp {

// Set by setup.py when the CUDA kernels are compiled in.
bool built_with_cuda() {
#ifdef VBP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(vbp, m) {
  m.def("fold_bias(Tensor w2, Tensor b2, Tensor mean, Tensor pruned) -> Tensor");
  m.def("slice_mlp(Tensor w1, Tensor b1, Tensor w2, Tensor keep) -> (Tensor, Tensor, Tensor)");
  m.def("compact_mlp(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, str approximate=\"none\") -> Tensor");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
}

}  // namespace vbp

PYBIND11_MODULE(_C, m) { m.doc() = "vbp native ops, registered as torch.ops.vbp.*"; }
