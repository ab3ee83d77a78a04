"""Builds the native extension vbp._C from csrc/ (package metadata lives in pyproject.toml).

CUDA kernels are compiled when torch has CUDA and a CUDA toolkit is found, even without a GPU, so a
CUDA compile error fails the build. VBP_CPU_ONLY=1 builds the C++ (CPU) ops alone.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default 9.0, Hopper: H100/H200).
"""

import glob
import os
import shutil
import sys
from pathlib import Path


def find_cuda_home() -> str | None:
    """The real toolkit folder: one with bin/nvcc and include/cuda_runtime.h (a wrapper nvcc on PATH misleads torch)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in filter(None, candidates):
        if Path(c, "bin", "nvcc").exists() and Path(c, "include", "cuda_runtime.h").exists():
            return c
    return None


def want_cuda() -> bool:
    import torch

    if os.environ.get("VBP_CPU_ONLY", "0") not in ("", "0"):
        return False
    return torch.version.cuda is not None and os.environ.get("CUDA_HOME") is not None


cuda_home = find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # must be set before torch.utils.cpp_extension is imported
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

sources = sorted(glob.glob("csrc/*.cpp"))
cxx_flags = ["-O3"]
if want_cuda():
    # torch's CUDA headers include cuBLAS/cuSPARSE headers; the pip nvidia packages carry them.
    nvidia_include = [p for p in sys.path if Path(p, "nvidia", "cu13", "include").is_dir()]
    extension = CUDAExtension(
        "vbp._C",
        sources + sorted(glob.glob("csrc/*.cu")),
        include_dirs=[str(Path(p, "nvidia", "cu13", "include")) for p in nvidia_include[:1]],
        define_macros=[("VBP_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
    )
else:
    extension = CppExtension("vbp._C", sources, extra_compile_args={"cxx": cxx_flags})

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
