"""Shared helpers: small random-init timm models and a float64 reference for VBP's compensation identity."""

import copy
import os
import shutil
import subprocess
import sys

# Without a GPU, Triton kernels run in its interpreter on CPU tensors. Triton reads this when it is
# first imported, so it is set before anything imports torch.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import vbp  # noqa: E402


def small_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def random_batches(n: int, batch: int, input_size, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *input_size, generator=g, dtype=dtype) for _ in range(n)]


def float64_mlp(x, w1, b1, w2, b2, approximate="none") -> torch.Tensor:
    """fc2(GELU(fc1(x))) in float64: the reference for the compact MLP kernels."""
    h = torch.nn.functional.gelu(x.double() @ w1.double().t() + b1.double(), approximate=approximate)
    return h @ w2.double().t() + b2.double()


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, ulps: float = 256) -> None:
    """Outputs of two implementations of the same computation in got.dtype agree to `ulps` units of its epsilon
    relative to the largest output: GEMMs of another blocking, library or thread count round differently,
    by a few epsilon of the accumulated magnitude, on every CPU."""
    tol = ulps * torch.finfo(got.dtype).eps
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def assert_stats_close(got: vbp.Stats, want: vbp.Stats, dtype: torch.dtype, ulps: float = 256) -> None:
    """Two calibrations of one model on the same data in `dtype`, differently batched or threaded, agree.

    Their activations differ only by GEMM rounding, a few units of `dtype`'s epsilon relative to each site's
    largest activation (then squared for the variance); `ulps` of slack covers the depth of the network.
    The tolerance is absolute per site: relative error is meaningless for a neuron whose mean is near 0.
    """
    eps = torch.finfo(dtype).eps
    assert got.sites.keys() == want.sites.keys()
    for site in want.sites:
        assert got.sites[site].count == want.sites[site].count
        mean, var = want.mean(site), want.variance(site)
        scale = float(mean.abs().max() + var.max().sqrt())
        torch.testing.assert_close(got.mean(site), mean, rtol=0, atol=ulps * eps * scale)
        torch.testing.assert_close(got.variance(site), var, rtol=0, atol=2 * ulps * eps * scale**2)


def mean_replaced(model: torch.nn.Module, plan: vbp.Plan, stats: vbp.Stats) -> torch.nn.Module:
    """A copy of the unpruned model whose pruned neurons' hidden values are held at their calibration mean
    (replaced in the consumer's input, so it works for every family, gated MLPs included)."""
    ref = copy.deepcopy(model)
    for site in vbp.find_sites(ref):
        pruned, mean = plan.pruned(site.name), stats.mean(site.name)

        def hold_at_mean(module, inputs, pruned=pruned, mean=mean, dim=site.channel_dim):
            h = inputs[0].clone()
            index = [slice(None)] * h.dim()
            index[dim] = pruned
            shape = [1] * h.dim()
            shape[dim] = -1
            h[tuple(index)] = mean[pruned].to(h.dtype).reshape(shape)
            return (h, *inputs[1:])

        site.consumer_layer.register_forward_pre_hook(hold_at_mean)
    return ref


@pytest.fixture
def deit_tiny_small():
    """DeiT-Tiny at 32x32 input (4 patches + class token): fast, same MLP sites as at 224."""
    return small_model("deit_tiny_patch16_224", img_size=32)


def run_torchrun(port: int, *vbp_args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m vbp ARGS` on CPU (gloo), one thread per process; output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return subprocess.run([*cmd, "-m", "vbp", *vbp_args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """What a user has, in a folder of its own per test module: statistics of the embedded digits ViT on 256
    training images (stats.safetensors) and the model pruned by half from them (pruned.safetensors)."""
    d = tmp_path_factory.mktemp("digits_files")
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, vbp.workflows.data.loader(vbp.digits_split("train"), 256), num_batches=1, progress=False)
    stats.save(d / "stats.safetensors")
    vbp.save_pruned(vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats), d / "pruned.safetensors")
    return d
